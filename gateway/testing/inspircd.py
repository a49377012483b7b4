"""An InspIRCd 3 on loopback with the IRCv3 modules and a link block for atheme services."""

from __future__ import annotations

import os
import resource
import shutil
import signal

from gateway.testing.process import Server, free_port, make_dir, port_open, read_text, wait_for

CONFIG = """# Written by xmpp-gateway's test harness.
<server name="{name}" description="test ircd" network="TestNet" id="001">
<admin name="test" nick="test" email="root@localhost">
<bind address="127.0.0.1" port="{port}" type="clients">
<bind address="127.0.0.1" port="{link_port}" type="servers">
<connect name="main" allow="*" timeout="60" pingfreq="5m"
         localmax="100000" globalmax="100000" limit="100000" maxconnwarn="no" maxchans="1000"
         resolvehostnames="no" useident="no" recvq="1M" softsendq="8M" hardsendq="64M"
         threshold="1000000" commandrate="100000000" fakelag="no">
<performance somaxconn="1024" softlimit="10000" clonesonconnect="no" quietbursts="yes">
<files motd="{dir}/motd">
<pid file="{dir}/inspircd.pid">
<log method="file" type="* -USERINPUT -USEROUTPUT" level="default" target="{dir}/ircd.log">
<options prefixquit="Quit: " syntaxhints="no">
<security hideserver="" userstats="Pu" maxtargets="20">
<limits maxnick="30" maxchan="64" maxtopic="307">
<dns timeout="1">
<class name="All" commands="*" privs="*" usermodes="*" chanmodes="*">
<type name="Admin" classes="All">
<oper name="bench" password="benchpw" host="*@*" type="Admin">
<module name="cap">
<module name="ircv3">
<module name="ircv3_accounttag">
<module name="ircv3_batch">
<module name="ircv3_capnotify">
<module name="ircv3_chghost">
<module name="ircv3_ctctags">
<module name="ircv3_echomessage">
<module name="ircv3_invitenotify">
<module name="ircv3_labeledresponse">
<module name="ircv3_msgid">
<module name="ircv3_servertime">
<module name="namesx">
<module name="uhnames">
<module name="setname">
<module name="spanningtree">
<module name="services_account">
<module name="svshold">
<link name="{services}" ipaddr="127.0.0.1" port="{link_port}" allowmask="127.0.0.1/32" timeout="30"
      hidden="no" sendpass="{link_password}" recvpass="{link_password}">
<uline server="{services}" silent="yes">
{sasl}{tls}"""

SASL = """<module name="sasl">
<sasl target="{services}" requiressl="no">
"""

TLS = """<module name="ssl_gnutls">
<sslprofile name="local" provider="gnutls" certfile="{cert}" keyfile="{key}" hash="sha256">
<bind address="127.0.0.1" port="{port}" type="clients" sslprofile="local">
"""


def _no_core():
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class InspIRCd:
    """
    ``sasl``: load m_sasl (offered to clients once services have linked).
    ``tls``: a TLS listener too (then stopped with SIGINT: SIGTERM segfaults with ssl_gnutls).
    """

    def __init__(self, workdir: str, sasl: bool = True, tls: bool = False, name: str = "irc.localhost",
                 services: str = "services.localhost", link_password: str = "linkpw"):
        self.dir = make_dir(workdir)
        self.name, self.services, self.link_password = name, services, link_password
        self.port, self.link_port = free_port(), free_port()
        self.tls_port = free_port() if tls else None
        self.config_path = os.path.join(self.dir, "inspircd.conf")
        with open(os.path.join(self.dir, "motd"), "w") as f:
            f.write("test server\n")
        tls_section = ""
        if tls:
            from gateway.testing.certs import self_signed

            cert, key = self_signed(os.path.join(self.dir, "certs"), ("localhost", name))
            tls_section = TLS.format(cert=cert, key=key, port=self.tls_port)
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(name=name, port=self.port, link_port=self.link_port, dir=self.dir,
                                  services=services, link_password=link_password,
                                  sasl=SASL.format(services=services) if sasl else "", tls=tls_section))
        self.server: Server | None = None

    def start(self) -> "InspIRCd":
        binary = shutil.which("inspircd") or "/usr/sbin/inspircd"
        self.server = Server("inspircd", [binary, "--config", self.config_path, "--nofork", "--runasroot"],
                             os.path.join(self.dir, "stdout.log"),
                             stop_signal=signal.SIGINT if self.tls_port else signal.SIGTERM,
                             cwd=self.dir, preexec_fn=_no_core)
        self.server.start()
        try:
            self.server.wait_log("InspIRCd is now running", 15)
            # it keeps running when a bind fails: the ports are the readiness that matters
            wait_for(lambda: port_open(self.port) and port_open(self.link_port)
                     and (self.tls_port is None or port_open(self.tls_port)), 15, "inspircd", self.server.proc)
        except Exception:
            self.server.stop()
            raise
        return self

    def log(self) -> str:
        return read_text(os.path.join(self.dir, "ircd.log"))

    def stop(self) -> None:
        if self.server:
            self.server.stop()
