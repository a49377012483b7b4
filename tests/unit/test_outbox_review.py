"""
Adversarial review of the outbound fast path (_send_at_once / _sent_at_once and the
generator taking over a failed send): each case on the real SQLite registry.
"""
import pytest
import pytest_twisted
from twisted.internet import defer

from gateway.model import (LostOwnership, OutboundMessage, PermanentFailure, Registration, SecretsUndecryptable,
                           SendResult, TemporaryFailure)
from tests.unit.test_outbox_faults import COMP, make, sleep


@pytest_twisted.inlineCallbacks
def test_unreadable_secrets_are_counted_once_per_message():
    """
    The bridge's getter counts (metric, log line) and raises SecretsUndecryptable for a
    user whose secrets no key opens. The fast path asked it once, swallowed the failure,
    and _attempt_once asked again: the metric counted each message twice.
    """
    told = []

    def getter(jid):
        def check(reg):
            told.append(jid)            # Bridge._unreadable: SECRETS_UNREADABLE.inc() and a warning
            raise SecretsUndecryptable()
        return defer.succeed(Registration(COMP, jid)).addCallback(check)

    reg, ob, adapter, out, _ = yield make(registration_getter=getter)
    ob.start()
    yield ob.ready
    m = OutboundMessage(component=COMP, user="u@example.org", recipient="bob", body="hi")
    yield ob.submit(m)
    yield sleep(0.5)
    ob.stop(); reg.close()
    assert adapter.sent == []
    assert [e[0] for e in out.errors] == [m.id]
    assert told == ["u@example.org"], f"counted {len(told)} times for one message"


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("exc", ["lost", "permanent", "temporary", "plain"])
@pytest_twisted.inlineCallbacks
def test_a_failed_fast_send_is_handled_once(kind, exc):
    calls = []
    errors = {"lost": LostOwnership, "permanent": lambda: PermanentFailure("no", "item-not-found"),
              "temporary": lambda: TemporaryFailure("busy"), "plain": lambda: RuntimeError("bug")}

    reg, ob, adapter, out, _ = yield make()

    def send(message, registration):
        calls.append(message.id)
        if len(calls) == 1:
            e = errors[exc]()
            if kind == "sync":
                raise e
            return defer.fail(e)
        return defer.succeed(SendResult())

    adapter.send = send
    sent = []
    ob.on_sent = lambda message, result: sent.append(message.id)
    ob.start()
    yield ob.ready
    m = OutboundMessage(component=COMP, user="u@example.org", recipient="bob", body="hi")
    yield ob.submit(m)
    yield sleep(1.0)
    depth = yield reg.queue_depth(COMP)
    ob.stop(); reg.close()
    if exc == "permanent":
        assert calls == [m.id] and [e[0] for e in out.errors] == [m.id] and sent == []
    elif exc == "lost":
        assert calls == [m.id] and out.errors == [] and sent == []
    else:
        assert calls == [m.id, m.id] and sent == [m.id] and out.errors == []
        assert depth.get("pending", 0) == 0 if isinstance(depth, dict) else True


@pytest.mark.parametrize("answer", ["none", "gateway-error", "plain-failure", "late-none", "late-failure"])
@pytest_twisted.inlineCallbacks
def test_registration_answers(answer):
    from gateway.model import GatewayError
    calls = []

    def getter(jid):
        calls.append(jid)
        if answer == "none":
            return defer.succeed(None)
        if answer == "gateway-error":
            return defer.fail(GatewayError("nope", "forbidden"))
        if answer == "plain-failure":
            if len(calls) <= 2:
                return defer.fail(RuntimeError("db gone"))
            return defer.succeed(Registration(COMP, jid))
        d = defer.Deferred()
        from twisted.internet import reactor
        if answer == "late-none":
            reactor.callLater(0.01, d.callback, None)
        else:
            if len(calls) <= 2:
                reactor.callLater(0.01, d.errback, RuntimeError("db gone"))
            else:
                reactor.callLater(0.01, d.callback, Registration(COMP, jid))
        return d

    reg, ob, adapter, out, _ = yield make(lease=1.0, registration_getter=getter)
    ob.start()
    yield ob.ready
    m = OutboundMessage(component=COMP, user="u@example.org", recipient="bob", body="hi")
    yield ob.submit(m)
    yield sleep(2.5)
    ob.stop(); reg.close()
    if answer in ("none", "late-none"):
        assert adapter.sent == [] and out.errors == []
    elif answer == "gateway-error":
        assert adapter.sent == [] and [e[0] for e in out.errors] == [m.id]
    else:
        assert adapter.sent == [m.id]
