"""
The ledger every fault case ends with: what users sent, what the gateway
accepted, what came back, and what was duplicated or lost.

A message is *accepted* unless its sender got an error for it (then the
sender knows, and that is allowed). Every accepted message must come back
exactly once: ``lost`` and ``duplicates`` must both be 0.

A *duplicate* is the same body arriving again under another stanza id: no
client can tell it from a new message. A *repeat* is the same stanza written
again with the same id and XEP-0359 origin-id, which is what the inbound
barrier does when the gateway dies between writing a message and the
server's answer to the ping behind it (XEP-0114 has no acknowledgements, so
the gateway cannot know whether the server read it). Clients that keep
message ids (Conversations, Dino, Gajim) show a repeat once; the ledger counts
repeats separately so their rate is measured, not hidden.

A message a user sent to the gateway just before it was SIGKILLed may never
have been stored: the server wrote it to the stream, and the gateway had not
read it, or had read it and not yet committed it. XEP-0114 has no
acknowledgements, so neither the server nor the gateway can tell the sender;
that window is the protocol's, not the gateway's (docs/reliability.md). The
ledger therefore reads the dead gateway's queue (``Ledger.killed``) and counts
those messages apart, as *not stored when killed*, but only when they were
sent at most ``UNSTORED_WINDOW`` seconds before the kill. A message the queue
held is never allowed to go missing, and neither is an older one: those stay
*lost*.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field

from gateway.registry import payloads
from tests.integration.harness import body

#: How long before a SIGKILL a message may have been sent and still not be in
#: the queue: the server's write, the gateway's read and one group commit. A
#: message older than this that the queue did not hold counts as lost.
UNSTORED_WINDOW = 1.0


def stored_bodies(db: str) -> set[str]:
    """The bodies every queue row of a (dead) gateway's SQLite registry holds, either direction."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = conn.execute("SELECT id, component, jid, payload, created_at FROM queue").fetchall()
    finally:
        conn.close()
    found = set()
    for row_id, component, jid, text, created_at in rows:
        text = payloads.decode(text, row_id, jid, component, created_at).get("body")
        if text:
            found.add(text)
    return found


@dataclass
class Ledger:
    sent: list[str] = field(default_factory=list)
    #: stanza id -> body of what users sent (errors come back with the id).
    by_id: dict[str, str] = field(default_factory=dict)
    errors: set[str] = field(default_factory=set)
    received: Counter = field(default_factory=Counter)
    ids: dict[str, set[str]] = field(default_factory=dict)
    #: body -> when it was sent (time.monotonic()).
    sent_at: dict[str, float] = field(default_factory=dict)
    #: body -> how long before a kill it was sent, for messages the dead gateway's queue did not hold.
    unstored: dict[str, float] = field(default_factory=dict)

    def send(self, client, to: str, text: str) -> None:
        self.sent.append(text)
        self.sent_at[text] = time.monotonic()
        self.by_id[client.send_chat(to, text)] = text

    def killed(self, db: str) -> None:
        """
        Call right after the gateway was SIGKILLed, before it starts again:
        note which messages sent so far neither came back nor were in its queue.
        """
        now = time.monotonic()
        held = stored_bodies(db)
        for text, at in self.sent_at.items():
            if text not in self.unstored and text not in held and not self.received[text]:
                self.unstored[text] = now - at

    def not_stored(self, text: str) -> bool:
        return self.unstored.get(text, UNSTORED_WINDOW + 1) <= UNSTORED_WINDOW

    def expect(self, text: str) -> None:
        """A message that must arrive without a user sending it (injected straight into the queue)."""
        self.sent.append(text)

    def note(self, stanza) -> None:
        """Record one stanza a user received (echoes of our bodies, or errors for them)."""
        if stanza.get("type") == "error":
            text = self.by_id.get(stanza.get("id")) or body(stanza)
            if text:
                self.errors.add(text)
            return
        text = body(stanza)
        if text and text in self._sent_set:
            self.received[text] += 1
            self.ids.setdefault(text, set()).add(stanza.get("id"))

    @property
    def _sent_set(self) -> set[str]:
        if len(getattr(self, "_cache", ())) != len(self.sent):
            self._cache = set(self.sent)
        return self._cache

    def report(self) -> dict[str, int]:
        accepted = [b for b in self.sent if b not in self.errors]
        gone = [b for b in accepted if self.received[b] == 0]
        return {
            "sent": len(self.sent),
            "accepted": len(accepted),
            "errors reported": len(self.errors),
            "delivered": len(accepted) - len(gone),
            "not stored when killed": sum(1 for b in gone if self.not_stored(b)),
            "lost": sum(1 for b in gone if not self.not_stored(b)),
            "duplicates": sum(len(self.ids[b]) - 1 for b in self.received if len(self.ids[b]) > 1),
            "repeats (same id)": sum(n - len(self.ids[b]) for b, n in self.received.items()),
        }

    def missing(self) -> list[str]:
        """Accepted messages that did not arrive (and are not excused as never stored: see ``killed``)."""
        return [b for b in self.sent if b not in self.errors and self.received[b] == 0 and not self.not_stored(b)]

    def duplicated(self) -> dict[str, int]:
        """Bodies that arrived under more than one stanza id (true duplicates)."""
        return {b: len(ids) for b, ids in self.ids.items() if len(ids) > 1}


