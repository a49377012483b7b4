"""
The user's side (slixmpp, a client library written by others, so our stanzas
are checked by a real peer) and the gateway as a real process.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import urllib.request
import xml.etree.ElementTree as ET

import slixmpp
from slixmpp.exceptions import IqError
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from gateway.registry.crypto import SecretBox
from gateway.testing.process import Server, free_port

NS_CLIENT = "jabber:client"
TIMEOUT = 10.0


def run(coro, timeout: float = 60.0):
    """Run one async test body with an overall time limit."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


def q(name: str, ns: str = NS_CLIENT) -> str:
    return f"{{{ns}}}{name}"


class Client(slixmpp.ClientXMPP):
    """A user's client: every stanza it receives lands in a queue the test reads."""

    def __init__(self, jid: str, password: str):
        # Loopback test servers have no TLS: allow SASL over the plain stream.
        super().__init__(jid, password, plugin_config={"feature_mechanisms": {"unencrypted_plain": True,
                                                                             "unencrypted_scram": True}})
        self.enable_direct_tls = False
        self.enable_starttls = False
        self.enable_plaintext = True
        for plugin in ("xep_0030", "xep_0004", "xep_0050", "xep_0199", "xep_0184", "xep_0085"):
            self.register_plugin(plugin)
        self.plugin["xep_0184"].auto_ack = False
        self.plugin["xep_0184"].auto_request = False
        self.messages: asyncio.Queue = asyncio.Queue()
        self.presences: asyncio.Queue = asyncio.Queue()
        self.register_handler(Callback("all messages", MatchXPath(f"{{{NS_CLIENT}}}message"),
                                       lambda m: self.messages.put_nowait(m.xml)))
        self.register_handler(Callback("all presences", MatchXPath(f"{{{NS_CLIENT}}}presence"),
                                       lambda p: self.presences.put_nowait(p.xml)))
        self._ready = asyncio.get_event_loop().create_future()
        self.add_event_handler("session_start", self._session_start)
        self.add_event_handler("failed_auth", lambda *_: self._ready.done() or self._ready.set_exception(
            RuntimeError("authentication failed")))

    async def _session_start(self, _):
        self.send_presence()
        await self.get_roster()
        if not self._ready.done():
            self._ready.set_result(True)

    async def start(self, port: int) -> "Client":
        self.connect("127.0.0.1", port)
        await asyncio.wait_for(self._ready, TIMEOUT)
        return self

    async def stop(self) -> None:
        self.disconnect()
        try:
            await asyncio.wait_for(self.disconnected, 5)
        except (asyncio.TimeoutError, Exception):
            pass

    # -- waiting ----------------------------------------------------------

    async def next_message(self, predicate=lambda m: True, timeout: float = TIMEOUT):
        return await self._next(self.messages, predicate, timeout, "message")

    async def next_presence(self, predicate=lambda p: True, timeout: float = TIMEOUT):
        return await self._next(self.presences, predicate, timeout, "presence")

    async def _next(self, queue, predicate, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching {what} within {timeout} s")
            try:
                stanza = await asyncio.wait_for(queue.get(), left)
            except asyncio.TimeoutError:
                raise AssertionError(f"no matching {what} within {timeout} s")
            if predicate(stanza):
                return stanza

    async def quiet(self, queue_name: str = "messages", seconds: float = 1.0, predicate=lambda s: True):
        """Everything matching that arrives in the next ``seconds``."""
        queue = getattr(self, queue_name)
        got = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                stanza = await asyncio.wait_for(queue.get(), left)
            except asyncio.TimeoutError:
                break
            if predicate(stanza):
                got.append(stanza)
        return got

    # -- raw IQ -----------------------------------------------------------

    async def iq(self, to: str, itype: str, payload: str) -> ET.Element:
        """Send an IQ with a raw XML payload; the response element (errors raise IqError)."""
        iq = self.Iq()
        iq["type"] = itype
        iq["to"] = to
        iq.append(ET.fromstring(payload))
        response = await iq.send(timeout=TIMEOUT)
        return response.xml

    async def iq_error(self, to: str, itype: str, payload: str) -> tuple[str, str]:
        """(condition, text) of the error the IQ must get."""
        try:
            await self.iq(to, itype, payload)
        except IqError as e:
            return e.iq["error"]["condition"], e.iq["error"]["text"]
        raise AssertionError("the IQ succeeded but an error was expected")

    def send_chat(self, to: str, body: str | None, *, receipt: bool = False, msg_id: str | None = None,
                  extra: str = "", mtype: str = "chat") -> str:
        msg_id = msg_id or f"m{time.monotonic_ns()}"
        parts = [f"<message xmlns='jabber:client' to='{to}' type='{mtype}' id='{msg_id}'>"]
        if body is not None:
            parts.append(f"<body>{_escape(body)}</body>")
        if receipt:
            parts.append("<request xmlns='urn:xmpp:receipts'/>")
        parts.append(extra)
        parts.append("</message>")
        self.send_raw("".join(parts))
        return msg_id


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def body(stanza: ET.Element) -> str | None:
    el = stanza.find(q("body"))
    return None if el is None else el.text or ""


def error_condition(stanza: ET.Element) -> tuple[str | None, str | None]:
    """(condition, text) of an error stanza, (None, None) if it is not one."""
    err = stanza.find(q("error"))
    if err is None:
        return None, None
    ns = "{urn:ietf:params:xml:ns:xmpp-stanzas}"
    cond = next((c.tag[len(ns):] for c in err if c.tag.startswith(ns) and c.tag != ns + "text"), None)
    text = err.find(ns + "text")
    return cond, None if text is None else text.text


# -- the gateway as a process -------------------------------------------------

def toml_value(value) -> str:
    """A TOML literal for the test configs (inline tables for dicts)."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)



def write_config(path: str, *, components: list[dict], xmpp_port: int, registry_url: str,
                 allowed_domains=("localhost",), admins=(), outbox: dict | None = None,
                 limits: dict | None = None, web_port: int | None = None, xmpp: dict | None = None,
                 log_format: str = "text", key: str | None = None, sections: dict | None = None) -> dict:
    key = key or SecretBox.generate()
    lines = ["[gateway]", f"allowed_domains = {json.dumps(list(allowed_domains))}",
             f"admins = {json.dumps(list(admins))}", 'instance_id = "test"', "",
             "[xmpp]", 'host = "127.0.0.1"', f"port = {xmpp_port}", "reconnect_initial_delay = 0.2",
             "reconnect_max_delay = 1.0"]
    for k, v in (xmpp or {}).items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[registry]", f'url = "{registry_url}"', f'secret_key = "{key}"', "", "[outbox]"]
    for k, v in ({"poll_interval": 0.2} | (outbox or {})).items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[limits]"]
    for k, v in ({"rate": 100.0, "burst": 1000} | (limits or {})).items():
        lines.append(f"{k} = {json.dumps(v)}")
    lines += ["", "[files]", f'directory = "{os.path.join(os.path.dirname(os.path.abspath(path)), "files")}"',
              "", "[web]", f'listen = "{f"tcp:{web_port}:interface=127.0.0.1" if web_port else ""}"', "",
              "[log]", f'format = "{log_format}"', 'level = "debug"', ""]
    for name, values in (sections or {}).items():            # other sections, e.g. retention
        lines += [f"[{name}]"] + [f"{k} = {json.dumps(v)}" for k, v in values.items()] + [""]
    for comp in components:
        lines += ["[[components]]"]
        for k in ("domain", "secret", "adapter"):
            lines.append(f"{k} = {json.dumps(comp[k])}")
        for k, v in comp.items():                           # other component keys, e.g. roster
            if k not in ("domain", "secret", "adapter", "options"):
                lines.append(f"{k} = {json.dumps(v)}")
        if comp.get("options"):
            lines.append("[components.options]")
            for k, v in comp["options"].items():
                lines.append(f"{k} = {toml_value(v)}")
        lines.append("")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return {"key": key}


class GatewayProcess(Server):
    """``xmpp-gateway run CONFIG`` as a real process, its output in ``logfile``."""

    def __init__(self, config_path: str, logfile: str, extra_args: tuple[str, ...] = ()):
        super().__init__("gateway", [sys.executable, "-m", "gateway.cli", "run", config_path, *extra_args],
                         logfile)
        self.config_path = config_path

    def start(self, wait_authenticated: int = 1) -> "GatewayProcess":
        offset = len(self.log())
        super().start()
        if wait_authenticated:
            self.wait_log(": authenticated", count=wait_authenticated, since=offset, timeout=20)
        return self

    def stop(self, timeout: float = 15.0) -> int | None:
        super().stop(timeout)
        return self.proc.returncode if self.proc else None


def run_then_stop(gateway: GatewayProcess, coro, timeout: float = 60.0):
    """Run a test body, then stop the gateway whatever happened."""
    try:
        return run(coro, timeout)
    finally:
        gateway.stop()


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


__all__ = ["Client", "GatewayProcess", "write_config", "run", "run_then_stop", "free_port", "body",
           "error_condition", "http_get", "IqError"]
