"""One process, several components: each its own stream; presence towards users at stop and start."""

import os

from tests.integration.conftest import COMPONENTS
from tests.integration.harness import Client, GatewayProcess, body, run_then_stop, write_config

DOMAINS = ["cli.localhost", "logs.localhost"]


async def every_domain(client, ptype):
    """A presence of ``ptype`` from each component, in whatever order they come."""
    waiting = set(DOMAINS)
    while waiting:
        p = await client.next_presence(lambda p: p.get("from") in waiting and p.get("type") == ptype)
        waiting.discard(p.get("from"))


def test_two_components_in_one_process_and_presence_at_stop_and_start(prosody, fresh_dir):
    config = os.path.join(fresh_dir, "two.toml")
    write_config(config, components=[{"domain": d, "secret": COMPONENTS[d], "adapter": "echo"} for d in DOMAINS],
                 xmpp_port=prosody.component_port, registry_url=f"sqlite:///{fresh_dir}/two.sqlite")
    gateway = GatewayProcess(config, os.path.join(fresh_dir, "two.log")).start(wait_authenticated=2)
    user = prosody.register(f"tess{os.getpid()}", "pw")

    def from_domain(domain, ptype):
        return lambda p: p.get("from") == domain and p.get("type") == ptype

    async def scenario():
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            for domain in DOMAINS:
                await client.iq(domain, "set", "<query xmlns='jabber:iq:register'><username>tess</username></query>")
                await client.next_presence(from_domain(domain, None))
                client.send_chat(f"echo@{domain}", f"via {domain}")
                echo = await client.next_message(lambda m: body(m) == f"via {domain}")
                assert echo.get("from").split("/")[0] == f"echo@{domain}"

            assert gateway.stop() == 0                     # a clean stop says goodbye on every component
            await every_domain(client, "unavailable")

            gateway.start(wait_authenticated=2)           # and hello again at start
            await every_domain(client, None)
        finally:
            await client.stop()

    run_then_stop(gateway, scenario())
