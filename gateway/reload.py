"""
SIGHUP (``systemctl reload``): re-read the config file and apply what can
change safely while users are connected; everything else waits for a
restart, and a config with any problem is refused whole (logged with its
lines) while the gateway goes on as it was.

Applied at once: ``log.level``, ``limits.*`` (new token buckets: users start
with a full burst), ``gateway.allowed_domains`` and ``gateway.admins`` (on
every component connection, spares included). Anything else that changed is
named in the log as needing a restart: components and their adapter options,
secrets and keys, the XMPP server, registry, outbox, web, files and retention.
"""

from __future__ import annotations

from twisted.logger import Logger

from gateway import logs
from gateway.config import ConfigError, load

log = Logger(namespace="gateway.reload")

RESTART_SECTIONS = ("xmpp", "registry", "outbox", "web", "files", "retention", "attachments")

#: ``"reload"``: the running process's reload, as SIGHUP does it (set where SIGHUP is
#: wired, by ``xmpp-gateway run``); the admins' ad-hoc command calls it. Returns
#: whether the file was applied.
HOOKS: dict = {}


def _component_view(config) -> list[tuple]:
    return [(c.domain, c.secret, c.adapter, c.host, c.port, sorted(c.options.items(), key=lambda kv: kv[0]).__repr__(),
             c.roster, c.roster_group)
            for c in config.components]


def reload(gateway, path: str) -> bool:
    """Apply ``path`` to the running ``gateway`` (a GatewayService); False when the file was refused."""
    try:
        new = load(path)
    except ConfigError as e:
        log.error("config not reloaded, the gateway goes on as it was: {problems}", problems=str(e))
        return False
    except OSError as e:
        log.error("config not reloaded: cannot read {path}: {error}", path=path, error=e.strerror)
        return False
    old = gateway.config
    restart = [name for name in RESTART_SECTIONS if getattr(old, name) != getattr(new, name)]
    if old.log["format"] != new.log["format"]:
        restart.append("log.format")
    if old.gateway["instance_id"] != new.gateway["instance_id"]:
        restart.append("gateway.instance_id")
    if _component_view(old) != _component_view(new):
        restart.append("components")
    if set(old.secrets()) != set(new.secrets()):
        restart.append("secrets")

    logs.set_level(new.log["level"])
    old.log["level"] = new.log["level"]
    # In place: spare connections made later read the same dict.
    old.gateway["allowed_domains"] = list(new.gateway["allowed_domains"])
    old.gateway["admins"] = list(new.gateway["admins"])
    old.limits.update(new.limits)
    for bridge in gateway.bridges:
        bridge.set_limits(new.limits)
    for stream in gateway.streams():
        stream.set_allowed_domains(new.gateway["allowed_domains"])
        for handler in stream:
            setter = getattr(type(handler), "set_admins", None)
            if setter is not None:
                handler.set_admins(new.gateway["admins"])
    log.info("config reloaded: log level, limits, allowed domains and admins applied{rest}",
             rest=f"; needs a restart to apply: {', '.join(restart)}" if restart else "")
    return True
