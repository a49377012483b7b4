"""
The gateway's one TOML file: schema, loading, and problems reported with their
key and line, so ``xmpp-gateway check-config`` can list everything wrong at once.
"""

from __future__ import annotations

import re
import socket
import tomllib
from dataclasses import dataclass, field
from typing import Any

from gateway.adapters import UnknownAdapter, load_adapter
from gateway.options import (Option, did_you_mean, Problem, endpoint, inner_secrets, lower, non_negative, port_number,
                             port_or_zero, positive,
                             resolve_secret, validate_table)

_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$")


def _domain(value: str) -> str | None:
    return None if _DOMAIN_RE.match(value) else f"{value!r} is not a valid domain name"


def _domains(value: list) -> str | None:
    for v in value:
        msg = _domain(v)
        if msg:
            return msg
    return None


def _bare_jids(value: list) -> str | None:
    for v in value:
        if v.count("@") != 1 or "/" in v or _domain(v.split("@")[1]):
            return f"{v!r} is not a bare JID (user@domain)"
    return None


def _history_length(value: int) -> str | None:
    return None if 0 <= value <= 1000 else "must be from 0 to 1000"


def _registry_url(value: str) -> str | None:
    if value.startswith(("sqlite:", "postgresql://", "postgres://")):
        return None
    return "must start with sqlite: (e.g. sqlite:///var/lib/xmpp-gateway/registry.sqlite) or postgresql://"


