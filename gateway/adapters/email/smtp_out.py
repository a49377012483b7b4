"""
Sending mail with twisted.mail's ESMTP client: to a smarthost (STARTTLS required
by default, AUTH when configured) or straight to the recipient domain's MX hosts.
SMTP answers become the outbox's verdicts: 4xx and connection trouble are
temporary (retried), 5xx is final and reaches the sender with the server's text.
"""

from __future__ import annotations

import io

from twisted.internet import defer, ssl
from twisted.logger import Logger
from twisted.mail import smtp
from twisted.names import client as dns_client
from twisted.names import error as dns_error

from gateway.model import GatewayError, PermanentFailure, TemporaryFailure

log = Logger(namespace="gateway.adapters.email.smtp")


def _reply_text(exc: smtp.SMTPClientError) -> tuple[int, str]:
    """The server's own code and words: for a refused recipient they sit in ``addresses``."""
    code, resp = exc.code, exc.resp
    for _, acode, aresp in exc.addresses or ():
        if acode >= 400:
            code, resp = acode, aresp
    text = resp.decode("utf-8", "replace") if isinstance(resp, bytes) else str(resp)
    return code, text.strip()


def verdict(failure) -> Exception:
    """What an SMTP failure means for the outbox."""
    exc = failure.value
    if isinstance(exc, GatewayError):
        return exc                       # already judged (e.g. a domain that does not exist)
    if isinstance(exc, smtp.SMTPClientError) and not isinstance(exc, (smtp.SMTPConnectError,
                                                                      smtp.SMTPTimeoutError)):
        code, text = _reply_text(exc)
        if 400 <= code < 500:
            return TemporaryFailure(f"the mail server answered {code} {text}")
        if code >= 500:
            return PermanentFailure(f"the mail server refused the message: {code} {text}", "not-acceptable")
    return TemporaryFailure(f"cannot reach the mail server: {failure.getErrorMessage()}")


class SMTPOut:
    def __init__(self, options: dict, reactor):
        self.o = options
        self.reactor = reactor
        self.helo = options["mail_domain"]
        resolvers = []
        for server in options["dns_servers"]:
            host, _, port = server.rpartition(":")
            resolvers.append((host, int(port)))
        self.resolver = dns_client.createResolver(servers=resolvers) if resolvers else None
        # read once: not a file read on the reactor for every message
        self.smarthost_ca = None
        if options["smarthost_ca"]:
            with open(options["smarthost_ca"], "rb") as f:
                self.smarthost_ca = ssl.Certificate.loadPEM(f.read())

    def _send_to(self, host: str, port: int, sender: str, recipient: str, data: bytes, *, tls: str,
                 ca, username: str, password: str) -> defer.Deferred:
        result = defer.Deferred()
        if tls == "off":
            context = None
        elif ca is not None:
            context = ssl.optionsForClientTLS(host, trustRoot=ca)
        elif tls == "required":
            context = ssl.optionsForClientTLS(host)
        else:
            context = ssl.CertificateOptions()     # opportunistic: encrypt if offered, verify nothing
        factory = smtp.ESMTPSenderFactory(username.encode() if username else None, password.encode() if password else None,
                                 sender, [recipient], io.BytesIO(data), result, retries=0,
                                 timeout=self.o["timeout"], contextFactory=context, heloFallback=tls != "required",
                                 requireAuthentication=bool(username), requireTransportSecurity=tls == "required",
                                 hostname=self.helo)
        factory.domain = self.helo.encode()
        self.reactor.connectTCP(host, port, factory, timeout=self.o["timeout"])
        return result

    def send(self, sender: str, recipient: str, data: bytes) -> defer.Deferred:
        if self.o["delivery"] == "mx":
            d = self._send_mx(sender, recipient, data)
        else:
            d = self._send_to(self.o["smarthost_host"], self.o["smarthost_port"], sender, recipient, data,
                              tls=self.o["smarthost_tls"], ca=self.smarthost_ca,
                              username=self.o["smarthost_username"], password=self.o["smarthost_password"])

        def failed(failure):
            raise verdict(failure)

        return d.addErrback(failed)

    @defer.inlineCallbacks
    def _send_mx(self, sender: str, recipient: str, data: bytes):
        domain = recipient.rpartition("@")[2]
        resolver = self.resolver or dns_client
        try:
            answers, _, _ = yield resolver.lookupMailExchange(domain)
            hosts = sorted((a.payload.preference, str(a.payload.name)) for a in answers
                           if a.type == 15 and str(a.payload.name) not in ("", "."))
        except dns_error.DomainError:       # NXDOMAIN: the domain does not exist
            raise PermanentFailure(f"{domain} does not exist", "remote-server-not-found")
        except Exception:
            hosts = []
        if not hosts:
            hosts = [(0, domain)]     # RFC 5321 §5.1: no MX, the domain itself
        last = None
        for _, host in hosts:
            try:
                address = yield (self.resolver.getHostByName(host) if self.resolver else defer.succeed(host))
                result = yield self._send_to(address, self.o["mx_port"], sender, recipient, data,
                                             tls="opportunistic", ca=None, username="", password="")
                return result
            except smtp.SMTPClientError as e:
                if not isinstance(e, (smtp.SMTPConnectError, smtp.SMTPTimeoutError)) and e.code >= 500:
                    raise
                last = e
            except Exception as e:
                last = e
        raise last if last else TemporaryFailure(f"no mail server for {domain} answered")
