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

Facing a hostile client, every cost is bounded: distinct recipients per
transaction (``max_recipients``: 452 4.5.3 beyond), refused recipients per
connection (421 after ``MAX_RCPT_ERRORS``), connections per IP
(``max_connections_per_ip``: 421 4.7.0), transactions per IP per minute
(``max_messages_per_minute``: 451 4.7.1), the whole DATA phase
(``data_timeout``: 421 4.4.2, nothing stored), a ``SIZE=`` over the limit
(552 at MAIL) and a line over ``MAX_LINE`` (500 5.5.2, closed).

Line ends (SMTP smuggling): only <CR><LF>.<CR><LF> ends DATA. Lines may end
in a bare LF (taken as <CR><LF>, like Postfix's ``smtpd_forbid_bare_newline
= normalize``), but a "." line next to a bare LF is content, never the end:
``\n.\n`` or ``\r\n.\n`` cannot end one message and start another with
a forged sender.
"""

from __future__ import annotations

import collections
import email.utils
import hashlib
import re

from twisted.internet import defer, protocol, ssl
from twisted.logger import Logger
from twisted.mail import smtp
from zope.interface import implementer

from gateway.adapters.email.auth import SenderRefused

log = Logger(namespace="gateway.adapters.email.smtp_in")

#: Refused recipients (unknown users, relaying) one connection may try before it is dropped.
MAX_RCPT_ERRORS = 20
#: Longest line taken (RFC 5321 allows 1,000 octets; generous for sloppy clients).
MAX_LINE = 16384
_SIZE_PARAM = re.compile(rb"\bSIZE=(\d{1,20})\b", re.I)


@implementer(smtp.IMessage)
class _Message:
    """One mail for all the recipients of a transaction: one copy in memory, one store for all."""

    def __init__(self, intake, recipients: list[str], envelope_from: str, max_size: int, helo=None):
        self.intake = intake
        self.recipients = recipients
        self.envelope_from = envelope_from
        self.max_size = max_size
        self.helo = helo
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
        return self.intake.receive(data, self.recipients, self.envelope_from, digest, peer=self.helo)

    def connectionLost(self) -> None:
        self.lines = []


class _Accepted:
    """
    A recipient validateTo accepted. Twisted wants a message factory per
    recipient; _ESMTP.do_DATA instead makes one message for them all from
    these addresses, but the object stays a factory to honour IMessageDelivery.
    """

    def __init__(self, intake, address: str, envelope_from: str, max_size: int, helo=None):
        self.intake = intake
        self.address = address
        self.envelope_from = envelope_from
        self.max_size = max_size
        self.helo = helo

    def for_all(self, addresses: list[str]) -> _Message:
        return _Message(self.intake, addresses, self.envelope_from, self.max_size, self.helo)

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

    def validateTo(self, user):
        """A registered user's address: a message factory; otherwise SMTPBadRcpt (raised, or as the Deferred's failure)."""
        address = f"{user.dest.local.decode('utf-8', 'replace')}@{user.dest.domain.decode('utf-8', 'replace')}"
        domain = user.dest.domain.decode("utf-8", "replace").lower()
        if domain != self.adapter.mail_domain:
            raise smtp.SMTPBadRcpt(user.dest, 550, f"5.7.1 relaying denied: only mail for @{self.adapter.mail_domain}"
                                                   " is accepted here")
        address = address.lower()
        return self.adapter.context.registration_by_foreign_id(address).addCallback(self._accepted, user, address)

    def _accepted(self, reg, user, address: str):
        if reg is None:
            raise smtp.SMTPBadRcpt(user.dest, 550, f"5.1.1 <{address}>: no such user here")
        origin = str(user.orig) if user.orig else ""
        helo = tuple(x.decode("ascii", "replace") if isinstance(x, bytes) else (x or "") for x in (user.helo or ()))
        return _Accepted(self.adapter.intake, address, origin, self.adapter.config["max_size"], helo or None)


class _ESMTP(smtp.ESMTP):
    max_size = 0
    delimiter = b"\n"
    MAX_LENGTH = MAX_LINE
    _prev_crlf = True
    _data_timer = None
    _rcpt_errors = 0
    _refuse = None              # set by the factory: (code, text) to say and close at once

    def connectionMade(self):
        if self._refuse is not None:
            code, text = self._refuse
            self.sendCode(code, text)
            self.transport.loseConnection()
            return
        self._requested: set[str] = set()
        super().connectionMade()

    def lineReceived(self, line: bytes):
        crlf = line.endswith(b"\r")
        if crlf:
            line = line[:-1]
        if self.mode == smtp.DATA and line == b"." and not (crlf and self._prev_crlf):
            line = b".."            # a dot next to a bare LF is content (unstuffed to "."), never the end
        self._prev_crlf = crlf
        result = super().lineReceived(line)
        if self.mode != smtp.DATA and self._data_timer is not None:
            self._stop_data_timer()
        return result

    def sendLine(self, line: bytes) -> None:
        """
        Replies end in <CRLF> (RFC 5321 4.2), whatever ``delimiter`` reads:
        LineReceiver would write the bare LF it splits input on. One write per
        line, not Twisted's two-part writeSequence.
        """
        self.transport.write(line + b"\r\n")

    def lineLengthExceeded(self, line):
        self.sendCode(500, f"5.5.2 line longer than {MAX_LINE} octets".encode())
        self.transport.loseConnection()

    def do_MAIL(self, rest: bytes) -> None:
        peer = self._helo[1] if self._helo else None
        if not self.factory.may_send(peer):
            self.sendCode(451, b"4.7.1 too many messages from your address; try again in a minute")
            return
        size = _SIZE_PARAM.search(rest)
        if size and int(size.group(1)) > self.max_size:
            self.sendCode(552, f"5.3.4 message exceeds the maximum size of {self.max_size} bytes".encode())
            return
        self._requested = set()
        super().do_MAIL(rest)

    def do_RSET(self, rest: bytes) -> None:
        self._requested = set()
        super().do_RSET(rest)

    def do_RCPT(self, rest: bytes) -> None:
        m = self.rcpt_re.match(rest)
        if self._from and m:
            address = m.group("path").strip(b"<>").lower()
            if address not in self._requested:
                if len(self._requested) >= self.factory.max_recipients:
                    self.sendCode(452, b"4.5.3 too many recipients for one message")
                    return
                self._requested.add(address)
        super().do_RCPT(rest)

    def _ebToValidate(self, failure):
        super()._ebToValidate(failure)
        self._rcpt_errors += 1
        if self._rcpt_errors >= MAX_RCPT_ERRORS:
            self.sendCode(421, b"4.7.0 too many refused recipients; closing")
            self.transport.loseConnection()

    def _stop_data_timer(self) -> None:
        if self._data_timer is not None and self._data_timer.active():
            self._data_timer.cancel()
        self._data_timer = None

    def _data_expired(self) -> None:
        self._data_timer = None
        log.info("SMTP client {peer} took longer than {s} s over DATA: dropped, nothing stored",
                 peer=self._helo[1] if self._helo else "?", s=self.factory.data_timeout)
        self.sendCode(421, b"4.4.2 DATA took too long; nothing was stored")
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self._stop_data_timer()
        self.factory.connection_closed(self)
        super().connectionLost(reason)

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
        self._requested = set()
        super().do_DATA(rest)
        if self.mode == smtp.DATA:
            self._data_timer = self.factory.clock.callLater(self.factory.data_timeout, self._data_expired)

    def _messageHandled(self, resultList):
        failures = [result for ok, result in resultList if not ok]
        refused = next((f.value for f in failures if f.check(SenderRefused)), None)
        if refused is not None:
            self.sendCode(refused.code, refused.text.encode())
            return
        for failure in failures:
            log.failure("an accepted mail could not be stored", failure)
        if failures:
            self.sendCode(451, b"4.3.0 the message could not be stored; try again later")
        else:
            self.sendCode(250, b"2.0.0 accepted")


class SMTPServerFactory(protocol.ServerFactory):
    def __init__(self, adapter, tls_cert: str, tls_key: str):
        self.adapter = adapter
        config = adapter.config
        self.clock = adapter.context.clock
        self.max_recipients = config["max_recipients"]
        self.max_per_ip = config["max_connections_per_ip"]
        self.per_minute = config["max_messages_per_minute"]
        self.data_timeout = config["data_timeout"]
        self._open: collections.Counter[str] = collections.Counter()
        self._recent: dict[str, collections.deque] = {}
        self.delivery = _Delivery(adapter)
        self.context = None
        if tls_cert and tls_key:
            with open(tls_cert, "rb") as c, open(tls_key, "rb") as k:
                self.context = ssl.PrivateCertificate.loadPEM(c.read() + b"\n" + k.read()).options()
        self.noisy = False

    def may_send(self, peer) -> bool:
        """Whether ``peer`` may start another transaction this minute (a sliding window per IP)."""
        now = self.clock.seconds()
        window = self._recent.setdefault(peer, collections.deque())
        while window and window[0] <= now - 60:
            window.popleft()
        if len(window) >= self.per_minute:
            return False
        window.append(now)
        if len(self._recent) > 10000:       # bounded: forget idle addresses
            for ip in [ip for ip, w in self._recent.items() if not w or w[-1] <= now - 60]:
                del self._recent[ip]
        return True

    def connection_closed(self, p) -> None:
        host = getattr(p, "_peer_ip", None)
        if host is not None:
            self._open[host] -= 1
            if self._open[host] <= 0:
                del self._open[host]

    def buildProtocol(self, addr):
        p = _ESMTP(contextFactory=self.context)
        p.factory = self
        host = getattr(addr, "host", None)
        if host is not None and self._open[host] >= self.max_per_ip:
            p._refuse = (421, b"4.7.0 too many connections from your address; try again later")
        elif host is not None:
            self._open[host] += 1
            p._peer_ip = host
        # smtp.DNSNAME is the fqdn Twisted looked up once at import; socket.getfqdn() here would
        # be a blocking DNS lookup on the reactor for every connection.
        p.host = self.adapter.mail_domain.encode() if self.adapter.mail_domain else smtp.DNSNAME
        p.delivery = self.delivery
        p.max_size = self.adapter.config["max_size"]
        p.noisy = False      # its per-DATA line would name only the first recipient; the intake logs each mail
        return p
