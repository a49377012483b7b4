"""XEP-0004 data forms built from the adapter's neutral field list."""

from __future__ import annotations

from typing import Any

from gateway.model import Field
from wokkel import data_form

MULTI = frozenset({"text-multi", "list-multi", "jid-multi"})


def build_form(fields: list[Field], values: dict[str, Any], form_type: str, title: str | None = None,
               instructions: str | None = None, kind: str = "form") -> data_form.Form:
    """A form for ``fields`` showing ``values``; secret values are never sent back."""
    form = data_form.Form(kind, title=title, instructions=[instructions] if instructions else None,
                          formNamespace=form_type)
    for f in fields:
        value = values.get(f.var, f.default)
        field = data_form.Field(fieldType=f.type, var=f.var, label=f.label, desc=f.desc or None,
                                required=f.required,
                                options=[data_form.Option(o) for o in f.options] or None)
        if f.secret:
            pass  # a stored secret is shown as empty; an empty answer keeps it
        elif f.type in MULTI:
            field.values = [str(v) for v in (value or [])]
        elif f.type == "boolean":
            field.value = bool(value)
        elif value not in (None, ""):
            field.value = str(value)
        form.addField(field)
    return form


def result_form(form_type: str | None, title: str, rows: dict[str, Any]) -> data_form.Form:
    """A read-only result form (ad-hoc command output)."""
    form = data_form.Form("result", title=title, formNamespace=form_type)
    for label, value in rows.items():
        var = label.replace(" ", "-")
        if isinstance(value, list):
            form.addField(data_form.Field(fieldType="jid-multi" if all("@" in str(v) for v in value)
                                          else "text-multi", var=var, label=label,
                                          values=[str(v) for v in value]))
        else:
            form.addField(data_form.Field(fieldType="text-single", var=var, label=label, value=str(value)))
    return form


def submitted_values(element, form_type: str | None = None) -> dict[str, Any] | None:
    """The values of a submitted form found in ``element``, or None if there is none."""
    form = data_form.findForm(element, form_type) if form_type else None
    if form is None:
        for child in element.elements(data_form.NS_X_DATA, "x"):
            form = data_form.Form.fromElement(child)
            break
    if form is None or form.formType not in ("submit",):
        return None
    return {var: value for var, value in form.getValues().items() if var != "FORM_TYPE"}
