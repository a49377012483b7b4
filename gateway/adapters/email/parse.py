"""
Inbound mail, read with the standard library's email package: the sender, the
subject, the text (text/plain preferred, HTML turned into readable text, any
charset decoded), attachments, threading ids, and delivery status notifications
(bounces) for mail the gateway sent.
"""

from __future__ import annotations

import email
import email.errors
import email.policy
import re
from dataclasses import dataclass, field
from email.message import EmailMessage

from bs4 import BeautifulSoup

_MSGID = re.compile(r"<[^<>\s]+>")


@dataclass
class Bounce:
    original_message_id: str | None
    recipient: str | None
    status: str | None
    diagnostic: str | None


@dataclass
class ParsedMail:
    sender: str
    sender_name: str
    subject: str
    text: str
    attachments: list[tuple[str | None, str, bytes]] = field(default_factory=list)
    message_id: str | None = None
    in_reply_to: list[str] = field(default_factory=list)
    references: list[str] = field(default_factory=list)
    bounce: Bounce | None = None


def html_to_text(html: str) -> str:
    """Readable text from an HTML mail: block structure kept, links shown, scripts dropped."""
    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "head", "title", "meta"]):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for a in soup.find_all("a"):
        href = a.get("href", "")
        label = a.get_text(" ", strip=True)
        if href.startswith(("http://", "https://", "mailto:")) and href.rstrip("/") != label.rstrip("/"):
            a.replace_with(f"{label} ({href})" if label else href)
    for li in soup.find_all("li"):
        li.insert_before("\n• ")
    for block in soup.find_all(["p", "div", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "ul", "ol",
                                "table", "pre"]):
        block.insert_before("\n")
        block.insert_after("\n")
    text = soup.get_text()
    lines = [re.sub(r"[ \t\xa0]+", " ", line).strip() for line in text.splitlines()]
    out = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return out.strip()


def _text_of(part: EmailMessage) -> str:
    try:
        content = part.get_content()
        if isinstance(content, bytes):
            content = content.decode("utf-8", "replace")
        return content
    except (LookupError, UnicodeError, AssertionError):
        # an unknown or lying charset: decode what can be decoded
        payload = part.get_payload(decode=True) or b""
        for charset in (part.get_content_charset(), "utf-8", "cp1252"):
            try:
                return payload.decode(charset or "utf-8")
            except (LookupError, UnicodeError):
                continue
        return payload.decode("latin-1")


def _ids(value: str | None) -> list[str]:
    return _MSGID.findall(value or "")


def _bounce(mail: EmailMessage) -> Bounce | None:
    if mail.get_content_type() != "multipart/report" or mail.get_param("report-type") != "delivery-status":
        return None
    recipient = status = diagnostic = original = None
    for part in mail.walk():
        ctype = part.get_content_type()
        if ctype == "message/delivery-status":
            for block in part.get_payload():
                recipient = recipient or block.get("Final-Recipient")
                status = status or block.get("Status")
                diagnostic = diagnostic or block.get("Diagnostic-Code")
                if block.get("Action", "").strip().lower() == "failed":
                    status = block.get("Status") or status
        elif ctype == "message/rfc822":
            inner = part.get_payload()[0] if isinstance(part.get_payload(), list) else None
            if inner is not None:
                original = original or (_ids(inner.get("Message-ID")) or [None])[0]
        elif ctype == "text/rfc822-headers":
            headers = email.message_from_string(_text_of(part), policy=email.policy.default)
            original = original or (_ids(headers.get("Message-ID")) or [None])[0]
    if recipient:
        recipient = recipient.split(";", 1)[-1].strip()
    if diagnostic:
        diagnostic = re.sub(r"\s+", " ", diagnostic.split(";", 1)[-1]).strip()
    return Bounce(original, recipient, status and status.strip(), diagnostic)


#: The headers parse() reads (besides the Content-* ones): the simple path checks each is plain.
_READ = ("From", "Subject", "Message-ID", "In-Reply-To", "References", "Content-Type", "Content-Disposition",
         "Content-Transfer-Encoding")
#: A header value the simple path takes as it is: printable ASCII on one line (no folding,
#: no 8-bit bytes), no encoded word.
_PLAIN = re.compile(r"[ -~]*")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR = rf"{_ATOM}(?:\.{_ATOM})*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*"
#: From as most mail writes it: ``addr``, ``<addr>`` or ``Plain Name <addr>`` (letters and digits, single spaces).
_SIMPLE_FROM = re.compile(rf" *(?:(?:(?P<name>[A-Za-z0-9]+(?: [A-Za-z0-9]+)*) )?<(?P<bracketed>{_ADDR})>|(?P<bare>{_ADDR})) *")
_SIMPLE_MSGID = re.compile(rf" *<{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*> *")
_SIMPLE_TYPE = re.compile(r' *text/plain *(?:; *charset="?(?P<charset>us-ascii|utf-8)"? *)?', re.I)
_SIMPLE_CTE = re.compile(r" *(?:7bit|8bit) *", re.I)
#: A header line the plain split takes: a field name compat32 reads as one, a colon, printable ASCII.
_PLAIN_HEADER = re.compile(rb"([!-9;-~]+):([ -~]*)")


