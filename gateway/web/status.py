"""
The operator's status page at ``/`` of the web listener, behind a login.

Who may log in: the admin JIDs of ``gateway.admins``, proven by their own XMPP
server. An admin runs the ``status-page`` ad-hoc command and gets a link with a
one-time token (10 minutes, single use); the link's page asks for a click
(a POST), so a client that fetches links for previews cannot spend the token;
the POST sets a session cookie (HttpOnly, SameSite=Strict, Secure over https,
8 hours). There is no password or token in the config to leak, rotate or brute
force, and removing an admin from the config (a reload) ends their sessions.

Tokens and sessions live in this process's memory: a link works on the web
listener of the process whose component answered the command, and a restart
logs everyone out. The page is static; its figures come from ``/status.json``
(same login), rendered with textContent, under a CSP that allows no inline
script: names in it come from hostile peers.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Callable

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gateway import __version__, metrics

log = Logger(namespace="gateway.web.status")

TOKEN_TTL = 600.0
SESSION_TTL = 8 * 3600.0
COOKIE = b"xmpp_gateway_status"
#: Live tokens and sessions kept at most: a flood of command runs cannot grow memory.
MAX_ENTRIES = 1000
HEADERS = {
    b"content-security-policy": b"default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-store",
}


class StatusLogins:
    """One-time link tokens and the sessions they open, for the admins of the moment."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self.clock = clock
        self.base_url = ""
        self.admins: Callable[[], frozenset[str]] = frozenset
        self._tokens: dict[str, tuple[str, float]] = {}
        self._sessions: dict[str, tuple[str, float]] = {}

    def configure(self, base_url: str, admins: Callable[[], frozenset[str]]) -> None:
        self.base_url = base_url.rstrip("/")
        self.admins = admins

    def _prune(self, table: dict) -> None:
        now = self.clock()
        for key in [k for k, (_, until) in table.items() if until <= now]:
            del table[key]
        while len(table) >= MAX_ENTRIES:
            del table[min(table, key=lambda k: table[k][1])]

    def link_for(self, admin: str) -> str:
        """A one-time login link for ``admin`` (who must be an admin: the command checks)."""
        self._prune(self._tokens)
        token = secrets.token_urlsafe(32)
        self._tokens[token] = (admin.lower(), self.clock() + TOKEN_TTL)
        return f"{self.base_url}/status/login?token={token}"

    def spend(self, token: str) -> str | None:
        """The session id a valid token opens (the token is gone after this), or None."""
        entry = self._tokens.pop(token, None)
        if entry is None or entry[1] <= self.clock() or entry[0] not in self.admins():
            return None
        self._prune(self._sessions)
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (entry[0], self.clock() + SESSION_TTL)
        log.info("status page: {admin} logged in", admin=entry[0])
        return session

    def who(self, request) -> str | None:
        """The admin a request's cookie belongs to, or None."""
        session = request.getCookie(COOKIE)
        if not session:
            return None
        entry = self._sessions.get(session.decode("ascii", "replace"))
        if entry is None or entry[1] <= self.clock() or entry[0] not in self.admins():
            return None
        return entry[0]


#: The process's logins: the ad-hoc command hands out links, the web site checks them.
LOGINS = StatusLogins()


def _headers(request, content_type: bytes) -> None:
    request.setHeader(b"content-type", content_type)
    for name, value in HEADERS.items():
        request.setHeader(name, value)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xmpp-gateway status</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/status.css"></head>