SECTIONS: dict[str, list[Option]] = {
    "gateway": [
        Option("allowed_domains", list, item_type=str, check=_domains, normalize=lower,
               doc="JID domains whose users may register and use the components; everyone else "
                   "is refused (`<forbidden/>` on registration, `<service-unavailable/>` otherwise)."),
        Option("admins", list, [], item_type=str, check=_bare_jids, normalize=lower,
               doc="Bare JIDs allowed to run the admin ad-hoc commands (list-users, stats, delete-user, status-page)."),
        Option("instance_id", str, "",
               doc="Names this process in queue claims; stable across restarts so a restarted "
                   "process takes back its own claims at once, and unique: a second live process with "
                   "the same id is refused at start. Default: the host name."),
    ],
    "xmpp": [
        Option("host", str, "127.0.0.1", doc="XMPP server address for the component connections."),
        Option("port", int, 5347, check=port_number, doc="XMPP server component port (Prosody 5347, ejabberd: the ejabberd_service listener)."),
        Option("stanza_size_limit", int, 65536, check=positive,
               doc="Largest stanza, in bytes, accepted from users; larger ones get `<policy-violation/>`."),
        Option("ping_interval", float, 30.0, check=non_negative,
               doc="Seconds of silence from the server after which an XEP-0199 keepalive ping is sent on a "
                   "component stream; 0 disables keepalives (delivery barriers still ping)."),
        Option("ping_timeout", float, 10.0, check=positive,
               doc="A stream on which a ping waits and that makes no progress this long (nothing heard from "
                   "the server, none of our backlog taken by it) is dropped and reconnected; what it did "
                   "not confirm is written again. A dead stream is found within one to two timeouts."),
        Option("reconnect_initial_delay", float, 1.0, check=positive,
               doc="First reconnect delay in seconds; doubles (with jitter) after each failure."),
        Option("reconnect_max_delay", float, 60.0, check=positive, doc="Longest delay between reconnects."),
        Option("slot_probe_timeout", float, 2.0, check=non_negative,
               doc="After each handshake the gateway sends itself probe messages to learn whether the server "
                   "gives the connection any traffic (behind ejabberd's `domain_balancing` one that connected "
                   "while every slot was taken gets none); the stream counts as up once a probe is back, and a "
                   "connection none came back to within this many seconds is closed and retried with backoff. "
                   "0 turns the probe off: only for servers that keep one connection per domain."),
        Option("room_pacing_bytes", int, 2_000_000, check=non_negative,
               doc="Room output (occupant presences, room messages) written on a component stream, at most "
                   "this many bytes per second; what is over waits in a queue where an occupant's pending "
                   "presences to a user merge into the latest (docs/irc.md, big channels). A 1,000-user "
                   "channel is about 500,000 presences (200 MB). 0: no rate limit."),
        Option("room_pacing_backlog", int, 262144, check=non_negative,
               doc="Room output waits while more than this many bytes written on the stream have not been "
                   "taken by the server (Twisted's buffer and the socket's), so a keepalive ping or a "
                   "user's message written meanwhile is at most this far behind. 0: not checked."),
        Option("room_queue_limit", int, 500_000, check=positive,
               doc="Room events waiting in the paced queue of one component, at most. Over it, new occupant "
                   "presences merge with the oldest pending one of the same occupant even across messages, "
                   "and then the oldest occupant presences are dropped (counted in "
                   "`xmpp_gateway_room_events_dropped`); messages go only when nothing else is left to drop (a long outage of the stream). The queue also holds room events while the stream is down."),
        Option("spare_connection_interval", float, 0.0, check=non_negative,
               doc="Set it when several gateway processes serve one domain behind ejabberd's "
                   "`domain_balancing` (`type: bare_source`, see docs/servers.md): every this many seconds each "
                   "process opens one spare connection per component domain, keeps it if it got a slot (a "
                   "dead process's: it then serves that slot's users) and closes it at once otherwise. Users "
                   "of a process that died get no service (the server drops their stanzas silently) until a "
                   "spare takes its slot: at most this long (or `slot_probe_timeout`, if longer) plus a handshake. "
                   "0: no spares."),
    ],
    "registry": [
        Option("url", str, "sqlite:///var/lib/xmpp-gateway/registry.sqlite", check=_registry_url,
               doc="`sqlite:///ABSOLUTE/PATH` (one process) or `postgresql://user@host/db` (shared by several)."),
        Option("secret_key", str, secret=True,
               doc="Key that encrypts user secrets at rest (a Fernet key from `xmpp-gateway genkey`, "
                   "or a passphrase of 16 characters or more, stretched with scrypt and the registry's "
                   "own salt). New secrets are sealed with this key."),
        Option("old_secret_keys", list, [],
               doc="Earlier keys, still accepted for opening secrets but never for sealing them: put the "
                   "previous `secret_key` here when changing it, run `xmpp-gateway rotate-key`, then "
                   "remove it. Each item is a string, `{env = \"NAME\"}` or `{file = \"/path\"}`."),
    ],
    "outbox": [
        Option("retry_initial", float, 2.0, check=positive, doc="First retry delay (seconds) after a temporary failure."),
        Option("retry_max", float, 300.0, check=positive, doc="Longest delay between retries."),
        Option("deadline", float, 3600.0, check=positive,
               doc="Seconds after which an undelivered message is given up and its sender gets an error."),
        Option("lease", float, 120.0, check=positive,
               doc="How long a process owns a message it is sending before another process may take it over."),
        Option("poll_interval", float, 1.0, check=positive, doc="How often due retries are looked for."),
    ],
    "limits": [
        Option("rate", float, 5.0, check=positive, doc="Messages per second each user may send (token bucket refill rate)."),
        Option("burst", int, 20, check=positive, doc="Messages a user may send at once before the rate applies."),
        Option("room_history", int, 20, check=_history_length,
               doc="Messages of a room's archive sent on join when the client's `<history/>` does not say and the "
                   "user set no `max_history` for the room (at most 1000)."),
    ],
    "web": [
        Option("listen", str, "tcp:8480:interface=127.0.0.1", check=endpoint,
               doc="Twisted endpoint for /healthz, /metrics and adapter webhooks; empty disables."),
        Option("max_bodies_in_flight", int, 32 * 1024 * 1024, check=positive,
               doc="Bytes of request bodies the web site holds at once, over all connections (each body is "
                   "also bounded by its path's limit); a body past it is answered 503 and its connection "
                   "closed, so many slow callers each under the limit cannot exhaust memory."),
    ],
    "files": [
        Option("directory", str, "/var/lib/xmpp-gateway/files",
               doc="Where files offered as links (email attachments) are kept until they expire."),
        Option("public_url", str, "",
               doc="Base URL users fetch those files from (the web site as users reach it, e.g. "
                   "`https://gw.example.org`); default: `http://` and the address in `web.listen`."),
        Option("expiry_days", float, 30.0, check=positive, doc="Days a file stays available."),
    ],
    "attachments": [
        Option("upload", bool, True,
               doc="Put files from the networks (email attachments, MMS media) on the user's own XMPP server "
                   "through its XEP-0363 upload service, when the server of the user's domain offers one (only "
                   "for domains in `gateway.allowed_domains`); else they are served from `/files/`."),
        Option("upload_timeout", float, 10.0, check=positive,
               doc="Seconds finding the upload service, getting a slot and putting a file may take (and, for MMS "
                   "media, fetching it first: the provider's webhook waits for it); then the file is served from "
                   "`/files/` instead (MMS media: the provider's URL is sent)."),
        Option("fetch_max_size", int, 10 * 1024 * 1024, check=positive,
               doc="Largest file (bytes) the gateway fetches from a URL: a file a user sends by URL (XEP-0066) "
                   "to attach it to a mail, MMS media to put on the user's server. Larger: policy-violation."),
        Option("fetch_timeout", float, 30.0, check=positive,
               doc="Seconds one fetch may take in all (name lookup, connect, redirects, body)."),
        Option("fetch_allow_private", bool, False,
               doc="Also fetch from loopback, private, link-local and reserved addresses. Off, every address "
                   "a URL's host resolves to must be public, and the gateway connects to the address it checked "
                   "(a file URL is the sender's choice: it must not reach the gateway's own network)."),
    ],
    "retention": [
        Option("interval", float, 3600.0, check=positive,
               doc="Seconds between purges of old bookkeeping rows (each in batches, never one long transaction)."),
        Option("message_ids_days", float, 30.0, check=positive,
               doc="Days the mapping of sent messages to network ids is kept: a delivery report or bounce "
                   "arriving later is for an unknown message (logged). Rows still awaiting an SMS verdict stay."),
        Option("threads_days", float, 90.0, check=positive,
               doc="Days a message id is kept in its conversation thread (email References): a reply to an "
                   "older mail starts a new XMPP thread."),
        Option("counters_days", float, 2.0, check=positive,
               doc="Days per-user counters (daily SMS and mail caps) are kept after their day."),
        Option("seen_days", float, 7.0, check=positive,
               doc="Days foreign message ids are remembered to drop replays (a provider retries for hours)."),
        Option("room_archive", bool, True,
               doc="Keep an archive of group-chat rooms (IRC channels) per user: what each user's own connection "
                   "received, for XEP-0313 queries on the room's JID and history on join. `false`: no stanza-ids, "
                   "no MAM, no history."),
        Option("room_archive_days", float, 90.0, check=non_negative,
               doc="Days a room message stays in the archive (`0`: no age limit)."),
        Option("room_archive_rows", int, 10000, check=non_negative,
               doc="Messages kept per user and room, the newest (`0`: no count limit)."),
        Option("batch", int, 1000, check=positive, doc="Rows deleted per transaction."),
    ],
    "log": [
        Option("format", str, "text", choices=("text", "json"), doc="`text` for people, `json` for one JSON object per line."),
        Option("level", str, "info", choices=("debug", "info", "warn", "error"), doc="Lowest level written."),
    ],
}

