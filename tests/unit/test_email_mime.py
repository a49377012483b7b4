"""Composing and parsing mail: headers, encodings, injection, HTML, attachments, bounces."""

import email
import email.policy

import pytest

from gateway.adapters.email import addresses
from gateway.adapters.email.compose import compose, subject_for
from gateway.adapters.email.parse import html_to_text, parse
from gateway.model import AddressError, OutboundMessage


def outbound(**kw):
    base = dict(component="mail.example.org", user="u@example.org", recipient="bob@example.net", body="héllo wörld")
    return OutboundMessage(**{**base, **kw})


def test_compose_headers_encoding_and_threading():
    msg = outbound(subject="Lunch?", thread="t1")
    data, mid = compose(msg, "alice@mail.example.org", "Alice Ä", "mail.example.org", ["<a@x>", "<b@x>"], "Lunch?")
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["From"].addresses[0].addr_spec == "alice@mail.example.org"
    assert mail["From"].addresses[0].display_name == "Alice Ä"
    assert mail["To"] == "bob@example.net" and mail["Subject"] == "Lunch?"
    assert mail["Message-ID"] == mid == f"<{msg.id}@mail.example.org>"
    assert mail["In-Reply-To"] == "<b@x>" and mail["References"] == "<a@x> <b@x>"
    assert mail["Date"] and mail["MIME-Version"] == "1.0"
    assert mail.get_content_charset() == "utf-8" and mail.get_content().strip() == "héllo wörld"
    assert all(b < 128 for b in data)                                       # 7-bit clean on the wire
    again, mid2 = compose(msg, "alice@mail.example.org", "", "mail.example.org", [], "Lunch?")
    assert mid2 == mid                                                      # stable across retries


@pytest.mark.parametrize("evil", ["Hi\r\nBcc: victim@example.com", "Hi\nBcc: victim@example.com",
                                  "Hi\rBcc: victim@example.com", "Hi\x00\r\n\r\nfake body"])
def test_no_header_injection_through_subject_or_name(evil):
    data, _ = compose(outbound(subject=evil), "alice@mail.example.org", evil, "mail.example.org", [],
                      subject_for(outbound(subject=evil), None))
    mail = email.message_from_bytes(data, policy=email.policy.default)
    assert mail["Bcc"] is None
    header_block = data.split(b"\n\n", 1)[0]
    assert b"\r" not in data
    assert not any(line.lower().startswith(b"bcc:") for line in header_block.split(b"\n"))
    assert mail.get_content().strip() == "héllo wörld"


def test_subjects():
    assert subject_for(outbound(subject=None, body="first line\nsecond"), None) == "first line"
    assert subject_for(outbound(subject=None), "Plans") == "Re: Plans"
    assert subject_for(outbound(subject=None), "Re: Plans") == "Re: Plans"
    assert subject_for(outbound(subject=None, body="x" * 100), None) == "x" * 60 + "…"


def test_parse_plain_latin1_and_threading():
    raw = ("From: Bob =?iso-8859-1?q?M=FCller?= <Bob@Example.NET>\r\nTo: alice@mail.example.org\r\n"
           "Subject: =?iso-8859-1?q?Gr=FC=DFe?=\r\nMessage-ID: <m2@example.net>\r\nIn-Reply-To: <m1@mail.example.org>\r\n"
           "References: <m0@example.net> <m1@mail.example.org>\r\n"
           "Content-Type: text/plain; charset=iso-8859-1\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
           ).encode() + "Schöne Grüße\r\n".encode("iso-8859-1")
    mail = parse(raw)
    assert (mail.sender, mail.sender_name, mail.subject, mail.text) == ("Bob@Example.NET", "Bob Müller", "Grüße",
                                                                         "Schöne Grüße")
    assert mail.message_id == "<m2@example.net>" and mail.in_reply_to == ["<m1@mail.example.org>"]
    assert mail.references == ["<m0@example.net>", "<m1@mail.example.org>"]


def test_parse_prefers_plain_and_converts_html_only():
    alt = (b"From: a@example.net\r\nSubject: x\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/alternative; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n"
           b"plain version\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>html version</p>\r\n--b--\r\n")
    assert parse(alt).text == "plain version"
    html = (b"From: a@example.net\r\nSubject: x\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
            b"<html><head><style>p{color:red}</style><script>alert(1)</script></head><body>"
            b"<h1>News</h1><p>Hello <b>there</b>,<br>see <a href='https://example.net/x'>our site</a>.</p>"
            b"<ul><li>one</li><li>two</li></ul></body></html>")
    text = parse(html).text
    assert "alert" not in text and "color" not in text
    assert "News" in text and "Hello there,\nsee our site (https://example.net/x)." in text
    assert "• one" in text and "• two" in text


def test_parse_attachments():
    raw = (b"From: a@example.net\r\nSubject: files\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n"
           b"--b\r\nContent-Type: application/pdf; name=\"report.pdf\"\r\nContent-Disposition: attachment; "
           b"filename=\"report.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--b--\r\n")
    mail = parse(raw)
    assert mail.text == "see attached"
    assert mail.attachments == [("report.pdf", "application/pdf", b"%PDF-1.4\n")]


def test_parse_delivery_status_notification():
    raw = (b"From: MAILER-DAEMON@example.net\r\nTo: alice@mail.example.org\r\nSubject: Undelivered Mail\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=b\r\n\r\n"
           b"--b\r\nContent-Type: text/plain\r\n\r\nSorry.\r\n"
           b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example.net\r\n\r\n"
           b"Final-Recipient: rfc822; nobody@example.net\r\nAction: failed\r\nStatus: 5.1.1\r\n"
           b"Diagnostic-Code: smtp; 550 5.1.1 <nobody@example.net>: Recipient address rejected\r\n\r\n"
           b"--b\r\nContent-Type: text/rfc822-headers\r\n\r\nFrom: alice@mail.example.org\r\n"
           b"Message-ID: <orig-1@mail.example.org>\r\nSubject: hi\r\n\r\n--b--\r\n")
    bounce = parse(raw).bounce
    assert bounce.original_message_id == "<orig-1@mail.example.org>"
    assert (bounce.recipient, bounce.status) == ("nobody@example.net", "5.1.1")
    assert "Recipient address rejected" in bounce.diagnostic


def test_html_to_text_handles_tables_and_entities():
    assert html_to_text("<table><tr><td>a&amp;b</td></tr><tr><td>c</td></tr></table>") == "a&b\n\nc"


@pytest.mark.parametrize("typed,normal", [("Bob@Example.NET", "Bob@example.net"), ("<a.b+c@x.org>", "a.b+c@x.org"),
                                          ("o'hara@x.org", "o'hara@x.org")])
def test_addresses(typed, normal):
    assert addresses.normalize(typed) == normal


@pytest.mark.parametrize("bad", ["", "nobody", "a b@x.org", "a@x", "a..b@x.org", "a@-x.org", "a\r\nb@x.org",
                                 "a@x.org\r\nBcc: v@x.org"])
def test_bad_addresses(bad):
    with pytest.raises(AddressError):
        addresses.normalize(bad)


@pytest.mark.parametrize("raw", [b"From: =??B??=\r\n\r\nhi", b"From: \"\r\n\r\nhi"])
def test_a_from_header_the_address_grammar_cannot_parse_leaves_the_sender_empty(raw):
    """Found by the MIME fuzz test: reading mail["From"] itself raised (IndexError, HeaderParseError)."""
    mail = parse(raw)
    assert mail.sender == "" and mail.text == "hi"
