"""
Keeps this process's claims alive: every lease on a queue row held here (queued,
in flight, or written and awaiting the inbound barrier) is renewed well before
it runs out, so another process takes a row over only when this one has died
or stalled, and the fence in the outbox stops a stalled one from sending after.
It also registers the process's instance id (refusing a duplicate) and purges
old foreign-id records kept for deduplication.
"""

from __future__ import annotations

import os
import socket
import time

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger(namespace="gateway.leases")

#: How long foreign message ids are remembered to drop replays (a provider
#: retries webhooks for hours at most; a week is generous).
SEEN_RETENTION = 7 * 86400


class LeaseKeeper(service.Service):
    def __init__(self, registry, clock):
        self.registry = registry
        self.clock = clock
        self._loop: task.LoopingCall | None = None
        self._purged = 0.0

    def start(self) -> defer.Deferred:
        """Register the instance (fails with InstanceConflict), then renew every lease/3 seconds."""
        d = self.registry.start_instance(socket.gethostname(), os.getpid())

        def started(_):
            self._loop = task.LoopingCall(self.renew)
            self._loop.clock = self.clock
            self._loop.start(self.registry.lease / 3, now=True)

        return d.addCallback(started)

    @defer.inlineCallbacks
    def renew(self):
        try:
            yield self.registry.renew()
            now = time.time()
            if now - self._purged > 3600:
                self._purged = now
                yield self.registry.purge_seen(now - SEEN_RETENTION)
        except Exception:
            log.failure("renewing this process's leases failed; rows will be taken over if it goes on")

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()
