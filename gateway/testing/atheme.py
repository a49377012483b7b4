"""atheme-services (NickServ, SaslServ) linked to a test InspIRCd on loopback."""

from __future__ import annotations

import os
import shutil

from gateway.testing.process import Server, make_dir, read_text

CONFIG = """/* Written by xmpp-gateway's test harness. */
loadmodule "modules/protocol/inspircd";
loadmodule "modules/backend/opensex";
loadmodule "modules/crypto/pbkdf2v2";
loadmodule "modules/nickserv/main";
loadmodule "modules/nickserv/register";
loadmodule "modules/nickserv/identify";
loadmodule "modules/nickserv/help";
loadmodule "modules/nickserv/info";
loadmodule "modules/nickserv/drop";
loadmodule "modules/nickserv/logout";
loadmodule "modules/saslserv/main";
loadmodule "modules/saslserv/plain";

serverinfo {{
	name = "{services}";
	desc = "Atheme IRC Services";
	numeric = "00A";
	recontime = 1;
	netname = "TestNet";
	hidehostsuffix = "users.testnet";
	adminname = "test";
	adminemail = "root@localhost";
	registeremail = "noreply@localhost";
	mta = "/bin/true";
	loglevel = {{ error; info; admin; network; }};
	maxlogins = 1000;
	maxusers = 1000000;
	mdlimit = 30;
	emaillimit = 10;
	emailtime = 300;
	auth = none;
	casemapping = rfc1459;
}};

uplink "{uplink}" {{
	host = "127.0.0.1";
	port = {port};
	password = "{password}";
}};

nickserv {{
	nick = "NickServ";
	user = "NickServ";
	host = "{services}";
	real = "Nickname Services";
	maxnicks = 5;
	expire = 0;
}};

saslserv {{
	nick = "SaslServ";
	user = "SaslServ";
	host = "{services}";
	real = "SASL Authentication Agent";
}};

general {{
	flood_msgs = 0;
	flood_time = 10;
	ratelimit_uses = 0;
	ratelimit_period = 0;
	kline_time = 7;
	commit_interval = 5;
	uplink_sendq_limit = 1048576;
	language = "en";
}};

pbkdf2v2 {{
	rounds = 10000;
}};

/* every command services received, with who sent it: tests read what reached NickServ */
logfile "{dir}/commands.log" {{ commands; register; }};
"""


class Atheme:
    """atheme linked to ``ircd`` (an :class:`~gateway.testing.inspircd.InspIRCd`); ready once synched."""

    def __init__(self, workdir: str, ircd):
        self.dir = make_dir(workdir)
        self.data = make_dir(os.path.join(self.dir, "data"))
        self.ircd = ircd
        self.config_path = os.path.join(self.dir, "atheme.conf")
        with open(self.config_path, "w") as f:
            f.write(CONFIG.format(services=ircd.services, uplink=ircd.name, port=ircd.link_port,
                                  password=ircd.link_password, dir=self.dir))
        self.server: Server | None = None

    def start(self) -> "Atheme":
        binary = shutil.which("atheme-services") or "/usr/bin/atheme-services"
        # -n: foreground, and the log goes to stderr (Server sends it to the log file)
        self.server = Server("atheme", [binary, "-n", "-c", self.config_path, "-D", self.data,
                                        "-l", os.path.join(self.dir, "atheme.log"),
                                        "-p", os.path.join(self.dir, "atheme.pid")],
                             os.path.join(self.dir, "stdout.log"), cwd=self.dir)
        self.server.start()
        try:
            # a wrong link password keeps it running and retrying: a timeout, with the reason in the log
            self.server.wait_log("finished synching with uplink", 15)
        except Exception:
            self.server.stop()
            raise
        return self

    def commands(self) -> str:
        """The command log: one line per command a user sent to services (passwords are not logged)."""
        return read_text(os.path.join(self.dir, "commands.log"))

    def stop(self) -> None:
        if self.server:
            self.server.stop()
