"""
XEP-0313 message archive management on a room's JID: the user's own archive
of the room (gateway/bridge/archive.py), paged with XEP-0059 (``max`` up to
100, ``after``, ``before``, an empty ``before`` for the last page) and
filtered with the form's ``start``/``end``. Results go out as forwarded
messages (XEP-0297) with their delay, then the IQ result with ``<fin/>``.

Who may read: a user who is in the room now, or who has an archive of it
(they were in it); anyone else gets ``forbidden``.
"""

from __future__ import annotations

import datetime

from twisted.words.protocols.jabber.xmlstream import toResponse
from twisted.words.xish import domish
from wokkel import data_form

from gateway.bridge.archive import MAX_PAGE, stamp_us
from gateway.interfaces import IGroupChat
from gateway.model import GatewayError
from gateway.xmpp.escaping import EscapingError, escape, unescape
from gateway.xmpp.forms import FormError, checked_submission, submitted_form
from gateway.xmpp.handler import ComponentHandler
from gateway.xmpp.muc import NS_DELAY, NS_SID, is_muc_stanza
from gateway.xmpp.stanzas import parse_jid, text_of, xml_safe

NS_MAM = "urn:xmpp:mam:2"
NS_RSM = "http://jabber.org/protocol/rsm"
NS_FORWARD = "urn:xmpp:forward:0"
#: Longest queryid echoed back.
MAX_QUERYID = 200


def _offered() -> data_form.Form:
    return data_form.Form("form", formNamespace=NS_MAM, fields=[
        data_form.Field("text-single", var="start", label="From (XEP-0082 date-time)"),
        data_form.Field("text-single", var="end", label="Until (XEP-0082 date-time)"),
    ])


def _stamp(us: int) -> str:
    moment = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(microseconds=us)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class MAMHandler(ComponentHandler):

    def connectionInitialized(self):
        if IGroupChat.providedBy(self.bridge.adapter) and getattr(self.bridge, "archive", None) is not None:
            self.xmlstream.addObserver(f"/iq/query[@xmlns='{NS_MAM}']", self.on_query, priority=10)

    def on_query(self, iq: domish.Element) -> None:
        to = parse_jid(iq.getAttribute("to"))
        if to is None or to.resource or not is_muc_stanza(self.bridge.adapter, iq):
            return
        itype = iq.getAttribute("type")
        if itype not in ("get", "set"):
            return
        iq.handled = True
        try:
            room = self.bridge.adapter.normalize_address(unescape(to.user))
        except GatewayError as e:
            self.stream.refuse(iq, e.condition, e.text, e.error_type)
            return
        query = next(iq.elements(NS_MAM, "query"))
        if itype == "get":                              # §5.1: the fields a query may filter by
            reply = toResponse(iq, "result")
            reply.addElement((NS_MAM, "query")).addChild(_offered().toElement())
            self.send(reply)
            return
        queryid = query.getAttribute("queryid")
        try:
            if queryid is not None and (len(queryid) > MAX_QUERYID or xml_safe(queryid) != queryid):
                raise GatewayError(f"a queryid is at most {MAX_QUERYID} characters of text", "bad-request", "modify")
            request = self._request(query)
        except GatewayError as e:
            self.stream.refuse(iq, e.condition, e.text, e.error_type)
            return
        sender = parse_jid(iq["from"])
        user, resource = sender.userhost(), sender.resource or ""
        archive = self.bridge.archive

        def allowed(ok):
            if not ok:
                raise GatewayError("you have no archive of this room: join it first", "forbidden", "auth")
            return archive.page(user, room, request["after"], request["before"], request["last"],
                                request["start"], request["end"], request["max"])

        try:
            room_jid = f"{escape(xml_safe(self.bridge.adapter.jid_localpart(room)))}@{self.domain}"
        except EscapingError:
            self.stream.refuse(iq, "jid-malformed", "this room has no JID", "modify")
            return
        d = archive.may_read(user, resource, room)
        d.addCallback(allowed)
        d.addCallback(self._answer, iq, queryid, room_jid)
        d.addErrback(self.refuse_failure(iq, f"archive query on {room}"))

    @staticmethod
    def _request(query: domish.Element) -> dict:
        """The query's filters and page, checked: bad-request for anything malformed."""
        request = {"start": None, "end": None, "after": None, "before": None, "last": False, "max": MAX_PAGE}
        x = submitted_form(query)
        if x is not None:
            try:
                values = checked_submission(x, _offered())
            except FormError as e:
                raise GatewayError(e.text, "bad-request", "modify")
            for name in ("start", "end"):
                if values.get(name):
                    try:
                        request[name] = stamp_us(values[name])
                    except (ValueError, OverflowError):
                        raise GatewayError(f"{name} must be an XEP-0082 date-time such as 2026-12-03T05:40:00Z",
                                           "bad-request", "modify")
        rsm = next(query.elements(NS_RSM, "set"), None)
        if rsm is not None:
            raw = text_of(rsm, NS_RSM, "max")
            if raw is not None:
                raw = raw.strip()
                if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
                    raise GatewayError("<max/> must be a whole number", "bad-request", "modify")
                request["max"] = min(int(raw), MAX_PAGE)
            after = text_of(rsm, NS_RSM, "after")
            before_el = next(rsm.elements(NS_RSM, "before"), None)
            if after is not None and before_el is not None:
                raise GatewayError("page with <after/> or <before/>, not both", "bad-request", "modify")
            if after is not None:
                if not after.strip():
                    raise GatewayError("<after/> needs an id", "bad-request", "modify")
                request["after"] = after.strip()[:MAX_QUERYID]
            if before_el is not None:
                before = str(before_el).strip()
                if before:
                    request["before"] = before[:MAX_QUERYID]
                else:
                    request["last"] = True              # an empty <before/>: the last page
        return request

    def _answer(self, page, iq: domish.Element, queryid: str | None, room_jid: str) -> None:
        events, complete = page
        to = iq["from"]
        for event in events:
            message = domish.Element((None, "message"))
            message["to"], message["from"] = to, room_jid
            result = message.addElement((NS_MAM, "result"))
            if queryid is not None:
                result["queryid"] = queryid
            sid_value = xml_safe(event.stanza_id)          # as the live line had it (a network's id)
            result["id"] = sid_value
            forwarded = result.addElement((NS_FORWARD, "forwarded"))
            forwarded.addElement((NS_DELAY, "delay"))["stamp"] = _stamp(round(event.timestamp * 1_000_000))
            inner = forwarded.addElement(("jabber:client", "message"))
            inner["type"] = "groupchat"
            inner["from"] = f"{room_jid}/{xml_safe(event.nick)}"
            inner.addElement("body", content=xml_safe(event.body) or "")
            if event.origin_id:
                inner.addElement((NS_SID, "origin-id"))["id"] = event.origin_id
            sid = inner.addElement((NS_SID, "stanza-id"))
            sid["id"], sid["by"] = sid_value, room_jid
            self.send(message)
        reply = toResponse(iq, "result")
        fin = reply.addElement((NS_MAM, "fin"))
        if complete:
            fin["complete"] = "true"
        rset = fin.addElement((NS_RSM, "set"))
        if events:
            rset.addElement("first", content=xml_safe(events[0].stanza_id))
            rset.addElement("last", content=xml_safe(events[-1].stanza_id))
        else:
            rset.addElement("count", content="0")
        self.send(reply)


__all__ = ["MAMHandler", "NS_MAM"]
