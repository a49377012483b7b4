"""Start a gateway process for one component domain of the session's servers."""

import os

from tests.integration.conftest import COMPONENTS
from tests.integration.harness import GatewayProcess, free_port, write_config


def start_gateway(server, fresh_dir, name: str, *, options=None, outbox=None, limits=None, xmpp=None,
                  web=False, log_format="text", secret=None, extra_args=(), wait=1, admins=(), adapter="echo",
                  web_port=None, sections=None, allowed_domains=("localhost",)):
    domain = f"{name}.localhost"
    config = os.path.join(fresh_dir, f"{name}.toml")
    web_port = web_port or (free_port() if web else None)
    written = write_config(config, components=[{"domain": domain, "secret": secret or COMPONENTS[domain],
                                                "adapter": adapter, "options": options or {}}],
                           xmpp_port=server.component_port,
                           registry_url=f"sqlite:///{fresh_dir}/{name}.sqlite", outbox=outbox, limits=limits,
                           xmpp=xmpp, web_port=web_port, log_format=log_format, admins=admins,
                           sections=sections, allowed_domains=allowed_domains)
    gateway = GatewayProcess(config, os.path.join(fresh_dir, f"{name}.log"), extra_args)
    gateway.domain = domain
    gateway.web_port = web_port
    gateway.key = written["key"]
    gateway.db = os.path.join(fresh_dir, f"{name}.sqlite")
    return gateway.start(wait_authenticated=wait)


def register_form(fields: dict[str, str]) -> str:
    """A jabber:iq:register query submitting ``fields`` as a data form."""
    values = "".join(f"<field var='{k}'><value>{v}</value></field>" for k, v in fields.items())
    return ("<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
            f"<field var='FORM_TYPE'><value>jabber:iq:register</value></field>{values}</x></query>")


async def registered_client(server, domain, user_prefix, client_cls, fields: dict[str, str] | None = None):
    """A logged-in client whose user is registered with ``domain`` (subscription done)."""
    user = server.register(f"{user_prefix}{os.getpid()}", "pw")
    client = await client_cls(user, "pw").start(server.c2s_port)
    await client.iq(domain, "set", register_form(fields or {"username": user_prefix}))
    await client.next_presence(lambda p: p.get("from") == domain and p.get("type") is None)
    return client
