"""
Email both ways: every registered user gets an address at the gateway's mail
domain, contacts are email addresses (``alice\\40example.net@mail.example.org``),
mail threads map to XMPP threads, attachments become files on the user's own
server (XEP-0363) or links to /files/, files the user sends become MIME parts,
and bounces become errors on the message that caused them.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from twisted.internet import defer, endpoints, threads
from twisted.logger import Logger
from zope.interface import implementer

from gateway.adapters.base import AdapterBase, check_daily_limit, utc_day
from gateway.adapters.email import addresses
from gateway.adapters.email.auth import SenderAuth, SenderRefused
from gateway.adapters.email.compose import compose, subject_for
from gateway.adapters.email.parse import parse
from gateway.adapters.email.smtp_in import SMTPServerFactory
from gateway.adapters.email.smtp_out import SMTPOut
from gateway.model import (AddressError, DeliveryReport, Field, InboundMessage, OutboundMessage, PolicyViolation,
                           Registration, RegistrationError, SendResult)
from gateway.interfaces import IHealthReport, IReplies
from gateway.options import Option, endpoint, non_negative, port_number, positive

log = Logger(namespace="gateway.adapters.email")


def _networks(values: list) -> str | None:
    for v in values:
        try:
            ipaddress.ip_network(v, strict=False)
        except ValueError:
            return f"{v!r} is not a network (e.g. 10.0.0.0/8)"
    return None


def _servers(values: list) -> str | None:
    for v in values:
        host, _, port = v.rpartition(":")
        if not host or not port.isdigit():
            return f"{v!r} is not host:port"
    return None


#: Mails up to this size are parsed on the reactor: a few hundred microseconds,
#: less than the two thread hand-offs (and the wait for a free pool thread
#: behind other work) that parsing in a thread costs each small mail.
INLINE_PARSE = 16 * 1024
#: Files one outbound mail carries (XEP-0066 URLs in one message); more are refused.
MAX_ATTACHMENTS = 10
#: Outgoing mails with files being put together at once (each up to ``max_size`` in all).
ASSEMBLING = 2


@defer.inlineCallbacks
def fetch_all(context, user: str, urls: list[str], budget: int):
    """The files at ``urls``, in order, within ``budget`` bytes together (a mail's largest size):
    each is fetched with what the ones before it left, so the sum never passes it."""
    files = []
    for url in urls:
        if budget <= 0:
            raise PolicyViolation("the files are larger together than a mail may be")
        fetched = yield context.fetch(url, user, max_size=budget)
        budget -= len(fetched.data)
        files.append(fetched)
    return files
#: Files of one inbound mail uploaded and linked; the rest are counted in its text. Each is an
#: upload to the user's server (or a file here) while the SMTP client waits.
MAX_INBOUND_ATTACHMENTS = 20


class MailIntake:
    """Everything mail coming in goes through here, from the SMTP server or `xmpp-gateway deliver`."""

    def __init__(self, adapter: "EmailAdapter"):
        self.adapter = adapter
        self.context = adapter.context

    @defer.inlineCallbacks
    def receive(self, data: bytes, recipients: list[str], envelope_from: str,
                digest: str | None = None, peer: tuple[str, str] | None = None) -> defer.Deferred:
        """
        Store one mail for all its recipients, in one transaction: the SMTP
        answer covers the whole message, so a failure must leave nothing
        stored for anyone, or the sender's retry duplicates it for the others.
        ``digest`` names the mail's content: the same mail again (a client that
        lost our 250 and resends) is acknowledged but not delivered twice.
        """
        regs: dict[str, Registration] = {}            # by JID: one copy per user
        for address in dict.fromkeys(recipients):
            reg = yield self.context.registration_by_foreign_id(address)
            if reg is None:
                log.info("mail for {rcpt}, unregistered since it was accepted: dropped", rcpt=address)
            else:
                regs.setdefault(reg.jid, reg)
        if not regs:
            return
        doubt = yield self._authenticate(data, envelope_from, peer)
        if len(data) <= INLINE_PARSE:
            mail = parse(data)
        else:
            mail = yield threads.deferToThread(parse, data)   # large MIME parsing stays off the reactor
        if mail.bounce is not None:
            # A bounce counts only for the message of a user it was mailed to
            # (Bridge.report checks the owner): a forged DSN naming another
            # user's Message-ID changes nothing for them.
            for reg in regs.values():
                yield self._bounce(reg, mail)
            return
        try:
            sender = addresses.normalize(mail.sender or envelope_from)
        except AddressError:
            sender = addresses.normalize(envelope_from) if envelope_from else "unknown@invalid.invalid"
        links: list[str] = []
        try:
            # Stored once per user's server (XEP-0363 upload there, else /files/ here),
            # linked for every recipient on it: they all got the same mail.
            by_domain: dict[str, list[str]] = {}
            messages = []
            thread_records = []
            for reg in regs.values():
                domain = reg.jid.rpartition("@")[2].lower()
                if domain not in by_domain:
                    by_domain[domain] = []
                    for name, content_type, payload in mail.attachments[:MAX_INBOUND_ATTACHMENTS]:
                        url = yield self.context.offer_file(reg.jid, payload, name, content_type)
                        by_domain[domain].append(url)
                        links.append(url)
                thread = yield self._thread(reg, mail)
                if thread and mail.message_id:
                    thread_records.append((reg.jid, thread, mail.message_id, mail.subject))
                text = f"[unverified sender: {doubt}]\n{mail.text or ''}" if doubt else mail.text
                more = len(mail.attachments) - MAX_INBOUND_ATTACHMENTS
                if more > 0:
                    text = (f"{text}\n" if text else "") + (f"[{more} more attachments not passed on: at most "
                                                             f"{MAX_INBOUND_ATTACHMENTS} per mail]")
                messages.append(InboundMessage(
                    component=self.context.component, user=reg.jid, sender=sender, body=text or None,
                    subject=mail.subject or None, thread=thread, attachments=list(by_domain[domain]),
                    foreign_id=mail.message_id, dedupe_key=f"mail:{digest}:{reg.jid}" if digest else None,
                    # The mail answered: a reply (XEP-0461) to it when the gateway remembers it.
                    ref=mail.in_reply_to[-1] if mail.in_reply_to else None))
            # The thread records go in the mail's own transaction: on disk together
            # before the 250, or neither (the sender's retry then finds no stale record).
            stored = yield self.context.deliver_all(messages, thread_records)
            if links and not any(stored or ()):
                # A repeat of a mail already stored: its first copy's links are the ones users have.
                yield self.context.files.discard(links)
        except Exception:
            if links:
                # Nothing links to them now, and every retry would store new copies.
                yield self.context.files.discard(links).addErrback(
                    lambda f: log.failure("removing the attachments of a mail not stored failed", f))
            raise
        log.info("mail {mid} from {sender} stored for {jids}", mid=mail.message_id, sender=sender,
                 jids=", ".join(regs))

    def _authenticate(self, data: bytes, envelope_from: str, peer: tuple[str, str] | None):
        """
        None at once when there is nothing to check (``sender_auth`` off, mail
        from ``xmpp-gateway deliver``); else _check's Deferred.
        """
        checker = self.adapter.sender_auth
        if checker is None or not peer or len(peer) < 2 or not peer[1]:
            return None
        return self._check(checker, data, envelope_from, peer)

    @defer.inlineCallbacks
    def _check(self, checker, data: bytes, envelope_from: str, peer: tuple[str, str]):
        """
        SPF, DKIM and DMARC (gateway/adapters/email/auth.py) for mail from an
        SMTP client: raises SenderRefused when the From domain's DMARC policy
        says reject and ``sender_auth`` is "enforce"; otherwise fires with why
        the user should doubt the sender (shown at the top of the message), or
        None. Mail from ``xmpp-gateway deliver`` (no client address) is left to
        the MTA in front, which saw the client.
        """
        helo, ip = peer[0], peer[1]
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return None
        if any(address in ipaddress.ip_network(n, strict=False) for n in self.adapter.config["trusted_networks"]):
            return None
        verdict = yield threads.deferToThread(checker.check, data, ip, helo, envelope_from)
        if verdict.dmarc == "fail" and verdict.policy == "reject" and self.adapter.config["sender_auth"] == "enforce":
            log.info("mail From {domain} refused: DMARC fail with p=reject (SPF {spf}, DKIM {dkim}) from {ip}",
                     domain=verdict.from_domain, spf=verdict.spf, dkim=",".join(verdict.dkim_domains) or "none",
                     ip=ip)
            raise SenderRefused(550, f"5.7.1 {verdict.from_domain} asks receivers to reject mail that fails "
                                     "DMARC, and this mail does")
        return verdict.problem()

    def _thread(self, reg: Registration, mail):
        """
        The XMPP thread of ``mail`` for one user (a Deferred, or the thread at
        once when nothing is to be asked). The caller records it with the
        message (deliver_all's ``threads``), in one transaction: recorded
        before in a commit of its own, a mail that then failed to be stored
        left a record of a message nobody has (and paid a second fsync);
        recorded after, a failure there would fail a mail already stored.
        """
        known = mail.references + mail.in_reply_to
        if known:
            return self.context.thread_of(reg.jid, known).addCallback(self._thread_or_root, mail)
        return self._thread_or_root(None, mail)

    @staticmethod
    def _thread_or_root(thread, mail):
        if thread is None:
            root = (mail.references or mail.in_reply_to or [mail.message_id or ""])[0]
            thread = root.strip("<>") or None
        return thread

    def _bounce(self, reg: Registration, mail):
        bounce = mail.bounce
        log.info("bounce for {jid}: {mid} {status} {diag}", jid=reg.jid, mid=bounce.original_message_id,
                 status=bounce.status, diag=bounce.diagnostic)
        if not bounce.original_message_id:
            return defer.succeed(None)
        text = f"the mail to {bounce.recipient or 'the recipient'} bounced"
        if bounce.status or bounce.diagnostic:
            text += ": " + " ".join(x for x in (bounce.status, bounce.diagnostic) if x)
        return self.context.report(DeliveryReport(self.context.component, reg.jid, bounce.original_message_id,
                                                  False, "recipient-unavailable", text))


@implementer(IHealthReport, IReplies)
class EmailAdapter(AdapterBase):
    name = "email"
    gateway_type = "smtp"
    display_name = "Email gateway"
    features = frozenset({"subject", "thread", "attachments"})
    address_prompt = "Email address"
    options = [
        Option("mail_domain", str, check=addresses.check_domain, doc="The domain of users' addresses (its MX points at the gateway)."),
        Option("delivery", str, "smarthost", choices=("smarthost", "mx"),
               doc="Send through a smarthost, or straight to each recipient domain's MX hosts."),
        Option("smarthost_host", str, "127.0.0.1", doc="Smarthost address."),
        Option("smarthost_port", int, 587, check=port_number, doc="Smarthost port (587 submission, 25 relay)."),
        Option("smarthost_tls", str, "required", choices=("required", "opportunistic", "off"),
               doc="STARTTLS to the smarthost: required (certificate verified), opportunistic, or off."),
        Option("smarthost_ca", str, "", doc="PEM file of the CA that signed the smarthost's certificate; "
                                            "default: the system's trusted CAs."),
        Option("smarthost_username", str, "", doc="AUTH user name; empty: no AUTH."),
        Option("smarthost_password", str, "", secret=True, doc="AUTH password."),
        Option("mx_port", int, 25, check=port_number, doc="Port of MX hosts (delivery = \"mx\")."),
        Option("dns_servers", list, [], item_type=str, check=_servers,
               doc="`host:port` DNS servers for MX lookups; default: the system's resolver."),
        Option("smtp_listen", str, "tcp:25:interface=0.0.0.0", check=endpoint,
               doc="Twisted endpoint of the gateway's SMTP server for inbound mail; empty: none (use "
                   "`xmpp-gateway deliver` from your MTA instead, which still needs a loopback listener)."),
        Option("tls_cert", str, "", doc="PEM certificate for STARTTLS on the SMTP server."),
        Option("tls_key", str, "", doc="PEM private key for that certificate."),
        Option("max_size", int, 10 * 1024 * 1024, check=positive,
               doc="Largest inbound message in bytes; larger ones get 552 5.3.4."),
        Option("timeout", float, 60.0, check=positive, doc="Seconds an SMTP exchange may take."),
        Option("sender_auth", str, "enforce", choices=("enforce", "mark", "off"),
               doc="Sender authentication of inbound mail (SPF, DKIM, DMARC): `enforce` refuses mail whose From "
                   "domain's DMARC policy is reject and that fails it (550 5.7.1) and marks other failures; "
                   "`mark` only marks (\"[unverified sender: …]\" at the top of the message); `off`."),
        Option("trusted_networks", list, ["127.0.0.0/8", "::1/128"], item_type=str, check=_networks,
               doc="Clients in these networks (your own MTA in front, local tools) are not checked by "
                   "`sender_auth`: the MTA that took the mail from the Internet checked it."),
        Option("max_recipients", int, 100, check=positive,
               doc="Distinct recipients one inbound message may have; more get 452 4.5.3."),
        Option("max_connections_per_ip", int, 10, check=positive,
               doc="SMTP connections one IP address may hold at once; more get 421 4.7.0."),
        Option("max_messages_per_minute", int, 60, check=positive,
               doc="Transactions (MAIL FROM) one IP address may start per minute; more get 451 4.7.1."),
        Option("data_timeout", float, 300.0, check=positive,
               doc="Seconds the whole DATA phase may take (against slow senders); then 421 4.4.2, nothing "
                   "stored."),
        Option("daily_limit", int, 200, check=non_negative,
               doc="Mails one user may send per day (UTC); 0: no limit. Beyond it: policy-violation."),
        Option("contacts_online", bool, True, doc="Show email contacts as available so clients let users write."),
    ]
    registration_fields = [
        Field("alias", "Your address before the @ (default: your XMPP user name)"),
        Field("name", "Your name as recipients see it"),
    ]

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> list[tuple[str, str]]:
        problems = []
        if bool(opts.get("tls_cert")) != bool(opts.get("tls_key")):
            problems.append(("tls_cert", "tls_cert and tls_key go together"))
        if opts.get("smarthost_username") and not opts.get("smarthost_password"):
            problems.append(("smarthost_password", "is required with smarthost_username"))
        return problems

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.mail_domain = options["mail_domain"].lower()
        self.instructions = (f"Choose your address at @{self.mail_domain}; anyone can then mail you there, and "
                             f"you can write to any address as <address with @ written as \\40>@{context.component}.")
        self.contact_presence = "available" if options["contacts_online"] else None
        self.smtp = SMTPOut(options, context.clock)
        self.sender_auth = SenderAuth(options["dns_servers"]) if options["sender_auth"] != "off" else None
        self.intake = MailIntake(self)
        self._assembling = defer.DeferredSemaphore(ASSEMBLING)
        self._port = None
        self._problems: list[str] = []

    @defer.inlineCallbacks
    def startService(self):
        super().startService()
        if self.config["smtp_listen"]:
            endpoint = endpoints.serverFromString(self.context.clock, self.config["smtp_listen"])
            factory = SMTPServerFactory(self, self.config["tls_cert"], self.config["tls_key"])
            try:
                self._port = yield endpoint.listen(factory)
            except Exception as e:
                # Outbound mail still works; /healthz says what does not (IHealthReport).
                self._problems.append(f"SMTP listener {self.config['smtp_listen']}: {e}")
                log.error("cannot receive mail: SMTP listener {listen} failed: {error}",
                          listen=self.config["smtp_listen"], error=e)
                return
            log.info("SMTP server for @{domain} on {listen}", domain=self.mail_domain,
                     listen=self.config["smtp_listen"])

    def problems(self) -> list[str]:
        return list(self._problems)

    def stopService(self):
        super().stopService()
        if self._port is not None:
            return self._port.stopListening()

    # -- registration -------------------------------------------------------

    def normalize_address(self, text: str) -> str:
        return addresses.normalize(text)

    def validate_registration(self, jid: str, values: dict[str, Any], current: Registration | None):
        alias = (values.get("alias") or "").strip().lower()
        if not alias:
            alias = current.foreign_id.rpartition("@")[0] if current else jid.partition("@")[0].lower()
        problem = addresses.check_local(alias)
        if problem:
            raise RegistrationError(problem)
        if alias in addresses.RESERVED:
            raise RegistrationError(f"{alias}@ is kept for the operator; choose another address")
        name = values.get("name")
        settings = {"name": name if name is not None else (current.settings.get("name", "") if current else "")}
        return f"{alias}@{self.mail_domain}", settings, {}

    def registration_values(self, registration: Registration) -> dict[str, Any]:
        return {"alias": registration.foreign_id.rpartition("@")[0], "name": registration.settings.get("name", "")}

    # -- sending ------------------------------------------------------------

    @defer.inlineCallbacks
    def send(self, message: OutboundMessage, registration: Registration):
        if not (message.body or "").strip() and not message.subject and not message.attachments:
            return SendResult(parts=0)
        yield check_daily_limit(self.context, registration.jid, "mail", self.config["daily_limit"], "mails")
        if len(message.attachments) > MAX_ATTACHMENTS:
            raise PolicyViolation(f"at most {MAX_ATTACHMENTS} files go in one mail")
        references, first_subject = [], None
        thread = message.thread
        answered = message.ref if message.reply_to and message.ref and message.ref.startswith("<") else None
        if answered and not thread:
            # A reply (XEP-0461, or a correction or reaction sent as one): in the thread of the mail answered.
            thread = yield self.context.thread_of(registration.jid, [answered])
        if thread:
            known = yield self.context.thread_messages(registration.jid, thread)
            references = [mid for mid, _ in known]
            first_subject = next((s for _, s in known if s), None)
        if answered:
            # In-Reply-To is the last of the references: the mail answered, not the thread's newest.
            references = [mid for mid in references if mid != answered] + [answered]
        subject = subject_for(message, first_subject)
        args = (message, registration.foreign_id, registration.settings.get("name", ""), self.mail_domain,
                references, subject)
        if message.attachments:
            # Mails with files are put together a few at a time, each within max_size in all: what
            # users' files can hold in memory at once is bounded (ASSEMBLING × max_size, and the
            # fetcher's own bound on bodies arriving).
            mid = yield self._assembling.run(self._send_with_files, message, registration, args)
        else:
            data, mid = compose(*args, [])
            yield self.smtp.send(registration.foreign_id, message.recipient, data)
        yield self.context.add_to_counter(registration.jid, "mail", utc_day())
        yield self.context.add_to_thread(registration.jid, thread or mid.strip("<>"), mid, subject)
        return SendResult(foreign_id=mid, delivered=False)

    @defer.inlineCallbacks
    def _send_with_files(self, message: OutboundMessage, registration: Registration, args: tuple):
        # A file the user sent by URL (XEP-0066, an XEP-0363 upload) becomes a real MIME part:
        # fetched within the operator's limits; a refusal fails the message with the reason.
        files = yield fetch_all(self.context, registration.jid, message.attachments[:MAX_ATTACHMENTS],
                                self.config["max_size"])
        if sum(len(f.data) for f in files) > INLINE_PARSE:
            data, mid = yield threads.deferToThread(compose, *args, files)   # base64 of megabytes off the reactor
        else:
            data, mid = compose(*args, files)
        yield self.smtp.send(registration.foreign_id, message.recipient, data)
        return mid