COMPONENT_OPTIONS: list[Option] = [
    Option("domain", str, check=_domain, normalize=lower, doc="The component's domain, e.g. `sms.example.org`."),
    Option("secret", str, secret=True, doc="The XEP-0114 shared secret configured on the XMPP server."),
    Option("adapter", str, doc="Which network: an entry point name in `gateway.adapters` (`echo`, ...)."),
    Option("name", str, "", doc="Name shown in service discovery; default: the adapter's own."),
    Option("host", str, "", doc="Overrides `xmpp.host` for this component."),
    Option("port", int, 0, check=port_or_zero, doc="Overrides `xmpp.port` for this component."),
    Option("options", dict, {}, doc="The adapter's own keys (see the adapter's section)."),
    Option("roster", str, "auto", choices=("auto", "subscribe", "off"),
           doc="Contacts a user writes to or hears from appear in their roster, once each: `auto` pushes "
               "them with a name and a group when the user's server grants this component roster access "
               "(XEP-0356, docs/servers.md) and sends a subscription request from the contact otherwise; "
               "`subscribe` always sends the request; `off` does neither."),
    Option("roster_group", str, "",
           doc="The roster group pushed contacts go in; default by network: `SMS`, `Email`, `IRC`."),
]


@dataclass
class ComponentConfig:
    domain: str
    secret: str
    adapter: str
    adapter_class: type
    name: str
    host: str
    port: int
    options: dict[str, Any]
    #: "auto", "subscribe" or "off": see the ``roster`` option.
    roster: str = "auto"
    roster_group: str = ""


