"""
The systemd unit as shipped: sd_notify from the real gateway, the unit checked by
systemd-analyze, and TLS under the memory restriction the unit asks for.

There is no systemd PID 1 here, so the test plays systemd's part: it binds the
notify socket and reads what the gateway says on it; the sandbox's
MemoryDenyWriteExecute is applied with the kernel's own equivalent,
prctl(PR_SET_MDWE), which is what systemd uses where the kernel has it.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from tests.conftest import ROOT
from tests.integration.conftest import COMPONENTS
from tests.integration.harness import GatewayProcess, write_config

UNIT = os.path.join(ROOT, "deploy", "xmpp-gateway.service")
DROP_IN = os.path.join(ROOT, "deploy", "xmpp-gateway.service.d", "smtp-port-25.conf")


class NotifySocket:
    """systemd's end of $NOTIFY_SOCKET: every datagram the service sent, parsed."""

    def __init__(self, path: str):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def read(self, until, timeout: float = 30.0, what: str = "") -> dict[str, str]:
        """Read until a message matches ``until``; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            message = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(message)
            if until(message):
                return message
        raise AssertionError(f"no {what or 'matching message'} on the notify socket; got {self.messages[-10:]}")

    def close(self) -> None:
        self.sock.close()


def test_the_gateway_speaks_sd_notify_ready_watchdog_reload_and_stopping(prosody, fresh_dir):
    config = os.path.join(fresh_dir, "systemd.toml")
    write_config(config, components=[{"domain": "systemd.localhost", "secret": COMPONENTS["systemd.localhost"],
                                      "adapter": "echo"}], xmpp_port=prosody.component_port,
                 registry_url=f"sqlite:///{fresh_dir}/systemd.sqlite")
    notify = NotifySocket(os.path.join(fresh_dir, "notify"))
    gateway = GatewayProcess(config, os.path.join(fresh_dir, "systemd.log"))
    gateway.env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "400000"}
    try:
        gateway.start()
        ready = notify.read(lambda m: m.get("READY") == "1", what="READY=1")
        assert ready["MAINPID"] == str(gateway.proc.pid)
        assert re.match(r"\d+ of 1 component\(s\) connected", ready["STATUS"])
        # Keep-alives every WATCHDOG_USEC/2 = 0.2 s: at least 5 more within a generous window.
        start = len([m for m in notify.messages if m.get("WATCHDOG") == "1"])
        notify.read(lambda m: len([x for x in notify.messages if x.get("WATCHDOG") == "1"]) >= start + 5,
                    what="five keep-alives")
        status = notify.read(lambda m: m.get("STATUS", "").startswith("1 of 1"), what="STATUS 1 of 1 connected")
        assert "READY" not in status or status["READY"] == "1"

        # systemctl reload: RELOADING=1 with its timestamp, then READY=1 again.
        gateway.proc.send_signal(signal.SIGHUP)
        reloading = notify.read(lambda m: m.get("RELOADING") == "1", what="RELOADING=1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        again = notify.read(lambda m: m.get("READY") == "1", what="READY=1 after the reload")
        assert "refused" not in again["STATUS"]

        # A broken config: refused, still READY, still alive and keeping the watchdog fed.
        good = open(config).read()
        with open(config, "w") as f:
            f.write(good.replace("[outbox]", "[outbox]\nnot_an_option = 1"))
        gateway.proc.send_signal(signal.SIGHUP)
        notify.read(lambda m: m.get("RELOADING") == "1", what="RELOADING=1 (broken config)")
        refused = notify.read(lambda m: m.get("READY") == "1", what="READY=1 after a refused reload")
        assert "refused" in refused["STATUS"]
        count = len(notify.messages)
        notify.read(lambda m: m.get("WATCHDOG") == "1" and len(notify.messages) > count + 2, what="keep-alives")
        assert gateway.proc.poll() is None

        gateway.proc.send_signal(signal.SIGTERM)
        notify.read(lambda m: m.get("STOPPING") == "1", what="STOPPING=1")
        assert gateway.proc.wait(20) == 0
    finally:
        gateway.stop()
        notify.close()


def test_an_abstract_notify_socket_is_reached():
    """NOTIFY_SOCKET="@name" is the abstract namespace, as systemd hands it out for user services."""
    from gateway.systemd import Notifier

    name = f"xmpp-gateway-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier.from_environ(None, {"NOTIFY_SOCKET": "@" + name, "WATCHDOG_USEC": "1000000",
                                                "WATCHDOG_PID": "1"})
        assert notifier.watchdog_usec == 0              # the watchdog was meant for another process
        assert notifier.send(status="hello")
        assert sock.recv(100) == b"STATUS=hello"
        assert Notifier.from_environ(None, {}) is None
    finally:
        sock.close()


def _unit_for_this_machine(directory: str) -> str:
    """The shipped unit with ExecStart pointing at this venv's command, which systemd-analyze checks exists."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "xmpp-gateway.service")
    binary = os.path.join(os.path.dirname(sys.executable), "xmpp-gateway")
    with open(UNIT) as f:
        text = f.read().replace("/opt/xmpp-gateway/bin/xmpp-gateway", binary)
    with open(path, "w") as f:
        f.write(text)
    return path


