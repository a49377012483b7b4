"""Real servers for the integration tests, configured with the snippets operators get in deploy/."""

import os

import pytest

from gateway.testing.ejabberd import Ejabberd
from gateway.testing.prosody import Prosody

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PROSODY_SNIPPET = os.path.join(ROOT, "deploy", "prosody-component.cfg.lua")
EJABBERD_SNIPPET = os.path.join(ROOT, "deploy", "ejabberd-component.yml")

#: One component domain per test that runs its own gateway: Prosody refuses a
#: second connection for a domain, so gateways must not share one.
NAMES = ["flow", "stranger", "restart", "kill", "deadline", "limits", "size", "web", "secret", "logs", "twistd",
         "cli", "sms", "smscap", "smsdown", "smsown", "mail", "maildown", "mailmx", "irc", "ircslow",
         "ircfixed", "health", "reload", "wheel", "systemd", "monitor", "monitorsms", "backup", "backupkey", "status",
         "ircsched", "ircsched2", "ircsched3", "ircsched4", "load", "ircident", "ircwebirc", "ircidle",
         "parity", "parityadmin"]
NAMES += ["ircmod"]
NAMES += ["ircarchive", "ircarchive2"]
NAMES += ["conv", "convmail", "convsms"]
NAMES += ["ircbig", "bigload"]
NAMES += ["ircadv"]
COMPONENTS = {f"{n}.localhost": f"{n}-component-secret" for n in NAMES}


@pytest.fixture(scope="session")
def prosody(workdir):
    server = Prosody(os.path.join(workdir, "prosody"), COMPONENTS, extra_hosts=("stranger.test",),
                     snippet_path=PROSODY_SNIPPET).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ejabberd(workdir):
    server = Ejabberd(os.path.join(workdir, "ejabberd"), COMPONENTS, snippet_path=EJABBERD_SNIPPET,
                      extra_hosts=("stranger.test",)).start()
    yield server
    server.stop()


@pytest.fixture(params=["prosody", "ejabberd"])
def xmpp_server(request):
    return request.getfixturevalue(request.param)
