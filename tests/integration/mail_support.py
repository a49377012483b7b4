"""A real SMTP server (aiosmtpd) on loopback as the gateway's smarthost, and swaks as the sending client."""

import subprocess
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult

SMARTHOST_USER, SMARTHOST_PASSWORD = "gateway", "smarthost-password-123"


class Smarthost:
    """Takes mail like a provider's submission server: STARTTLS and AUTH required; refuses nobody@."""

    def __init__(self, port: int, cert: str, key: str):
        import ssl

        self.received: list[dict] = []
        self.lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        self.controller = Controller(self, hostname="127.0.0.1", port=port, tls_context=context,
                                     require_starttls=True, auth_required=True, auth_require_tls=True,
                                     authenticator=self.authenticate, server_hostname="smarthost.test")

    def authenticate(self, server, session, envelope, mechanism, auth_data):
        ok = auth_data.login == SMARTHOST_USER.encode() and auth_data.password == SMARTHOST_PASSWORD.encode()
        return AuthResult(success=ok)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("nobody@"):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in virtual mailbox table"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.received.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos),
                                  "data": envelope.original_content or envelope.content,
                                  "tls": bool(session.ssl), "auth": session.authenticated})
        return "250 2.0.0 Ok: queued"

    def start(self) -> "Smarthost":
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    def wait(self, predicate, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [m for m in self.received if predicate(m)]
            if found:
                return found
            time.sleep(0.05)
        return []


def swaks(port: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.example.net",
                           *args], capture_output=True, text=True, encoding="utf-8", errors="replace", timeout=60)
