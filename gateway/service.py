"""
The service tree built from the config: registry, one bridge and one
component stream per configured domain, and the web site.

Start order matters: the registry must be open before a bridge sends or a
stream hands over stanzas, so the components start once it is. A fatal
component error (wrong secret, unknown domain) stops the whole process with
a non-zero status: an operator would rather see it fail than limp.
"""

from __future__ import annotations

import gc
import hashlib

from twisted.application import service, strports
from twisted.internet import defer
from twisted.logger import Logger

from gateway.bridge import Bridge
from gateway.bridge.leases import LeaseKeeper
from gateway.config import Config
from gateway.registry import SQLRegistry
from gateway.registry.retention import Retention
from gateway.web.fetch import Fetcher
from gateway.web.files import FileStore
from gateway.web.site import build_site
from gateway.xmpp.service import build_component, spare_keeper

log = Logger(namespace="gateway.service")

EXIT_FATAL = 2

#: Allocations between collections of the youngest generation, then how many
#: of those per older collection. Every message makes a few hundred short-lived
#: objects (Deferreds, dicts, stanza parts) that reference counting frees; at
#: CPython's default (700, 10, 10) the cycle collector ran every few messages
#: and took about 40 % of the process's CPU on the echo path
#: (tests/benchmarks/core_path.py, docs/performance.md). A collection walks
#: every live young object, and under a burst those are the messages in flight
#: (thousands, a few dozen objects each): at 10,000 the collector still took a
#: fifth of the CPU in a burst, at 50,000 a fifth as many walks of the same
#: backlog. Garbage in cycles still goes, at most 50,000 allocations later
#: (tests/unit/test_gc_tuning.py).
GC_THRESHOLDS = (50_000, 20, 100)


def token_key(secret_key: str) -> bytes:
    """
    The key adapters' keyed hashes use (the IRC ident token): derived from the
    registry's secret_key, so it is as stable as that key and as secret, while
    the key that seals users' secrets never reaches an adapter.
    """
    return hashlib.sha256(b"xmpp-gateway adapter tokens\0" + secret_key.encode("utf-8")).digest()


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    """
    Modules, config, handlers: what start-up made lives as long as the
    process. Moved out of the collector's sight, so a full collection walks
    only what came after.
    """
    gc.collect()
    gc.freeze()


class GatewayService(service.MultiService):
    def __init__(self, config: Config, reactor=None):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.config = config
        self.exit_code = 0
        self.registry = SQLRegistry(config.registry["url"], config.registry["secret_key"],
                                    config.gateway["instance_id"], config.outbox["lease"],
                                    config.registry["old_secret_keys"])
        self.files = FileStore(config.files["directory"], config.files["public_url"], config.files["expiry_days"],
                               reactor)
        attachments = config.attachments
        self.fetcher = Fetcher(reactor, attachments["fetch_max_size"], attachments["fetch_timeout"],
                               attachments["fetch_allow_private"])
        self.leases = LeaseKeeper(self.registry, reactor)
        self.retention = Retention(self.registry, config.retention, reactor)
        self.bridges: list[Bridge] = []
        self.components = []
        #: Spare connections per domain (``xmpp.spare_connection_interval``), for several processes
        #: behind ejabberd's domain_balancing.
        self.spares = []
        self._web = None
        for comp in config.components:
            bridge = Bridge(comp.domain, comp.adapter_class, comp.options, self.registry, reactor,
                            config.outbox, config.limits, files=self.files,
                            token_key=token_key(config.registry["secret_key"]), fetcher=self.fetcher,
                            archive=config.retention.get("room_archive", True))
            self.bridges.append(bridge)
            stream = build_component(comp, config.xmpp, config.gateway, bridge, self.fail, reactor,
                                     attachments=attachments)
            self.components.append(stream)
            keeper = spare_keeper(stream, comp, config.xmpp, config.gateway, bridge, self.fail, reactor)
            if keeper is not None:
                self.spares.append(keeper)
        self.ready = defer.Deferred()

    def startService(self):
        service.Service.startService(self)
        tune_gc()
        d = self.registry.open()
        d.addCallback(lambda _: self.leases.start())
        d.addCallback(self._start_children)
        d.addCallback(self._started)
        d.addCallbacks(self.ready.callback, self._start_failed)

    def _started(self, result):
        freeze_startup_objects()
        return result

    def _start_children(self, _):
        self.files.start()
        self.leases.setServiceParent(self)
        self.retention.setServiceParent(self)
        log.info("registry open ({dialect}); starting {n} component(s)", dialect=self.registry.dialect,
                 n=len(self.components))
        for bridge in self.bridges:
            bridge.setServiceParent(self)
        for stream in self.components:
            stream.setServiceParent(self)
        for keeper in self.spares:
            keeper.setServiceParent(self)
        listen = self.config.web["listen"]
        if listen:
            from gateway.web.status import LOGINS

            # Read on every check: a reload that removes an admin ends their status-page sessions.
            LOGINS.configure(self.config.files["public_url"], lambda: frozenset(self.config.gateway["admins"]))
            self._web = strports.service(listen, build_site(self))
            self._web.setServiceParent(self)
            log.info("web: /healthz and /metrics on {listen}", listen=listen)

    def _start_failed(self, failure):
        log.critical("cannot start: {error}", error=failure.getErrorMessage())
        self.exit_code = EXIT_FATAL
        self._stop_reactor()

    def streams(self) -> list:
        """Every component connection of this process: primaries and spares."""
        found = []
        for stream in self.components:
            group = getattr(stream, "group", None)
            members = list(group.members) if group is not None else [stream]
            found += [s for s in members if s not in found]
        return found

    def fail(self, error) -> None:
        """A component met an error no reconnect can fix: stop with a non-zero status."""
        self.exit_code = EXIT_FATAL
        self._stop_reactor()

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.callLater(0, self.reactor.stop)

    @defer.inlineCallbacks
    def stopService(self):
        others = []
        if self.registry.shared and self.registry.pool is not None:
            try:
                others = [i for i in (yield self.registry.live_instances()) if i != self.registry.instance_id]
            except Exception:
                log.failure("could not tell whether other gateway processes are serving")
        if others:
            log.info("other gateway processes ({others}) still serve; users are not told the gateway is going",
                     others=", ".join(others))
        for bridge in self.bridges:
            try:
                count = bridge.rooms_closing()
                if count:
                    log.info("component {domain}: told {n} room occupant(s) the rooms are going away",
                             domain=bridge.component, n=count)
            except Exception:
                log.failure("telling room occupants of the shutdown failed")
        for stream in self.components:
            if stream.connected and not others:
                try:
                    count = yield stream.presence.announce("unavailable")
                    log.info("component {domain}: told {n} user(s) it is going away", domain=stream.domain,
                             n=count)
                except Exception:
                    log.failure("announcing unavailability failed")
        for keeper in self.spares:
            keeper.stopService()            # no new spares while closing
        yield defer.gatherResults([stream.close() for stream in self.components]
                                  + [keeper.close_all() for keeper in self.spares])
        yield defer.maybeDeferred(super().stopService)
        self.files.stop()
        if self.registry.pool is not None:
            try:
                yield self.registry.stop_instance()
            except Exception:
                log.failure("unregistering this instance failed")
        yield self.registry.close()        # after the writes the bridges asked for while stopping
