"""
Property-based fuzzing of the inbound mail parser: whatever bytes an SMTP
client sends as DATA, parsing never raises, and everything it yields becomes
well-formed XML through the gateway's XML-safety filter (the path every mail
text takes to a stanza).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from hypothesis import given, strategies as st
from twisted.words.xish import domish

from gateway.adapters.email.parse import parse
from gateway.xmpp.stanzas import xml_safe

HEADER_NAMES = ["From", "To", "Subject", "Message-ID", "In-Reply-To", "References", "Date", "Content-Type",
                "Content-Transfer-Encoding", "MIME-Version", "Content-Disposition", "Reply-To", "Sender"]
CHARSETS = ["utf-8", "latin-1", "x-unknown", "utf-7", "koi8-r", "", "utf-16", "\x00bad", "gb2312"]

header_value = st.one_of(
    st.text(max_size=200),
    st.binary(max_size=200).map(lambda b: b.decode("latin-1")),
    st.builds(lambda cs, enc, t: f"=?{cs}?{enc}?{t}?=", st.sampled_from(CHARSETS), st.sampled_from(["B", "Q", "X"]),
              st.text(max_size=40)),
    st.builds(lambda n: "<" + "a" * n + "@x>", st.integers(0, 5000)),
    st.just("multipart/mixed; boundary="),
    st.just("multipart/report; report-type=delivery-status; boundary=B"),
)


@st.composite
def mails(draw) -> bytes:
    headers = draw(st.lists(st.tuples(st.sampled_from(HEADER_NAMES), header_value), max_size=12))
    head = "".join(f"{k}: {v}\r\n" for k, v in headers).encode("utf-8", "surrogatepass")
    boundary = draw(st.sampled_from(["B", "", "--", "x" * 80]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        ctype = draw(st.sampled_from(["text/plain", "text/html", "message/delivery-status", "text/rfc822-headers",
                                      "application/octet-stream", "multipart/alternative", "message/rfc822"]))
        charset = draw(st.sampled_from(CHARSETS))
        cte = draw(st.sampled_from(["base64", "quoted-printable", "8bit", "7bit", "x-bogus"]))
        payload = draw(st.binary(max_size=300))
        parts.append(f"--{boundary}\r\nContent-Type: {ctype}; charset=\"{charset}\"\r\n"
                     f"Content-Transfer-Encoding: {cte}\r\nContent-Disposition: attachment; filename=\"a\x00b\"\r\n\r\n"
                     .encode("utf-8", "surrogatepass") + payload + b"\r\n")
    tail = f"--{boundary}--\r\n".encode() if parts else b""
    return head + b"\r\n" + b"".join(parts) + tail + draw(st.binary(max_size=200))


def as_xml(*texts: str | None) -> None:
    """The texts in a stanza, serialised and read back: must be well-formed XML."""
    el = domish.Element((None, "message"))
    for t in texts:
        el.addElement("body", content=xml_safe(t) or "")
    ET.fromstring(el.toXml())


def check(data: bytes) -> None:
    mail = parse(data)
    as_xml(mail.sender, mail.sender_name, mail.subject, mail.text, mail.message_id,
           *(mail.in_reply_to + mail.references))
    for name, content_type, payload in mail.attachments:
        assert isinstance(payload, bytes)
        as_xml(name, content_type)
    if mail.bounce is not None:
        b = mail.bounce
        as_xml(b.original_message_id, b.recipient, b.status, b.diagnostic)


@given(st.binary(max_size=2000))
def test_fuzz_any_bytes_parse(data):
    check(data)


@given(mails())
def test_fuzz_hostile_mime_parses(data):
    check(data)
