"""
Keeps this process's claims alive: every lease on a queue row held here (queued,
in flight, or written and awaiting the inbound barrier) is renewed well before
it runs out, so another process takes a row over only when this one has died
or stalled, and the fence in the outbox stops a stalled one from sending after.
It also registers the process's instance id (refusing a duplicate).
"""

from __future__ import annotations

import os
import socket

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

log = Logger(namespace="gateway.leases")

class LeaseKeeper(service.Service):
    def __init__(self, registry, clock):
        self.registry = registry
        self.clock = clock
        self._loop: task.LoopingCall | None = None

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
        except Exception:
            log.failure("renewing this process's leases failed; rows will be taken over if it goes on")

    def stopService(self):
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return super().stopService()
