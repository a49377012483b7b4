"""
The gateway's SMTP server (twisted.mail ESMTP): it accepts mail only for
registered users' addresses (550 5.1.1 otherwise), never relays (550 5.7.1),
refuses what is over the size limit (552 5.3.4), offers STARTTLS with the
configured certificate, and answers 250 only once the message is stored for
every recipient.

One DATA answer covers all recipients, so a message is stored for all of
them in one transaction or for none (451, and the sender retries): stored
for some, a retry would give those a second copy. For the same reason a
repeated RCPT TO is accepted but counts once.
"""

from __future__ import annotations

import email.utils
import hashlib
import socket

from twisted.internet import defer, protocol, ssl
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer

log = Logger(namespace="gateway.adapters.email.smtp_in")


@implementer(smtp.IMessage)
class _Message:
    """One mail for all the recipients of a transaction: one copy in memory, one store for all."""

    def __init__(self, intake, recipients: list[str], envelope_from: str, max_size: int):
        self.intake = intake
        self.recipients = recipients
        self.envelope_from = envelope_from
        self.max_size = max_size
        self.lines: list[bytes] = []
        self.size = 0

    def lineReceived(self, line: bytes) -> None:
        self.size += len(line) + 2
        if self.size > self.max_size:
            self.lines = []
            # bytes: Twisted sends a DATA-phase error's text as it is
            raise smtp.SMTPServerError(552, f"5.3.4 message exceeds the maximum size of {self.max_size} bytes"
                                       .encode())
        self.lines.append(line)

    def eomReceived(self) -> defer.Deferred:
        data = b"\r\n".join(self.lines) + b"\r\n"
        # The mail as the client sent it, without the Received line we put first
        # (it carries the time): a client resending after it lost our 250 sends
        # the same bytes, and the copy is recognised.
        digest = hashlib.sha256(b"\r\n".join(self.lines[1:])).hexdigest()
        self.lines = []
        return self.intake.receive(data, self.recipients, self.envelope_from, digest)

    def connectionLost(self) -> None:
        self.lines = []


class _Accepted:
    """
    A recipient validateTo accepted. Twisted wants a message factory per
    recipient; _ESMTP.do_DATA instead makes one message for them all from
    these addresses, but the object stays a factory to honour IMessageDelivery.
    """

    def __init__(self, intake, address: str, envelope_from: str, max_size: int):
        self.intake = intake
        self.address = address
        self.envelope_from = envelope_from
        self.max_size = max_size

    def for_all(self, addresses: list[str]) -> _Message:
        return _Message(self.intake, addresses, self.envelope_from, self.max_size)

    def __call__(self) -> _Message:
        return self.for_all([self.address])


@implementer(smtp.IMessageDelivery)
class _Delivery:
    def __init__(self, adapter):
        self.adapter = adapter

    def receivedHeader(self, helo, origin, recipients):
        client = helo[0].decode("ascii", "replace") if helo and helo[0] else "unknown"
        peer = helo[1].decode("ascii", "replace") if helo and len(helo) > 1 and helo[1] else "unknown"
        stamp = email.utils.formatdate(usegmt=True)
        return (f"Received: from {client} ([{peer}]) by {self.adapter.mail_domain} (xmpp-gateway); {stamp}"
                ).encode("utf-8")

    def validateFrom(self, helo, origin):
        return origin       # anyone may write to a user, and <> (bounces) is allowed

    @defer.inlineCallbacks
    def validateTo(self, user):
        address = f"{user.dest.local.decode('utf-8', 'replace')}@{user.dest.domain.decode('utf-8', 'replace')}"
        domain = user.dest.domain.decode("utf-8", "replace").lower()
        if domain != self.adapter.mail_domain:
            raise smtp.SMTPBadRcpt(user.dest, 550, f"5.7.1 relaying denied: only mail for @{self.adapter.mail_domain}"
                                                   " is accepted here")
        address = address.lower()
        reg = yield self.adapter.context.registration_by_foreign_id(address)
        if reg is None:
            raise smtp.SMTPBadRcpt(user.dest, 550, f"5.1.1 <{address}>: no such user here")
        origin = str(user.orig) if user.orig else ""
        return _Accepted(self.adapter.intake, address, origin, self.adapter.config["max_size"])


class _ESMTP(smtp.ESMTP):
    max_size = 0

    def extensions(self):
        ext = super().extensions()
        ext[b"SIZE"] = [str(self.max_size).encode()]
        ext[b"8BITMIME"] = []
        return ext

    def do_DATA(self, rest: bytes) -> None:
        # Twisted makes one message per accepted RCPT (``_to``: (User, factory)
        # pairs); hand it one for all distinct addresses instead, so the mail is
        # stored in one transaction and a repeated RCPT gives one copy.
        if self._to:
            user, first = self._to[0]
            message = first.for_all(list(dict.fromkeys(accepted.address for _, accepted in self._to)))
            self._to = [(user, lambda: message)]
        super().do_DATA(rest)

    def _messageHandled(self, resultList):
        failures = [result for ok, result in resultList if not ok]
        for failure in failures:
            log.failure("an accepted mail could not be stored", failure)
        if failures:
            self.sendCode(451, b"4.3.0 the message could not be stored; try again later")
        else:
            self.sendCode(250, b"2.0.0 accepted")


class SMTPServerFactory(protocol.ServerFactory):
    def __init__(self, adapter, tls_cert: str, tls_key: str):
        self.adapter = adapter
        self.delivery = _Delivery(adapter)
        self.context = None
        if tls_cert and tls_key:
            with open(tls_cert, "rb") as c, open(tls_key, "rb") as k:
                self.context = ssl.PrivateCertificate.loadPEM(c.read() + b"\n" + k.read()).options()
        self.noisy = False

    def buildProtocol(self, addr):
        p = _ESMTP(contextFactory=self.context)
        p.factory = self
        p.host = self.adapter.mail_domain.encode() if self.adapter.mail_domain else socket.getfqdn().encode()
        p.delivery = self.delivery
        p.max_size = self.adapter.config["max_size"]
        p.noisy = False      # its per-DATA line would name only the first recipient; the intake logs each mail
        return p