@dataclass
class Config:
    gateway: dict[str, Any]
    xmpp: dict[str, Any]
    registry: dict[str, Any]
    outbox: dict[str, Any]
    limits: dict[str, Any]
    web: dict[str, Any]
    files: dict[str, Any]
    log: dict[str, Any]
    retention: dict[str, Any] = field(default_factory=dict)
    attachments: dict[str, Any] = field(default_factory=dict)
    components: list[ComponentConfig] = field(default_factory=list)
    path: str = ""

    def secrets(self) -> list[str]:
        """Every secret value, so log observers can make sure none is ever written."""
        values = [self.registry["secret_key"], *self.registry.get("old_secret_keys", ())]
        values += [c.secret for c in self.components]
        for comp in self.components:
            for opt in getattr(comp.adapter_class, "options", []):
                if opt.secret and comp.options.get(opt.key):
                    values.append(comp.options[opt.key])
                values += inner_secrets(opt, comp.options.get(opt.key))
        return [v for v in values if v]


class ConfigError(Exception):
    def __init__(self, problems: list[Problem], filename: str = ""):
        self.problems = problems
        self.filename = filename
        super().__init__("\n".join(p.format(filename) for p in problems))


def _locate(lines: list[str], key: str) -> int | None:
    """
    Best-effort line of a dotted key (``components[1].options.prefix``): tomllib
    gives no positions, so we follow table headers through the text ourselves.
    """
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", key)
    target: list[Any] = [int(p[1:-1]) if p.startswith("[") else p for p in parts]
    header: list[Any] = []
    counts: dict[tuple, int] = {}
    best = None
    for number, raw in enumerate(lines, 1):
        line = raw.split("#", 1)[0].strip() if not raw.strip().startswith("#") else ""
        m = re.match(r"^\[\[\s*([^\]]+?)\s*\]\]$", line)
        if m:
            names = [n.strip().strip('"') for n in m.group(1).split(".")]
            counts[tuple(names)] = counts.get(tuple(names), -1) + 1
            header = names[:-1] + [names[-1], counts[tuple(names)]]
            if header == target[: len(header)] and best is None and len(header) == len(target):
                best = number
            continue
        m = re.match(r"^\[\s*([^\]]+?)\s*\]$", line)
        if m:
            names = [n.strip().strip('"') for n in m.group(1).split(".")]
            resolved: list[Any] = []
            for i, n in enumerate(names):
                resolved.append(n)
                idx = counts.get(tuple(names[: i + 1]))
                if idx is not None:
                    resolved.append(idx)
            header = resolved
            if header == target:
                return number
            continue
        m = re.match(r"^([A-Za-z0-9_\-\".]+)\s*=", line)
        if m:
            keyparts = [k.strip().strip('"') for k in m.group(1).split(".")]
            if header + keyparts == target:
                return number
    if best:
        return best
    if len(target) > 1:
        return _locate(lines, ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in target[:-1]).replace(".[", "["))
    return None


