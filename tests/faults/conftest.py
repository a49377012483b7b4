"""
Servers for the fault suite: its own Prosody (with offline storage, so a user
who is briefly disconnected by a server restart still gets what the server
accepted for them) and the gateway as a real process.

The quick profile runs in the README's test command; ``scripts/fault-run``
runs the long profile (FAULT_PROFILE=long: more faults per case).
"""

from __future__ import annotations

import os

import pytest

from gateway.testing.prosody import Prosody
from tests.integration.harness import GatewayProcess, free_port, write_config

NAMES = ["fkill", "flease", "fexport", "fpoison", "fstop", "fserverkill", "fbacklog", "fconflict"]
COMPONENTS = {f"{n}.localhost": f"{n}-secret" for n in NAMES}
LONG = os.environ.get("FAULT_PROFILE") == "long"


@pytest.fixture(scope="module")
def prosody(workdir, request):
    """One Prosody per test module: some cases kill or stop it."""
    server = Prosody(os.path.join(workdir, f"prosody-{request.module.__name__.rsplit('.', 1)[-1]}"), COMPONENTS,
                     modules=("offline",)).start()
    yield server
    try:
        server.resume()
    except Exception:
        pass
    server.stop()


def start_gateway(server, fresh_dir, name: str, *, options=None, outbox=None, xmpp=None, web=False,
                  registry_url=None, instance_id="test", wait=1, adapter="echo") -> GatewayProcess:
    domain = f"{name}.localhost"
    config = os.path.join(fresh_dir, f"{name}.toml")
    web_port = free_port() if web else None
    written = write_config(config, components=[{"domain": domain, "secret": COMPONENTS[domain], "adapter": adapter,
                                                "options": options or {}}],
                           xmpp_port=server.component_port,
                           registry_url=registry_url or f"sqlite:///{fresh_dir}/{name}.sqlite", outbox=outbox,
                           xmpp=xmpp, web_port=web_port, limits={"rate": 1000.0, "burst": 10000})
    if instance_id != "test":
        text = open(config).read().replace('instance_id = "test"', f'instance_id = "{instance_id}"')
        open(config, "w").write(text)
    gateway = GatewayProcess(config, os.path.join(fresh_dir, f"{name}.log"))
    gateway.domain = domain
    gateway.web_port = web_port
    gateway.key = written["key"]
    gateway.db = os.path.join(fresh_dir, f"{name}.sqlite")
    return gateway.start(wait_authenticated=wait)


@pytest.fixture
def balanced_ejabberd(workdir, request):
    """
    Starts ejabberds whose given component domains use ``domain_balancing``
    (``bare_source``, ``component_number`` N), each such domain on its own
    listener; all are stopped after the test.
    """
    from gateway.testing.ejabberd import Ejabberd

    started = []
    name = "".join(c if c.isalnum() else "-" for c in request.node.name)

    def start(components: dict[str, str], balancing: dict[str, int]) -> Ejabberd:
        server = Ejabberd(os.path.join(workdir, f"ejabberd-{name}-{len(started)}"), components,
                          balancing=balancing).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
