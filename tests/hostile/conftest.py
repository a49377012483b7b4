"""
The hostile-peer suite: each case attacks the real gateway process (a
subprocess) through the port an attacker would reach: its SMTP listener, its
webhook site, its IRC connections (the test is the IRC server), or an XMPP
client of the session's Prosody.

Property-based cases live in ``test_fuzz_*.py`` (hypothesis): a fixed seed
and a bounded number of examples in the README's test command (profile
``ci``, tests/conftest.py); ``scripts/fuzz-run`` runs them and the unit
properties with many more examples (profile ``long``).
"""

from __future__ import annotations

import os

import pytest

from tests.integration import gateway_fixture
from gateway.testing.prosody import Prosody

#: One component domain per gateway a case starts (Prosody refuses a second
#: connection for a domain). Add names here, never reuse one in two tests that
#: may run while the other's gateway still lives.
NAMES = ["hsmtp", "hsmtp2", "hsmtp3", "hsmtp4", "hirc", "hirc2", "hirc3", "hirc4", "hhook", "hhook2",
         "hxmpp", "hxmpp2", "hsecret", "hsecret2", "hretain", "hretain2", "hmuc", "hmuc2",
         "hadv", "hadv2", "hadv3", "hxmppc"]
COMPONENTS = {f"{n}.localhost": f"{n}-hostile-secret" for n in NAMES}


@pytest.fixture(scope="session")
def hostile_prosody(workdir):
    server = Prosody(os.path.join(workdir, "prosody-hostile"), COMPONENTS).start()
    yield server
    server.stop()


def start_gateway(server, fresh_dir, name: str, **kwargs):
    """The real gateway process for ``name``.localhost (see tests/integration/gateway_fixture.start_gateway)."""
    return gateway_fixture.start_gateway(server, fresh_dir, name, secret=COMPONENTS[f"{name}.localhost"], **kwargs)


def rss_kib(pid: int) -> int:
    """Resident memory of a process, in KiB (VmRSS): the bound a hostile case states."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")