def parse(text: str, filename: str = "") -> Config:
    """Validate the whole file; raise ConfigError listing every problem found."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise ConfigError([Problem("(syntax)", str(e), int(m.group(1)) if m else None)], filename)
    return validate(data, text, filename)


def validate(data: dict, text: str = "", filename: str = "") -> Config:
    """Check parsed TOML; ``text`` only serves to find each problem's line."""
    problems: list[Problem] = []
    allowed = set(SECTIONS) | {"components"}
    for key in data:
        if key not in allowed:
            problems.append(Problem(key, "unknown section" + did_you_mean(key, allowed)))
    sections = {name: validate_table(data.get(name, {}), opts, name + ".", problems)
                for name, opts in SECTIONS.items()}

    comps: list[ComponentConfig] = []
    raw_comps = data.get("components", [])
    if not isinstance(raw_comps, list) or not raw_comps:
        # A misspelt [[componets]] was reported above with its suggestion: not twice.
        if not any(p.message.endswith("did you mean `components`?") for p in problems):
            problems.append(Problem("components", "at least one [[components]] table is required"))
        raw_comps = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_comps):
        prefix = f"components[{i}]."
        values = validate_table(raw, COMPONENT_OPTIONS, prefix, problems)
        if "domain" in values:
            if values["domain"] in seen:
                problems.append(Problem(prefix + "domain", f"{values['domain']} is configured twice"))
            seen.add(values["domain"])
        if "adapter" not in values:
            continue
        try:
            cls = load_adapter(values["adapter"])
        except UnknownAdapter as e:
            from gateway.adapters import available

            # Its options are not checked: every one would be "unknown" for want of the adapter.
            problems.append(Problem(prefix + "adapter", str(e) + did_you_mean(values["adapter"], available())))
            continue
        opts = validate_table(raw.get("options", {}), list(getattr(cls, "options", [])),
                              prefix + "options.", problems)
        check = getattr(cls, "check_options", None)
        if check is not None:
            for key, message in check(opts):
                problems.append(Problem(f"{prefix}options.{key}", message))
        if {"domain", "secret"} <= values.keys():
            comps.append(ComponentConfig(
                domain=values["domain"], secret=values["secret"], adapter=values["adapter"],
                adapter_class=cls, name=values.get("name") or cls.display_name,
                host=values.get("host", ""), port=values.get("port", 0), options=opts,
                roster=values.get("roster", "auto"), roster_group=values.get("roster_group", "")))

    if "secret_key" in sections["registry"]:
        from gateway.registry.crypto import KeyError_, check_key

        try:
            check_key(sections["registry"]["secret_key"])
        except KeyError_ as e:
            problems.append(Problem("registry.secret_key", str(e)))
    if "old_secret_keys" in sections["registry"]:
        from gateway.registry.crypto import KeyError_, check_key

        old_keys = []
        for i, item in enumerate(sections["registry"]["old_secret_keys"]):
            where = f"registry.old_secret_keys[{i}]"
            key = resolve_secret(item, where, problems)
            if key is None:
                continue
            try:
                check_key(key)
                old_keys.append(key)
            except KeyError_ as e:
                problems.append(Problem(where, str(e)))
        sections["registry"]["old_secret_keys"] = old_keys
    if not sections["files"].get("public_url"):
        m = re.match(r"^tcp:(\d+)(?::interface=([^:]+))?", sections["web"].get("listen", ""))
        if m:
            sections["files"]["public_url"] = f"http://{m.group(2) or '127.0.0.1'}:{m.group(1)}"
    if not sections["gateway"].get("instance_id"):
        sections["gateway"]["instance_id"] = socket.gethostname()

    if problems:
        lines = text.splitlines()
        for p in problems:
            if p.line is None:
                p.line = _locate(lines, p.key)
            if p.line is None and re.fullmatch(r"[A-Za-z0-9_\-]+", p.key):
                # An unknown [[table]] header _locate does not walk into.
                p.line = next((n for n, line in enumerate(lines, 1)
                               if re.match(rf"^\s*\[\[?\s*{re.escape(p.key)}\s*\]", line)), None)
        raise ConfigError(problems, filename)
    return Config(components=comps, path=filename, **sections)


def load(path: str) -> Config:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError([Problem("(file)", f"cannot read config: {e.strerror}")], path)
    return parse(text, path)
