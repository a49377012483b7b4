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


#: Bounds on what a submitted form may carry: the gateway's forms have a
#: handful of short fields, so anything far past this is an attack or a bug.
MAX_FIELDS = 100
MAX_VALUES = 100
MAX_VALUE_LENGTH = 8192

_TRUE, _FALSE = frozenset({"1", "true"}), frozenset({"0", "false"})


class FormError(ValueError):
    """A submitted form that does not fit the form offered: refused with ``condition`` and a text saying why."""

    def __init__(self, text: str, condition: str = "bad-request"):
        super().__init__(text)
        self.text = text
        self.condition = condition


def submitted_form(element) -> Any | None:
    """The first XEP-0004 form in ``element`` (any type), or None."""
    return next(element.elements(data_form.NS_X_DATA, "x"), None)


def _field_values(var: str, field) -> list[str]:
    values = [str(v) for v in field.elements(data_form.NS_X_DATA, "value")]
    if len(values) > MAX_VALUES:
        raise FormError(f"field {var!r} has more than {MAX_VALUES} values")
    for v in values:
        if len(v) > MAX_VALUE_LENGTH:
            raise FormError(f"field {var!r} has a value longer than {MAX_VALUE_LENGTH} characters")
    return values


def _checked(offered: data_form.Field, values: list[str]) -> Any:
    kind, var = offered.fieldType or "text-single", offered.var
    if kind in MULTI:
        if kind == "jid-multi":
            for v in values:
                _check_jid(var, v)
        return values
    if len(values) > 1:
        raise FormError(f"field {var!r} ({kind}) takes one value, not {len(values)}")
    value = values[0] if values else ""
    if kind == "boolean":
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE or not word:
            return False
        raise FormError(f"field {var!r} is a boolean: give 1, 0, true or false, not {value[:40]!r}")
    if kind == "jid-single" and value.strip():
        _check_jid(var, value.strip())
    return value


def _check_jid(var: str, value: str) -> None:
    from twisted.words.protocols.jabber.jid import InvalidFormat, JID
    try:
        JID(value)
    except (InvalidFormat, UnicodeError, ValueError):
        raise FormError(f"field {var!r}: {value[:80]!r} is not a JID")


def checked_submission(x, offered: data_form.Form) -> dict[str, Any]:
    """
    The values of the submitted form ``x`` checked against the form the
    gateway ``offered``: of type 'submit'; no field it did not offer, none
    twice, each with the offered type's shape (one value for single fields;
    1/0/true/false for a boolean; a JID for jid fields; whether a value is
    one of a list's choices is the adapter's to say, in its own words); a FORM_TYPE, if given, the offered one (a client may leave it
    out: the form's container already says what it is). FormError otherwise.
    Values come back typed: bool for booleans, lists for multi fields.
    """
    if x.getAttribute("type") != "submit":
        raise FormError(f"submit a form of type 'submit', not {str(x.getAttribute('type'))[:20]!r}")
    fields = list(x.elements(data_form.NS_X_DATA, "field"))
    if len(fields) > MAX_FIELDS:
        raise FormError(f"the form has more than {MAX_FIELDS} fields")
    values: dict[str, Any] = {}
    seen = set()
    for field in fields:
        var = field.getAttribute("var")
        if not var:
            raise FormError("a submitted field has no var")
        if var in seen:
            raise FormError(f"field {var[:40]!r} is given twice")
        seen.add(var)
        raw = _field_values(var, field)
        if var == "FORM_TYPE":
            if offered.formNamespace and raw != [offered.formNamespace]:
                raise FormError(f"FORM_TYPE must be {offered.formNamespace!r}")
            continue
        known = offered.fields.get(var)
        if known is None:
            raise FormError(f"the form has no field {var[:40]!r}", "not-acceptable")
        kind = field.getAttribute("type")
        if kind and kind != (known.fieldType or "text-single"):
            raise FormError(f"field {var!r} is {known.fieldType or 'text-single'}, not {kind[:20]!r}")
        values[var] = _checked(known, raw)
    return values


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