def test_systemd_analyze_verifies_the_unit_and_rates_it_well_sandboxed(tmp_path):
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing (scripts/install.sh installs systemd)"
    unit = _unit_for_this_machine(str(tmp_path))
    verified = subprocess.run([analyze, "verify", "--man=no", unit], capture_output=True, text=True, cwd=tmp_path)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr
    security = subprocess.run([analyze, "security", "--offline=yes", "--threshold=20", unit],
                              capture_output=True, text=True, cwd=tmp_path)
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    exposure = float(re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout).group(1))
    assert exposure <= 2.0, security.stdout[-3000:]
    text = open(UNIT).read()
    for line in ("Type=notify", "WatchdogSec=", "NotifyAccess=main", "ExecReload=/bin/kill -HUP $MAINPID"):
        assert line in text, line
    drop_in = open(DROP_IN).read()
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in drop_in
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in drop_in


#: A child that applies what the unit's [Service] asks of memory and privileges, then makes a TLS
#: connection with Twisted's TLS (pyOpenSSL), the stack every TLS connection of the gateway uses.
TLS_CHILD = textwrap.dedent("""
    import ctypes, sys
    libc = ctypes.CDLL(None, use_errno=True)
    unit = open(sys.argv[1]).read()
    if "\\nMemoryDenyWriteExecute=yes" in unit:
        assert libc.prctl(65, 1, 0, 0, 0) == 0, "PR_SET_MDWE"            # PR_MDWE_REFUSE_EXEC_GAIN
    if "\\nNoNewPrivileges=yes" in unit:
        assert libc.prctl(38, 1, 0, 0, 0) == 0, "PR_SET_NO_NEW_PRIVS"
    from twisted.internet import defer, protocol, reactor, ssl, task
    from twisted.logger import globalLogBeginner, textFileLogObserver
    waiting = []

    def stop_on_memory_error(event):
        # Under MemoryDenyWriteExecute pyOpenSSL's callbacks cannot be made: the failure is logged
        # at once, and the connection would only end at the timeout below. End it now.
        failure = event.get("log_failure") or event.get("failure")        # new and legacy (log.err) events
        if failure is not None and failure.check(MemoryError) and waiting and not waiting[0].called:
            reactor.callLater(0, lambda: waiting[0].called or waiting[0].errback(failure))

    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr), stop_on_memory_error],
                                     redirectStandardIO=False)
    port = int(sys.argv[2])
    ca = ssl.Certificate.loadPEM(open(sys.argv[3]).read())
    result = {}

    class Client(protocol.Protocol):
        def connectionMade(self):
            self.transport.write(b"ping\\n")
        def dataReceived(self, data):
            result["answer"] = data
            self.transport.loseConnection()

    @defer.inlineCallbacks
    def main(reactor):
        done = defer.Deferred()
        waiting.append(done)
        factory = protocol.ClientFactory.forProtocol(Client)
        factory.clientConnectionLost = lambda c, r: done.callback(None)
        factory.clientConnectionFailed = lambda c, r: done.errback(r)
        reactor.connectSSL("127.0.0.1", port, factory, ssl.optionsForClientTLS("localhost", trustRoot=ca))
        yield done.addTimeout(20, reactor)
        print("answer", result.get("answer"))

    task.react(main)
""")


@pytest.mark.parametrize("restriction", ["shipped", "MemoryDenyWriteExecute=yes"])
def test_tls_works_under_the_units_restrictions(tmp_path, restriction):
    if restriction == "shipped":
        unit = UNIT
    else:                                   # the unit as it was: shows the test can fail
        unit = str(tmp_path / "old.service")
        with open(UNIT) as f, open(unit, "w") as out:
            out.write(f.read().replace("[Service]\n", "[Service]\nMemoryDenyWriteExecute=yes\n"))
    import ssl
    import threading

    from gateway.testing.certs import self_signed

    cert, key = self_signed(str(tmp_path))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(60)
    port = listener.getsockname()[1]

    def serve():
        try:
            conn, _ = listener.accept()
            with context.wrap_socket(conn, server_side=True) as tls:
                tls.recv(100)
                tls.sendall(b"pong\n")
        except OSError:
            pass                            # the restricted child never finished its handshake

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        child = subprocess.run([sys.executable, "-c", TLS_CHILD, unit, str(port), cert], capture_output=True,
                               text=True, timeout=60)
    finally:
        listener.close()
    if restriction == "shipped":
        assert child.returncode == 0 and "answer b'pong\\n'" in child.stdout, child.stdout + child.stderr
    else:
        assert child.returncode != 0 and "write+execute memory" in child.stdout + child.stderr
