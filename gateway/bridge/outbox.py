"""
The durable queue between XMPP and a network, both ways.

Outbound: a message is stored before its adapter is asked to send it and
removed only when the adapter confirms. A temporary failure is retried with
exponential backoff and jitter until the deadline; then, or on a permanent
failure, the sender gets a stanza error.

Inbound: a message from the network is stored before the adapter is told it
was accepted, written on the component stream when it is up, and removed only
once the XMPP server has provably read it: XEP-0114 has no acknowledgements,
so an XEP-0199 ping written after the messages and answered on the same stream
(a server handles one stream in order) is the barrier. A stream that dies
before the answer leaves the rows in the queue, to be written again.

Every row is worked on under a fenced lease (see gateway.registry.sql): an
attempt sends only while this process still owns the row, leases of rows held
here are renewed by the LeaseKeeper, and a row that cannot become a stanza or
a send is parked with its reason instead of blocking the rows behind it.

Messages of one conversation are handed to the adapter in the order they
arrived: one at a time, a message waiting for its retry holding the ones
behind it, or, for adapters whose network keeps the order of send() calls
(``pipelining``), without waiting for each to finish (after a temporary
failure there, later messages may overtake the one that waits for its retry).
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable, Iterable

from twisted.internet import defer, task
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway import metrics
from gateway.model import (GatewayError, InboundMessage, LostOwnership, OutboundMessage, PermanentFailure,
                           SendResult, TemporaryFailure)
from gateway.registry import QueueItem

log = Logger(namespace="gateway.outbox")


class Outbox:
    def __init__(self, registry, component: str, adapter, output_getter: Callable[[], Any],
                 registration_getter: Callable[[str], defer.Deferred], clock, settings: dict[str, float],
                 on_sent: Callable[[OutboundMessage, SendResult], Any] | None = None,
                 known_registration: Callable[[str], Any] | None = None):
        self.registry = registry
        self.component = component
        self.adapter = adapter
        self._output = output_getter
        self._registration = registration_getter
        #: The user's registration when it is at hand without a Deferred (a cache hit of
        #: ``registration_getter`` that needs no check), else None: the hot path asks it first.
        self._known = known_registration
        self.clock = clock
        self.retry_initial = settings["retry_initial"]
        self.retry_max = settings["retry_max"]
        self.deadline = settings["deadline"]
        self.poll_interval = settings["poll_interval"]
        self.on_sent = on_sent
        self._chains: dict[tuple, defer.Deferred] = {}
        self._poller: task.LoopingCall | None = None
        self._flushing = False
        self._looking = False
        #: Rows this process holds a claim on and works on (queued, in flight or
        #: written and awaiting the barrier), by id: a row claimed again after
        #: its lease ran out is adopted, never worked on twice.
        self._active: dict[str, QueueItem] = registry.held_rows(component)
        #: Inbound rows written on the stream and not yet behind an answered barrier.
        self._unconfirmed: list[QueueItem] = []
        self._barrier_running = False
        #: Messages held because a flush was running (the flush looks again for them).
        self._flush_holds = 0
        #: Fires after the first poll took back what an earlier life left, so new
        #: messages queue behind those of the same conversation.
        self.ready = defer.Deferred()
        self._parked = {d: metrics.PARKED.labels(component, d) for d in ("in", "out")}
        self._fenced_count = metrics.FENCED.labels(component)
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
        if not self.ready.called:
            # Rows an earlier life left are not taken back yet: store this one
            # unclaimed, so the first poll takes it with them, in order.
            return self.registry.enqueue(item, claimed=False)
        stored = self.registry.enqueue(item)

        def send_now(_):
            self._active[item.id] = item
            if self.adapter.pipelining:
                # Stored rows commit in arrival order, so calling send now keeps order.
                # (_attempt's own errback catches everything: no layer more here.)
                self._attempt(item)
            else:
                d = self._chain(("out", message.user, message.recipient), lambda: self._attempt(item))
                d.addErrback(lambda f: log.failure("outbox attempt failed", f))

        return stored.addCallback(send_now)

    def _owned(self, item: QueueItem) -> bool | defer.Deferred:
        """
        The fence: whether this process may act on ``item``. Known without the
        database while the lease is far from its end (a bool); near it, a
        Deferred of the conditional renewal.
        """
        if self._active.get(item.id) is not item:
            return False
        if self.registry.owns(item, margin=self.registry.lease / 2):
            return True

        def held(ok):
            if not ok:
                self._active.pop(item.id, None)
                self._fenced_count.inc()
                log.warn("{id}: another process took this message over; not sending it here", id=item.id)
            return ok

        return self._fenced(self.registry.hold, item).addCallback(held)

    def _fenced(self, operation, item: QueueItem, *args) -> defer.Deferred:
        """
        A write conditional on our claim, tried again under the new token if a
        poll adopted the row (re-claimed it for us) while the write was queued.
        """
        token = item.token

        def check(result):
            if result or item.token == token:
                return result
            return self._fenced(operation, item, *args)

        return operation(item, *args).addCallback(check)

    def _attempt(self, item: QueueItem) -> defer.Deferred:
        started = self._send_at_once(item)
        if started is None:
            d = self._attempt_once(None, item)
        elif started[1] is None:
            d = self._attempt_once(None, item, started[0], started[2])
        else:
            message, sending, _ = started
            d = sending.addCallbacks(self._sent_at_once, self._attempt_once, callbackArgs=(item, message),
                                     errbackArgs=(item, message))
        return d.addErrback(self._attempt_failed, item)

    def _send_at_once(self, item: QueueItem) -> tuple[OutboundMessage, defer.Deferred | None, defer.Deferred] | None:
        """
        The common case without a generator (its set-up and context switches
        were a tenth of the hot path): the row is ours far from its lease's
        end and the user's registration is at hand. Then the send starts here
        and its outcome goes to _sent_at_once, or, if it failed, to
        _attempt_once, which takes over from there. A registration not at
        hand (pending, failed, none): no send, and its Deferred goes to
        _attempt_once with the message. Anything else: None, and
        _attempt_once does all of it.
        """
        if self._active.get(item.id) is not item or not self.registry.owns(item, margin=self.registry.lease / 2):
            return None
        try:
            message = OutboundMessage.from_dict(item.payload)
        except Exception:
            return None
        if self._known is not None:
            registration = self._known(message.user)
            if registration is not None:
                return message, defer.maybeDeferred(self.adapter.send, message, registration), None
        found = self._registration(message.user)
        if not found.called or isinstance(found.result, Failure) or found.result is None:
            # Handed to _attempt_once as it is: asking again would repeat the
            # getter's side effects (an unreadable user's metric and warning).
            return message, None, found
        return message, defer.maybeDeferred(self.adapter.send, message, found.result), found

    def _sent_at_once(self, result, item: QueueItem, message: OutboundMessage) -> defer.Deferred:
        """
        The send went through: delete the row (fenced), then on_sent. What
        _finish and _fenced do, in one callback instead of three layers.
        """
        if not isinstance(result, SendResult):
            result = SendResult()
        self._active.pop(item.id, None)
        token = item.token
        d = self.registry.finish(item)
        self._sent.inc()
        self._latency.observe(max(0.0, time.time() - message.created_at))
        return d.addCallback(self._finished_sent, item, token, message, result)

    def _finished_sent(self, count: int, item: QueueItem, token: str | None, message: OutboundMessage,
                       result: SendResult):
        if not count and item.token != token:
            # A poll re-claimed the row for us while the delete waited: again under the new claim.
            d = self._fenced(self.registry.finish, item).addCallback(self._counted, item)
            if self.on_sent:
                d.addCallback(lambda _: self.on_sent(message, result))
            return d
        self._counted(count, item)
        if self.on_sent:
            return self.on_sent(message, result)
        return None

    def _attempt_failed(self, failure, item: QueueItem):
        """
        The database or the adapter failed in a way nothing else caught: give
        the row back (or, if even that fails, let its lease lapse: it is no
        longer renewed once it leaves _active) so it is tried again.
        """
        try:
            log.failure("attempt on {id} failed; it will be tried again", failure, id=item.id)
            if self._active.get(item.id) is item:
                self._active.pop(item.id, None)
                return self.registry.release(item, time.time() + self.retry_initial, item.attempts,
                                             "internal error").addErrback(lambda f: None)
        except Exception:
            log.failure("outbox attempt failed")

    @defer.inlineCallbacks
    def _attempt_once(self, failed: Failure | None, item: QueueItem, message: OutboundMessage | None = None,
                      found: defer.Deferred | None = None):
        """
        Every attempt on ``item`` until it is sent, given up or handed back.
        ``failed``: how a send already started (by _send_at_once) of
        ``message`` failed; that outcome is handled first, as if the send had
        been made here.
        """
        if message is None:
            try:
                message = OutboundMessage.from_dict(item.payload)
            except Exception as e:
                yield self._park(item, f"not a message: {type(e).__name__}: {e}")
                return
        while True:
            if failed is None:
                try:
                    asked, found = found or self._registration(message.user), None
                    registration = yield asked
                except GatewayError as e:      # e.g. the user's secrets cannot be decrypted: they are told
                    yield self._give_up(item, message, e)
                    return
                if registration is None:
                    # The user left while the message waited; their data is gone too.
                    self._active.pop(item.id, None)
                    yield self._fenced(self.registry.finish, item)
                    return
                owned = self._owned(item)
                if not isinstance(owned, bool):
                    owned = yield owned
                if not owned:
                    return
            try:
                if failed is not None:
                    pending, failed = failed, None
                    pending.raiseException()
                result = yield defer.maybeDeferred(self.adapter.send, message, registration)
            except LostOwnership:
                self._active.pop(item.id, None)
                self._fenced_count.inc()
                return
            except PermanentFailure as e:
                yield self._give_up(item, message, e)
                return
            except TemporaryFailure as e:
                if (yield self._retry(item, message, e)):
                    continue
                return
            except GatewayError as e:
                yield self._give_up(item, message, e)
                return
            except Exception as e:  # an adapter bug or an unexpected network error: try again later
                log.failure("adapter {adapter} raised while sending {id}", adapter=self.adapter.name, id=message.id)
                if (yield self._retry(item, message, TemporaryFailure(f"{type(e).__name__}: {e}"))):
                    continue
                return
            break
        yield self._sent_at_once(result, item, message)

    def _backoff(self, attempts: int) -> float:
        delay = min(self.retry_max, self.retry_initial * (2 ** (attempts - 1)))
        return delay * random.uniform(0.8, 1.2)

    @defer.inlineCallbacks
    def _retry(self, item: QueueItem, message: OutboundMessage, error: TemporaryFailure):
        """
        After a temporary failure: give up past the deadline, else wait and
        fire True to try again. A conversation's later messages wait behind this
        one (its chain holds), so a retry never lets them overtake it; for
        pipelining adapters, whose sends do not wait for each other, the row is
        handed back for a later poll instead (fires False).
        """
        now = time.time()
        attempts = item.attempts + 1
        if now >= item.deadline:
            text = (f"could not deliver within {self.deadline:g} s"
                    + (f": {error.text}" if error.text else ""))
            yield self._give_up(item, message, TemporaryFailure(text, error.condition))
            return False
        next_attempt = min(now + self._backoff(attempts), item.deadline)
        metrics.RETRIES.labels(self.component).inc()
        log.info("send of {id} to {recipient} failed ({error}); retry {attempts} in {delay:.1f} s",
                 id=message.id, recipient=message.recipient, error=error.text or error.condition,
                 attempts=attempts, delay=next_attempt - now)
        item.payload = message.to_dict()     # keeps the adapter's progress for the next attempt
        if not self.adapter.pipelining:
            item.attempts = attempts
            yield task.deferLater(self.clock, next_attempt - now, lambda: None)
            return self._active.get(item.id) is item
        self._active.pop(item.id, None)
        yield self._fenced(self.registry.release, item, next_attempt, attempts, error.text or error.condition)
        return False

    @defer.inlineCallbacks
    def _give_up(self, item: QueueItem, message: OutboundMessage, error: GatewayError):
        log.info("giving up on {id} to {recipient}: {condition} {text}", id=message.id,
                 recipient=message.recipient, condition=error.condition, text=error.text)
        if (yield self._finish(item)):
            self._output().send_error(message, error)

    def _finish(self, item: QueueItem) -> defer.Deferred:
        """Delete a row whose work is done; fires False if another process had taken it over meanwhile."""
        self._active.pop(item.id, None)
        return self._fenced(self.registry.finish, item).addCallback(self._counted, item)

    def _finish_all(self, items: list[QueueItem]) -> defer.Deferred:
        """
        _finish for a batch (the barrier's) in one registry call, with one
        Deferred instead of a chain per row. A row fenced out because a poll
        re-claimed it for us meanwhile (its token changed) is finished again
        under the new claim, as _fenced does for one.
        """
        tokens = []
        for item in items:
            self._active.pop(item.id, None)
            tokens.append(item.token)

        def finished(counts):
            for item, token, count in zip(items, tokens, counts):
                if count:
                    continue
                if item.token != token:
                    self._fenced(self.registry.finish, item).addCallback(self._counted, item).addErrback(
                        lambda f: log.failure("inbound finish failed", f))
                else:
                    self._counted(0, item)

        return self.registry.finish_all(items).addCallback(finished)

    def _counted(self, count: int, item: QueueItem) -> bool:
        if not count:
            self._fenced_count.inc()
            log.warn("{id}: finished here after another process had taken it over", id=item.id)
        return bool(count)

    @defer.inlineCallbacks
    def _park(self, item: QueueItem, reason: str):
        """A dead letter: kept for the operator (`xmpp-gateway queue`), out of everyone's way."""
        self._active.pop(item.id, None)
        self._parked[item.direction].inc()
        log.error("{direction} message {id} for {jid} parked: {reason}", direction=item.direction, id=item.id,
                  jid=item.jid, reason=reason)
        yield self._fenced(self.registry.park, item, reason)

    def checkpoint(self, message: OutboundMessage) -> defer.Deferred:
        """Make an adapter's progress on ``message`` durable; fails with LostOwnership if fenced out."""
        item = self._active.get(message.id)
        if item is None:
            return defer.fail(LostOwnership("the message is no longer held by this process"))
        item.payload = message.to_dict()

        def stored(count):
            if not count:
                self._active.pop(item.id, None)
                raise LostOwnership("another process took the message over")

        return self._fenced(self.registry.checkpoint, item).addCallback(stored)

    @defer.inlineCallbacks
    def poll(self):
        """Retry what is due, and deliver held inbound messages while the stream is up."""
        try:
            items = yield self.registry.claim(self.component, "out", limit=200)
            for item in self._adopt(items):
                message = item.payload
                key = ("out", message.get("user"), message.get("recipient"))
                self._chain(key, lambda i=item: self._attempt(i)).addErrback(
                    lambda f: log.failure("outbox attempt failed", f))
            if not self.ready.called:
                self.ready.callback(None)
            if self._output().connected:
                # Any process delivers any due inbound row: held ones, and those a dead process left.
                yield self.flush_inbound(eager=False)
        except Exception:
            log.failure("outbox poll failed")

    def _adopt(self, items: list[QueueItem]) -> list[QueueItem]:
        """
        Rows just claimed that are new to this process. One already held here
        (its lease ran out while it waited, and nobody else took it) keeps its
        place in line under the new claim instead of being worked on twice.
        """
        fresh = []
        for item in items:
            held = self._active.get(item.id)
            if held is not None:
                held.token, held.lease_until = item.token, item.lease_until
            else:
                self._active[item.id] = item
                fresh.append(item)
        return fresh

    # -- inbound ----------------------------------------------------------

    def _inbound_item(self, message: InboundMessage) -> QueueItem:
        now = time.time()
        return QueueItem(id=message.id, component=self.component, jid=message.user, direction="in",
                         payload=message.to_dict(), attempts=0, deadline=now + 10 * 365 * 86400, created_at=now)

    def deliver(self, message: InboundMessage) -> defer.Deferred:
        """
        Store ``message``; the Deferred fires once it is durable (and fires the
        same for a repeat of a ``dedupe_key`` already accepted, which is not
        delivered again). Delivery goes on after.
        """
        if message.dedupe_key:
            return self.deliver_all([message])
        item = self._inbound_item(message)
        return self.registry.enqueue(item).addCallback(lambda _: self._stored_inbound(item, message))

    def deliver_all(self, messages: list[InboundMessage],
                    threads: Iterable[tuple[str, str, str, str, str | None]] = ()) -> defer.Deferred:
        """
        Store several messages in one transaction (all or none), with their
        thread records (SQLRegistry.enqueue_all); fires with which were new
        (not repeats of a ``dedupe_key``). Delivery goes on after.
        """
        items = [self._inbound_item(m) for m in messages]

        def stored(new):
            for item, message, is_new in zip(items, messages, new):
                if is_new:
                    self._stored_inbound(item, message)
                else:
                    log.info("{key}: already accepted; not delivered again", key=message.dedupe_key)
            return new

        return self.registry.enqueue_all(items, [m.dedupe_key for m in messages], threads).addCallback(stored)

    def _stored_inbound(self, item: QueueItem, message: InboundMessage) -> None:
        self._active[item.id] = item
        # Stored rows commit in arrival order, so writing now keeps order, unless
        # older held messages are still being flushed: then this one waits its turn.
        if self._flushing or not self._output().connected:
            self._flush_holds += self._flushing
            self._hold(item)
        else:
            self._write(item, message)

    def _hold(self, item: QueueItem) -> defer.Deferred:
        """Give a row back, due at once in creation order: the next flush (here or elsewhere) writes it."""
        self._active.pop(item.id, None)
        return self._fenced(self.registry.release, item, item.created_at, item.attempts).addErrback(
            lambda f: log.failure("inbound release failed (the row is taken again when its lease lapses)", f))

    def _write(self, item: QueueItem, message: InboundMessage) -> None:
        try:
            self._output().send_message(message)
        except Exception as e:
            self._park(item, f"cannot become a stanza: {type(e).__name__}: {e}").addErrback(
                lambda f: log.failure("parking failed", f))
            return
        self._received.inc()
        self._unconfirmed.append(item)
        if not self._barrier_running:
            self._barrier_running = True
            self.clock.callLater(0, self._barrier)

    @defer.inlineCallbacks
    def _barrier(self):
        """Remove the rows written so far once the server has answered a ping sent after them."""
        try:
            while self._unconfirmed:
                batch, self._unconfirmed = self._unconfirmed, []
                try:
                    yield self._output().barrier()
                except Exception as e:
                    log.info("{n} inbound message(s) not confirmed by the server ({e}); they stay queued",
                             n=len(batch), e=e)
                    for item in batch:
                        if self._active.get(item.id) is item:
                            self._hold(item)
                    continue
                self._finish_all([item for item in batch if self._active.get(item.id) is item]).addErrback(
                    lambda f: log.failure("inbound finish failed (the rows are taken again when their leases lapse)",
                                          f))
        finally:
            self._barrier_running = False

    @defer.inlineCallbacks
    def flush_inbound(self, eager: bool = True):
        """
        Write every due inbound row, oldest first (held ones after a reconnect,
        a dead process's). While a flush runs, new messages queue behind it to
        keep order: from the start after a reconnect (``eager``), or once the
        first claim found rows (the periodic look, which mostly finds none and
        must not slow live traffic down).
        """
        if eager:
            self._flushing = True
        if self._looking:
            return                  # the flush running goes on, now holding new messages behind it
        self._looking = True
        try:
            while self._output().connected:
                # Rows handed back (held while this flush ran) must be visible to the claim,
                # or one could be left for the next poll and overtaken by newer ones.
                holds = self._flush_holds
                yield self.registry.settled()
                items = yield self.registry.claim(self.component, "in", limit=500)
                if not items and holds == self._flush_holds:
                    break
                self._flushing = True
                for item in self._adopt(items):
                    try:
                        message = InboundMessage.from_dict(item.payload)
                    except Exception as e:
                        yield self._park(item, f"not a message: {type(e).__name__}: {e}").addErrback(
                            lambda f: log.failure("parking failed (the row is taken again when its lease lapses)", f))
                        continue
                    if self._output().connected:
                        self._write(item, message)
                    else:
                        self._hold(item)
        finally:
            self._flushing = self._looking = False