def _split_plain(raw: bytes) -> tuple[dict[str, list[str]], bytes] | None:
    """
    (the header values by lower-case name, the body) of a mail whose head is
    one header per CRLF line, each printable ASCII without folding, ended by
    an empty line: what compat32's feed parser makes of such a mail (its
    ``get_all`` and ``get_payload(decode=True)`` for a 7/8-bit text body),
    without the parser's per-line machinery. Anything else (folding, bare LF
    or CR, 8-bit or odd lines in the head, a Unix "From " line, no empty line)
    gives None and goes to the parser. tests/unit/test_inbound_fast.py
    compares both on random and hostile mail.
    """
    end = raw.find(b"\r\n\r\n")
    if end <= 0 or raw.startswith(b"From "):
        return None
    headers: dict[str, list[str]] = {}
    for line in raw[:end].split(b"\r\n"):
        found = _PLAIN_HEADER.fullmatch(line)
        if found is None:
            return None
        name, value = found.groups()
        headers.setdefault(name.decode("ascii").lower(), []).append(value.decode("ascii").lstrip(" "))
    return headers, raw[end + 4:]


def _parse_simple(raw: bytes) -> ParsedMail | None:
    """
    The common mail, read without the email package's header objects: one
    text/plain part (no Content-Type, or text/plain in US-ASCII or UTF-8), 7 or
    8 bit, and the headers parse() reads each present at most once, printable
    ASCII on one line, without encoded words; From a plain address (with a
    plain name). The structure comes from the same parser (compat32, which
    leaves header values as they are); anything else gives None, and
    _parse_full reads the mail. Why: policy.default builds a header object for
    every header read (the address grammar for From, the msg-id grammar), about
    three quarters of a small mail's parse. tests/unit/test_inbound_fast.py
    checks the result equals _parse_full's on random and hostile mail.
    """
    split = _split_plain(raw)
    if split is not None:
        headers, body = split
        get_all, multipart = headers.get, False
    else:
        mail = email.message_from_bytes(raw, policy=email.policy.compat32)
        get_all, multipart, body = mail.get_all, mail.is_multipart(), None
    values = {}
    for name in _READ:
        found = get_all(name.lower())
        if found is None:
            continue
        if len(found) != 1 or not isinstance(found[0], str) or not _PLAIN.fullmatch(found[0]) or "=?" in found[0]:
            return None
        values[name] = found[0]
    if "Content-Disposition" in values or multipart:
        return None
    charset = "ASCII"
    if "Content-Type" in values:
        ctype = _SIMPLE_TYPE.fullmatch(values["Content-Type"])
        if ctype is None:
            return None
        charset = ctype.group("charset") or charset
    if "Content-Transfer-Encoding" in values and not _SIMPLE_CTE.fullmatch(values["Content-Transfer-Encoding"]):
        return None
    sender = name = ""
    if "From" in values:
        found = _SIMPLE_FROM.fullmatch(values["From"])
        if found is None:
            return None
        sender = found.group("bracketed") or found.group("bare")
        name = found.group("name") or ""
    message_id = None
    if "Message-ID" in values:
        if not _SIMPLE_MSGID.fullmatch(values["Message-ID"]):
            return None
        message_id = values["Message-ID"].strip()
    payload = (body if body is not None else mail.get_payload(decode=True)) or b""
    return ParsedMail(sender=sender, sender_name=name, subject=re.sub(r"\s+", " ", values.get("Subject", "")).strip(),
                      text=payload.decode(charset, "replace").strip(), message_id=message_id,
                      in_reply_to=_ids(values.get("In-Reply-To")), references=_ids(values.get("References")))


def parse(raw: bytes) -> ParsedMail:
    """The mail's sender, subject, text, attachments, threading ids and bounce report."""
    return _parse_simple(raw) or _parse_full(raw)


def _parse_full(raw: bytes) -> ParsedMail:
    mail: EmailMessage = email.message_from_bytes(raw, policy=email.policy.default)
    # Fetched once: with policy.default every mail["From"] parses the header
    # again (the address grammar), the largest cost of a small mail.
    try:
        from_header = mail["From"]          # parsing it can raise too (an empty encoded word: '=??B??=')
        addresses = from_header.addresses if from_header else ()
        sender = addresses[0].addr_spec if addresses else ""
        name = addresses[0].display_name if addresses else ""
    except (AttributeError, IndexError, TypeError, ValueError, email.errors.HeaderParseError):
        sender = name = ""
    subject = re.sub(r"\s+", " ", str(mail.get("Subject", ""))).strip()
    bounce = _bounce(mail)
    body = mail.get_body(preferencelist=("plain", "html"))
    if body is None:
        text = ""
    elif body.get_content_type() == "text/html":
        text = html_to_text(_text_of(body))
    else:
        text = _text_of(body).strip()
    attachments = []
    if bounce is None:
        for part in mail.iter_attachments():
            if part.get_content_maintype() == "multipart":
                continue
            data = part.get_payload(decode=True) or b""
            attachments.append((part.get_filename(), part.get_content_type(), data))
    return ParsedMail(sender=sender, sender_name=name, subject=subject, text=text, attachments=attachments,
                      message_id=(_ids(mail.get("Message-ID")) or [None])[0],
                      in_reply_to=_ids(mail.get("In-Reply-To")), references=_ids(mail.get("References")),
                      bounce=bounce)