<body><header><h1>xmpp-gateway</h1><p id="meta">loading…</p></header>
<section><h2>Components</h2><table id="components"><thead><tr><th>component</th><th>network</th>
<th>stream</th><th>users</th><th>outbox</th><th>oldest waiting</th><th>held inbound</th><th>parked</th>
<th>messages in / out</th></tr></thead><tbody></tbody></table></section>
<section><h2>IRC connections</h2><table id="irc"><thead><tr><th>component</th><th>server</th>
<th>connections</th><th>reconnects</th></tr></thead><tbody></tbody></table></section>
<section><h2>Errors sent to users, by condition</h2><table id="errors"><thead><tr><th>component</th>
<th>condition</th><th>count</th></tr></thead><tbody></tbody></table></section>
<script src="/status.js"></script></body></html>
"""

CSS = """body{font:14px system-ui,sans-serif;margin:1.5em;color:#222}h1{margin:0}
table{border-collapse:collapse;margin-bottom:1.5em}th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left}
th{background:#f3f3f3}.down{color:#b00;font-weight:bold}.up{color:#070}#meta{color:#555}
"""

SCRIPT = """'use strict';
function cell(row, text, cls) { const td = row.insertCell(); td.textContent = String(text); if (cls) td.className = cls; }
function fill(id, rows, render) {
  const body = document.querySelector('#' + id + ' tbody');
  body.replaceChildren();
  for (const r of rows) render(body.insertRow(), r);
}
function age(s) { return s <= 0 ? '-' : s < 120 ? Math.round(s) + ' s' : Math.round(s / 60) + ' min'; }
async function refresh() {
  try {
    const answer = await fetch('/status.json', {credentials: 'same-origin', cache: 'no-store'});
    if (answer.status === 401) { location.reload(); return; }
    const s = await answer.json();
    document.getElementById('meta').textContent = 'version ' + s.version + ' · up ' + age(s.uptime) +
      ' · ' + s.admin + ' · updated ' + new Date(s.generated_at * 1000).toLocaleTimeString();
    fill('components', s.components, (row, c) => {
      cell(row, c.domain); cell(row, c.adapter);
      cell(row, c.stream_up ? 'up' : 'down', c.stream_up ? 'up' : 'down');
      cell(row, c.users); cell(row, c.outbox); cell(row, age(c.oldest_outbox));
      cell(row, c.held_inbound); cell(row, c.parked, c.parked ? 'down' : '');
      cell(row, c.messages_in + ' / ' + c.messages_out);
    });
    fill('irc', s.irc, (row, c) => { cell(row, c.component); cell(row, c.server); cell(row, c.connections); cell(row, c.reconnects); });
    fill('errors', s.errors, (row, e) => { cell(row, e.component); cell(row, e.condition); cell(row, e.count); });
  } catch (e) {
    document.getElementById('meta').textContent = 'cannot reach the gateway: ' + e;
  }
}
refresh();
setInterval(refresh, 2000);
"""

LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xmpp-gateway status: log in</title>
<link rel="stylesheet" href="/status.css"></head><body><h1>xmpp-gateway status</h1>
<form method="post" action="/status/login"><input type="hidden" name="token" value="{token}">
<button id="login" type="submit">Log in</button></form>
<p>This link works once, for 10 minutes.</p></body></html>
"""

LOGGED_OUT = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>xmpp-gateway status</title>
<link rel="stylesheet" href="/status.css"></head><body><h1>xmpp-gateway status</h1>
<p id="logged-out">{why} An admin (<code>gateway.admins</code>) gets a one-time link with the ad-hoc
command <em>Status page</em> (<code>status-page</code>) on any of the gateway's components.</p></body></html>
"""


def _samples(metric) -> list:
    return [s for family in metric.collect() for s in family.samples]


@defer.inlineCallbacks
def status_report(gateway, admin: str):
    """What the page shows: figures only, never a secret (no config values beyond domains)."""
    components = []
    messages = {(s.labels["component"], s.labels["direction"]): s.value for s in _samples(metrics.MESSAGES)
                if s.name.endswith("_total")}
    for bridge in gateway.bridges:
        stats = yield bridge.stats()
        oldest = yield gateway.registry.queue_oldest(bridge.component)
        now = time.time()
        components.append({
            "domain": bridge.component, "adapter": type(bridge.adapter).__name__.removesuffix("Adapter").lower(),
            "stream_up": stats["stream up"], "users": stats["registered users"], "outbox": stats["outbox"],
            "held_inbound": stats["held inbound"], "parked": stats["parked"],
            "oldest_outbox": max(0.0, now - oldest["out"]) if oldest.get("out") else 0,
            "messages_in": int(messages.get((bridge.component, "in"), 0)),
            "messages_out": int(messages.get((bridge.component, "out"), 0))})
    reconnects = {(s.labels["component"], s.labels["server"]): s.value for s in _samples(metrics.IRC_RECONNECTS)
                  if s.name.endswith("_total")}
    irc = [{"component": s.labels["component"], "server": s.labels["server"], "connections": int(s.value),
            "reconnects": int(reconnects.get((s.labels["component"], s.labels["server"]), 0))}
           for s in _samples(metrics.IRC_CONNECTIONS)]
    errors = sorted(({"component": s.labels["component"], "condition": s.labels["condition"], "count": int(s.value)}
                     for s in _samples(metrics.ERRORS) if s.name.endswith("_total") and s.value),
                    key=lambda e: -e["count"])
    return {"version": __version__, "admin": admin, "generated_at": time.time(),
            "uptime": time.time() - _START, "components": components, "irc": irc, "errors": errors}


_START = time.time()


class _Static(resource.Resource):
    isLeaf = True

    def __init__(self, body: str, content_type: bytes):
        super().__init__()
        self.body = body.encode()
        self.content_type = content_type

    def render_GET(self, request):
        _headers(request, self.content_type)
        return self.body


class _BehindLogin(resource.Resource):
    isLeaf = True

    def __init__(self, logins: StatusLogins, gateway=None):
        super().__init__()
        self.logins = logins
        self.gateway = gateway


class StatusPage(_BehindLogin):
    """``/``: the page for a logged-in admin, else how to log in (401)."""

    def render_GET(self, request):
        _headers(request, b"text/html; charset=utf-8")
        if self.logins.who(request) is None:
            request.setResponseCode(401)
            return LOGGED_OUT.format(why="Not logged in.").encode()
        return PAGE.encode()


class StatusJSON(_BehindLogin):
    def render_GET(self, request):
        _headers(request, b"application/json")
        admin = self.logins.who(request)
        if admin is None:
            request.setResponseCode(401)
            return b'{"error": "not logged in"}\n'

        def done(report):
            request.write(json.dumps(report).encode() + b"\n")
            request.finish()

        def failed(failure):
            log.failure("status report", failure)
            request.setResponseCode(500)
            request.write(b'{"error": "the report failed; see the log"}\n')
            request.finish()

        status_report(self.gateway, admin).addCallbacks(done, failed)
        return server.NOT_DONE_YET


class Login(_BehindLogin):
    """``/status/login``: GET shows a button (previews cannot log in); POST spends the token."""

    def render_GET(self, request):
        _headers(request, b"text/html; charset=utf-8")
        token = (request.args.get(b"token") or [b""])[0].decode("ascii", "replace")
        if not token.replace("-", "").replace("_", "").isalnum() or len(token) > 100:
            request.setResponseCode(400)
            return LOGGED_OUT.format(why="That link is not a login link.").encode()
        return LOGIN_PAGE.format(token=token).encode()

    def render_POST(self, request):
        _headers(request, b"text/html; charset=utf-8")
        token = (request.args.get(b"token") or [b""])[0].decode("ascii", "replace")
        session = self.logins.spend(token)
        if session is None:
            request.setResponseCode(403)
            return LOGGED_OUT.format(why="That link was used already, has expired, or is not for an admin.").encode()
        secure = request.isSecure() or self.logins.base_url.startswith("https:")
        request.addCookie(COOKIE, session.encode(), path=b"/", httpOnly=True, sameSite="strict", secure=secure,
                          max_age=str(int(SESSION_TTL)).encode())
        request.setResponseCode(303)
        request.setHeader(b"location", b"/")
        return b""


def mount(root: resource.Resource, gateway, logins: StatusLogins = LOGINS) -> resource.Resource:
    """Put the status page on the web site; returns the resource to serve at ``/``."""
    root.putChild(b"status.json", StatusJSON(logins, gateway))
    root.putChild(b"status.js", _Static(SCRIPT, b"text/javascript; charset=utf-8"))
    root.putChild(b"status.css", _Static(CSS, b"text/css; charset=utf-8"))
    status = resource.Resource()
    status.putChild(b"login", Login(logins))
    root.putChild(b"status", status)
    return StatusPage(logins)


__all__ = ["LOGINS", "StatusLogins", "mount", "status_report"]