async def drain(clients, ledger: Ledger, settle: float = 3.0, timeout: float = 60.0) -> None:
    """Read what arrives until nothing is missing (or ``timeout``), then ``settle`` s more for late duplicates."""
    deadline = time.monotonic() + timeout
    while ledger.missing() and time.monotonic() < deadline:
        await pump(clients, ledger, 0.2)
    await pump(clients, ledger, settle)


async def pump(clients, ledger: Ledger, seconds: float) -> None:
    """Move everything the clients received within ``seconds`` into the ledger."""
    end = time.monotonic() + seconds
    while True:
        for c in clients:
            while not c.messages.empty():
                ledger.note(c.messages.get_nowait())
        left = end - time.monotonic()
        if left <= 0:
            return
        await asyncio.sleep(min(0.05, left))


async def steady(clients, ledger: Ledger, contact_jids: list[str], seconds: float, rate: float,
                 prefix: str = "m") -> None:
    """Each client sends ``rate`` messages a second for ``seconds``, round-robin over contacts."""
    n = 0
    end = time.monotonic() + seconds
    interval = 1.0 / rate
    while time.monotonic() < end:
        for i, c in enumerate(clients):
            ledger.send(c, contact_jids[n % len(contact_jids)], f"{prefix}-{i}-{n}")
        n += 1
        await pump(clients, ledger, interval)


async def server_knows_it_is_gone(client, domain: str, collect, timeout: float = 15.0) -> None:
    """
    After the gateway was killed: wait until the XMPP server answers a
    message to the component with an error, that is until it has seen the
    stream close. Until then the server may still write users' messages into
    the dead socket and drop them without an error (docs/reliability.md, "What
    the XMPP server loses"): no component can know of those, so the ledger
    must not count them. Probes are sent from ``client`` to an address at
    ``domain``; everything else it receives meanwhile goes to ``collect``.
    """
    deadline = time.monotonic() + timeout
    n = 0
    while time.monotonic() < deadline:
        n += 1
        probe = client.send_chat(f"down-probe@{domain}", f"down-probe-{n}")
        answer_by = time.monotonic() + 0.5
        while time.monotonic() < answer_by:
            try:
                stanza = await asyncio.wait_for(client.messages.get(), 0.05)
            except asyncio.TimeoutError:
                continue
            if stanza.get("id") == probe and stanza.get("type") == "error":
                return
            collect.note(stanza)
    raise AssertionError(f"the XMPP server did not notice within {timeout:g} s that {domain} is gone")


def summary(ledger: Ledger) -> str:
    r = ledger.report()
    extra = ""
    if r["lost"]:
        extra += f"; lost e.g. {[b[:40] for b in ledger.missing()[:5]]}"
    if r["not stored when killed"]:
        late = [(b[:40], round(ledger.unstored[b], 3)) for b in ledger.sent
                if b not in ledger.errors and not ledger.received[b] and ledger.not_stored(b)]
        extra += f"; not stored when killed (sent s before the kill) e.g. {late[:5]}"
    if r["duplicates"]:
        extra += f"; duplicated e.g. {[(b[:40], n) for b, n in list(ledger.duplicated().items())[:5]]}"
    return ", ".join(f"{k} {v}" for k, v in r.items()) + extra
