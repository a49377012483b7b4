"""
A bound on Twisted's JID intern table.

``twisted.words.protocols.jabber.jid.internJID`` keeps every JID string it has
parsed in a module dict for the life of the process, and every stanza's ``from``
and ``to`` pass through it (``gateway.xmpp.stanzas.parse_jid``, and wokkel's
``generic.Stanza`` behind every disco or other request it reads). Those strings
are the peer's choice: a client writing to a new address each time, or a server
inventing resources, grew the dict without limit (up to 3 KiB of JID each).

The table is replaced by one that empties itself when it reaches
``INTERN_LIMIT`` entries. Interning only saves stringprep work on JIDs seen
again, so forgetting them all at once costs a few re-parses and nothing else,
and it needs no bookkeeping per lookup on the hot path. Every holder of
``internJID`` (wokkel and Twisted import it under other names) reaches the same
table, because the function looks its table up by name on each call.
"""

from __future__ import annotations

from twisted.words.protocols.jabber import jid as _jid

#: Entries kept at most; at about 1 KiB for a long JID that is a few MiB at worst.
INTERN_LIMIT = 4096

_TABLE_NAME = "__internJIDs"


class BoundedInternTable(dict):
    """A dict that forgets everything when one more entry would pass the limit."""

    __slots__ = ()

    def __setitem__(self, key: str, value: _jid.JID) -> None:
        if len(self) >= INTERN_LIMIT:
            self.clear()
        dict.__setitem__(self, key, value)


def install() -> None:
    table = vars(_jid).get(_TABLE_NAME)
    if isinstance(table, BoundedInternTable):
        return
    bounded = BoundedInternTable()
    for key, value in list((table or {}).items())[-INTERN_LIMIT:]:
        dict.__setitem__(bounded, key, value)
    setattr(_jid, _TABLE_NAME, bounded)
    if _jid.internJID("a@b/c") is not _jid.internJID("a@b/c") or _TABLE_NAME not in vars(_jid) \
            or vars(_jid)[_TABLE_NAME] is not bounded or "a@b/c" not in bounded:
        raise RuntimeError("Twisted's internJID no longer uses its module table: the JID bound is not installed")


install()
