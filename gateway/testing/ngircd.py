"""An ngircd on loopback with flood penalties off, for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import shutil

from gateway.testing.process import Server, free_port, make_dir, port_open, wait_for

CONFIG = """# Written by xmpp-gateway's test harness. No trailing comments: ngircd cannot parse them.
[Global]
\tName = irc.test
\tInfo = test ircd
\tAdminInfo1 = test
\tAdminInfo2 = test
\tAdminEMail = root@localhost
\tListen = 127.0.0.1
\tPorts = {port}
\tMotdFile = {dir}/motd
\tServerUID = nobody
\tServerGID = nogroup
[Limits]
\tMaxConnections = {max_connections}
\tMaxConnectionsIP = {max_connections_ip}
\tMaxJoins = 0
\tMaxNickLength = 30
\tMaxPenaltyTime = 0
\tMaxListSize = 0
\tPingTimeout = 300
\tPongTimeout = 60
[Options]
\tDNS = {dns}
\tIdent = {ident}
\tPAM = no
\tOperCanUseMode = yes
\tRequireAuthPing = no
{webirc}[Operator]
\tName = bench
\tPassword = benchpw
{ssl}"""

SSL = """[SSL]
\tCertFile = {cert}
\tKeyFile = {key}
\tDHFile = {dh}
\tPorts = {port}
"""


class Ngircd:
    def __init__(self, workdir: str, tls: bool = False, max_connections: int = 0, max_connections_ip: int = 0,
                 ident: bool = False, webirc_password: str = ""):
        """
        ``max_connections*``: ngircd's own limits (0: none), for tests of a full server. ``ident``:
        ngircd asks each client's port 113 (RFC 1413) who it is. ngircd 26 does so only with ``DNS``
        on too (its resolver child does both), so that turns on reverse DNS (127.0.0.1 is "localhost"
        from /etc/hosts); the port cannot be changed. ``webirc_password``: ngircd accepts WEBIRC
        with it (from any address).
        """
        self.dir = make_dir(workdir)
        self.port = free_port()
        self.tls_port = free_port() if tls else None
        self.config_path = os.path.join(self.dir, "ngircd.conf")
        with open(os.path.join(self.dir, "motd"), "w") as f:
            f.write("test server\n")
        ssl_section = ""
        if tls:
            import subprocess

            from gateway.testing.certs import self_signed

            cert, key = self_signed(os.path.join(self.dir, "certs"), ("localhost", "irc.test"))
            dh = os.path.join(self.dir, "certs", "ffdhe2048.pem")
            subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH", "-pkeyopt", "group:ffdhe2048",
                            "-out", dh], check=True, capture_output=True)
            for path in (cert, key, dh):
                os.chmod(path, 0o644)
            ssl_section = SSL.format(cert=cert, key=key, dh=dh, port=self.tls_port)
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(port=self.port, dir=self.dir, ssl=ssl_section, max_connections=max_connections,
                                  max_connections_ip=max_connections_ip,
                                  dns="yes" if ident else "no", ident="yes" if ident else "no",
                                  webirc=f"\tWebIRCPassword = {webirc_password}\n" if webirc_password else ""))
        self.server: Server | None = None

    def start(self) -> "Ngircd":
        binary = shutil.which("ngircd") or "/usr/sbin/ngircd"
        self.server = Server("ngircd", [binary, "-n", "-f", self.config_path], os.path.join(self.dir, "ngircd.log"))
        self.server.start()
        try:
            wait_for(lambda: port_open(self.port) and (self.tls_port is None or port_open(self.tls_port)), 15,
                     "ngircd", self.server.proc)
        except Exception:
            self.server.stop()
            raise
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    def restart(self) -> None:
        self.stop()
        wait_for(lambda: not port_open(self.port), 10, "ngircd port release")
        self.start()
