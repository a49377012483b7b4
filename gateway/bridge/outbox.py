"""
The durable queue between XMPP and a network, both ways.

Outbound: a message is stored before its adapter is asked to send it and
removed only when the adapter confirms. A temporary failure is retried with
exponential backoff and jitter until the deadline; then, or on a permanent
failure, the sender gets a stanza error. Inbound: a message from the network
is stored before the adapter is told it was accepted, sent on the component
stream when it is up, and held until it reconnects when it is not.

Messages of one conversation are handed to the adapter in the order they
arrived: one at a time, or, for adapters whose network keeps the order of
send() calls (``pipelining``), without waiting for each to finish. After a
temporary failure later messages may overtake the one that waits for its retry.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from twisted.internet import defer, task
from twisted.logger import Logger

from gateway import metrics
from gateway.model import (GatewayError, InboundMessage, OutboundMessage, PermanentFailure, SendResult,
                           TemporaryFailure)
from gateway.registry import QueueItem

log = Logger(namespace="gateway.outbox")


class Outbox:
    def __init__(self, registry, component: str, adapter, output_getter: Callable[[], Any],
                 registration_getter: Callable[[str], defer.Deferred], clock, settings: dict[str, float],
                 on_sent: Callable[[OutboundMessage, SendResult], Any] | None = None):
        self.registry = registry
        self.component = component
        self.adapter = adapter
        self._output = output_getter
        self._registration = registration_getter
        self.clock = clock
        self.retry_initial = settings["retry_initial"]
        self.retry_max = settings["retry_max"]
        self.deadline = settings["deadline"]
        self.poll_interval = settings["poll_interval"]
        self.on_sent = on_sent
        self._chains: dict[tuple, defer.Deferred] = {}
        self._poller: task.LoopingCall | None = None
        self._flushing = False
        #: Inbound rows were left for a flush (stream down, or a flush running).
        self._held = False
        self._latency = metrics.SEND_LATENCY.labels(component)
        self._sent = metrics.MESSAGES.labels(component, "out")
        self._received = metrics.MESSAGES.labels(component, "in")

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        self._poller = task.LoopingCall(self.poll)
        self._poller.clock = self.clock
        self._poller.start(self.poll_interval, now=True).addErrback(
            lambda f: log.failure("outbox poller stopped", f))

    def stop(self) -> None:
        if self._poller and self._poller.running:
            self._poller.stop()

    def _chain(self, key: tuple, work: Callable[[], defer.Deferred]) -> defer.Deferred:
        """Run ``work`` after the previous work of the same conversation finished."""
        prev = self._chains.get(key)
        if prev is None:
            d = defer.maybeDeferred(work)
        else:
            d = defer.Deferred()
            prev.addBoth(lambda _: defer.maybeDeferred(work).chainDeferred(d) and None)
        self._chains[key] = d

        def cleanup(result):
            if self._chains.get(key) is d:
                del self._chains[key]
            return result

        return d.addBoth(cleanup)

    # -- outbound ---------------------------------------------------------

    def submit(self, message: OutboundMessage) -> defer.Deferred:
        """Store ``message``; the Deferred fires once it is durable. Sending goes on after."""
        item = QueueItem(id=message.id, component=self.component, jid=message.user, direction="out",
                         payload=message.to_dict(), attempts=0, deadline=message.created_at + self.deadline,
                         created_at=message.created_at)
        stored = self.registry.enqueue(item)

        def send_now(_):
            if getattr(self.adapter, "pipelining", False):
                # Stored rows commit in arrival order, so calling send now keeps order.
                d = self._attempt(item)
            else:
                d = self._chain(("out", message.user, message.recipient), lambda: self._attempt(item))
            d.addErrback(lambda f: log.failure("outbox attempt failed", f))

        return stored.addCallback(send_now)

    @defer.inlineCallbacks
    def _attempt(self, item: QueueItem):
        message = OutboundMessage.from_dict(item.payload)
        registration = yield self._registration(message.user)
        if registration is None:
            # The user left while the message waited; their data is gone too.
            yield self.registry.finish(item.id)
            return
        try:
            result = yield defer.maybeDeferred(self.adapter.send, message, registration)
        except PermanentFailure as e:
            yield self._give_up(item, message, e)
            return
        except TemporaryFailure as e:
            yield self._retry(item, message, e)
            return
        except GatewayError as e:
            yield self._give_up(item, message, e)
            return
        except Exception as e:  # an adapter bug or an unexpected network error: try again later
            log.failure("adapter {adapter} raised while sending {id}", adapter=self.adapter.name, id=message.id)
            yield self._retry(item, message, TemporaryFailure(f"{type(e).__name__}: {e}"))
            return
        if not isinstance(result, SendResult):
            result = SendResult()
        yield self.registry.finish(item.id)
        self._sent.inc()
        self._latency.observe(max(0.0, time.time() - message.created_at))
        if self.on_sent:
            yield self.on_sent(message, result)

    def _backoff(self, attempts: int) -> float:
        delay = min(self.retry_max, self.retry_initial * (2 ** (attempts - 1)))
        return delay * random.uniform(0.8, 1.2)

    @defer.inlineCallbacks
    def _retry(self, item: QueueItem, message: OutboundMessage, error: TemporaryFailure):
        now = time.time()
        attempts = item.attempts + 1
        if now >= item.deadline:
            text = (f"could not deliver within {self.deadline:g} s"
                    + (f": {error.text}" if error.text else ""))
            yield self._give_up(item, message, TemporaryFailure(text, error.condition))
            return
        next_attempt = min(now + self._backoff(attempts), item.deadline)
        metrics.RETRIES.labels(self.component).inc()
        log.info("send of {id} to {recipient} failed ({error}); retry {attempts} in {delay:.1f} s",
                 id=message.id, recipient=message.recipient, error=error.text or error.condition,
                 attempts=attempts, delay=next_attempt - now)
        yield self.registry.release(item.id, next_attempt, attempts, error.text or error.condition)

    @defer.inlineCallbacks
    def _give_up(self, item: QueueItem, message: OutboundMessage, error: GatewayError):
        log.info("giving up on {id} to {recipient}: {condition} {text}", id=message.id,
                 recipient=message.recipient, condition=error.condition, text=error.text)
        yield self.registry.finish(item.id)
        self._output().send_error(message, error)

    @defer.inlineCallbacks
    def poll(self):
        """Retry what is due, and deliver held inbound messages while the stream is up."""
        try:
            items = yield self.registry.claim(self.component, "out", limit=200)
            for item in items:
                message = item.payload
                self._chain(("out", message["user"], message["recipient"]), lambda i=item: self._attempt(i))
            if self._held and self._output().connected:
                yield self.flush_inbound()
        except Exception:
            log.failure("outbox poll failed")

    # -- inbound ----------------------------------------------------------

    def deliver(self, message: InboundMessage) -> defer.Deferred:
        """Store ``message``; the Deferred fires once it is durable. Delivery goes on after."""
        now = time.time()
        item = QueueItem(id=message.id, component=self.component, jid=message.user, direction="in",
                         payload=message.to_dict(), attempts=0, deadline=now + 10 * 365 * 86400,
                         created_at=now)

        def send_now(_):
            # Stored rows commit in arrival order, so sending now keeps order, unless
            # older held messages are still being flushed: then this one waits its turn.
            if self._flushing:
                self._held = True
                self.registry.release(item.id, time.time(), 0)
            else:
                self._send_inbound(item, message)

        return self.registry.enqueue(item).addCallback(send_now)

    def _send_inbound(self, item: QueueItem, message: InboundMessage) -> defer.Deferred:
        output = self._output()
        if not output.connected:
            # Held: the flush after the stream is back takes it.
            self._held = True
            return self.registry.release(item.id, time.time(), item.attempts)
        output.send_message(message)
        self._received.inc()
        return self.registry.finish(item.id).addErrback(lambda f: log.failure("inbound finish failed", f))

    @defer.inlineCallbacks
    def flush_inbound(self):
        """Send every held inbound message, oldest first (after a reconnect)."""
        if self._flushing:
            return
        self._flushing = True
        self._held = False
        try:
            while self._output().connected:
                items = yield self.registry.claim(self.component, "in", limit=500)
                if not items:
                    break
                for item in items:
                    yield self._send_inbound(item, InboundMessage.from_dict(item.payload))
        finally:
            self._flushing = False
