"""
Declared config keys, shared by the gateway's own sections and every adapter's
``[components.options]`` table, so ``check-config`` and the configuration
reference (docs/configuration.md) come from one source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

REQUIRED = object()

_TYPE_NAMES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}


@dataclass(frozen=True)
class Option:
    key: str
    type: type
    default: Any = REQUIRED
    doc: str = ""
    #: Secrets may be given as {env = "NAME"} or {file = "/path"} and are never logged.
    secret: bool = False
    choices: tuple = ()
    #: Extra check: returns an error message or None.
    check: Callable[[Any], str | None] | None = None
    #: For arrays: the type of each item.
    item_type: type | None = None
    #: Applied to a well-typed value before ``check`` (e.g. lower-casing domains).
    normalize: Callable[[Any], Any] | None = None
    #: For a table of tables (the IRC adapter's ``servers``): inner keys that hold secrets. Each may be
    #: given as {env = "NAME"} or {file = "/path"} too, and like ``secret`` values they are never logged.
    secret_fields: tuple[str, ...] = ()

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def type_name(self) -> str:
        name = _TYPE_NAMES.get(self.type, self.type.__name__)
        if self.type is list and self.item_type:
            name = f"array of {_TYPE_NAMES[self.item_type]}s"
        if self.secret:
            name += " (secret)"
        return name


@dataclass
class Problem:
    key: str
    message: str
    line: int | None = None

    def format(self, filename: str = "") -> str:
        where = f"{filename}:{self.line}: " if self.line else (f"{filename}: " if filename else "")
        return f"{where}{self.key}: {self.message}"


def resolve_secret(value: Any, key: str, problems: list[Problem]) -> str | None:
    """A secret given inline, as {env = NAME} or as {file = PATH}; the value is never echoed."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1 and ("env" in value or "file" in value):
        if "env" in value:
            name = value["env"]
            if name not in os.environ:
                problems.append(Problem(key, f"environment variable {name} is not set"))
                return None
            return os.environ[name]
        path = value["file"]
        try:
            with open(path, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            problems.append(Problem(key, f"cannot read secret file {path}: {e.strerror}"))
            return None
    problems.append(Problem(key, 'must be a string, {env = "NAME"} or {file = "/path"}'))
    return None


def _type_ok(value: Any, typ: type) -> bool:
    if typ is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if typ is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, typ)


def did_you_mean(word: str, choices) -> str:
    """"; did you mean `x`?" for the closest choice, or "" when none is close."""
    import difflib

    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean `{close[0]}`?" if close else ""


def validate_table(
    table: Any, options: list[Option], prefix: str, problems: list[Problem]
) -> dict[str, Any]:
    """Check one TOML table against its options; fill defaults; collect every problem."""
    if not isinstance(table, dict):
        problems.append(Problem(prefix.rstrip("."), "must be a table"))
        return {}
    known = {o.key: o for o in options}
    result: dict[str, Any] = {}
    suggested = set()
    for key in table:
        if key not in known:
            hint = did_you_mean(key, [k for k in known if k not in table])
            if hint:
                suggested.add(hint.split("`")[1])
            problems.append(Problem(prefix + key, "unknown key" + hint))
    for opt in options:
        full = prefix + opt.key
        if opt.key not in table:
            # A misspelt required key is one mistake: its "unknown key, did you mean" says it all.
            if opt.required and opt.key not in suggested:
                problems.append(Problem(full, "is required"))
            else:
                result[opt.key] = list(opt.default) if isinstance(opt.default, list) else opt.default
            continue
        value = table[opt.key]
        if opt.secret:
            value = resolve_secret(value, full, problems)
            if value is None:
                continue
        if not _type_ok(value, opt.type):
            problems.append(Problem(full, f"must be a {opt.type_name()}, not {type(value).__name__}"))
            continue
        if opt.secret_fields:
            value = _resolve_inner_secrets(value, opt.secret_fields, full, problems)
        if opt.type is float:
            value = float(value)
        if opt.type is list and opt.item_type:
            bad = [v for v in value if not _type_ok(v, opt.item_type)]
            if bad:
                problems.append(Problem(full, f"every item must be a {_TYPE_NAMES[opt.item_type]}"))
                continue
        if _placeholder(value):
            problems.append(Problem(full, "is still the example's CHANGE-ME placeholder: replace it"))
            continue
        if opt.normalize is not None:
            value = opt.normalize(value)
        if opt.choices and value not in opt.choices:
            problems.append(Problem(full, f"must be one of {', '.join(map(repr, opt.choices))}"))
            continue
        if opt.check:
            msg = opt.check(value)
            if msg:
                problems.append(Problem(full, msg))
                continue
        result[opt.key] = value
    return result


def _resolve_inner_secrets(table: dict, fields: tuple[str, ...], key: str, problems: list[Problem]) -> dict:
    """A copy of a table of tables with each secret field read (inline, env or file)."""
    resolved = {}
    for name, inner in table.items():
        if isinstance(inner, dict):
            inner = dict(inner)
            for field_ in fields:
                if field_ in inner:
                    secret = resolve_secret(inner[field_], f"{key}.{name}.{field_}", problems)
                    if secret is None:
                        del inner[field_]
                    else:
                        inner[field_] = secret
        resolved[name] = inner
    return resolved


def inner_secrets(opt: Option, value: Any) -> list[str]:
    """The secret values inside an option's table of tables (see ``Option.secret_fields``)."""
    if not opt.secret_fields or not isinstance(value, dict):
        return []
    return [inner[f] for inner in value.values() if isinstance(inner, dict)
            for f in opt.secret_fields if isinstance(inner.get(f), str) and inner[f]]


def _placeholder(value: Any) -> bool:
    if isinstance(value, str):
        return "CHANGE-ME" in value
    if isinstance(value, list):
        return any(isinstance(v, str) and "CHANGE-ME" in v for v in value)
    return False


def lower(value: Any) -> Any:
    return [v.lower() for v in value] if isinstance(value, list) else value.lower()


def port_number(value: int) -> str | None:
    return None if 1 <= value <= 65535 else f"{value} is not a port: must be between 1 and 65535"


def port_or_zero(value: int) -> str | None:
    return None if value == 0 else port_number(value)


def endpoint(value: str) -> str | None:
    """A Twisted server endpoint string (``tcp:PORT:interface=ADDR``), or empty for none."""
    if not value:
        return None
    from twisted.internet import endpoints

    try:
        # No reactor: parsing must not install one as a side effect of reading a config.
        ep = endpoints.serverFromString(None, value)
    except OSError as e:
        return f"{value!r}: cannot read {e.filename}: {e.strerror}"
    except Exception as e:
        return f"{value!r} is not a listening endpoint (e.g. tcp:8480:interface=127.0.0.1): {e}"
    port = getattr(ep, "_port", None)
    if isinstance(port, int) and not 0 <= port <= 65535:
        return f"{value!r}: {port} is not a port (between 1 and 65535)"
    return None


def positive(value: Any) -> str | None:
    return None if value > 0 else "must be greater than 0"


def non_negative(value: Any) -> str | None:
    return None if value >= 0 else "must not be negative"
