"""Prometheus metrics, in the process's own registry (served at /metrics)."""

import platform
import threading

from prometheus_client import (CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector,
                               ProcessCollector)

from prometheus_client import values as _prom_values

from gateway import __version__

REGISTRY = CollectorRegistry(auto_describe=True)
# process_* (CPU, memory, open fds, start time) and python_info, as every Prometheus exporter has.
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

BUILD_INFO = Gauge("xmpp_gateway_build_info", "Always 1; the labels say which gateway is running.",
                   ["version", "python", "twisted"], registry=REGISTRY)


def _twisted_version() -> str:
    import twisted

    return twisted.__version__


BUILD_INFO.labels(__version__, platform.python_version(), _twisted_version()).set(1)

STANZAS = Counter("xmpp_gateway_stanzas", "Stanzas through the component streams.",
                  ["component", "direction", "type"], registry=REGISTRY)
MESSAGES = Counter("xmpp_gateway_messages", "Messages carried, by direction (out: to the network).",
                   ["component", "direction"], registry=REGISTRY)
ERRORS = Counter("xmpp_gateway_errors", "Stanza errors sent to users, by condition.",
                 ["component", "condition"], registry=REGISTRY)
REGISTRATIONS = Gauge("xmpp_gateway_registrations", "Registered users.", ["component"], registry=REGISTRY)
QUEUE_DEPTH = Gauge("xmpp_gateway_queue_depth", "Messages waiting (out: outbox, in: held for XMPP).",
                    ["component", "direction"], registry=REGISTRY)
QUEUE_OLDEST = Gauge("xmpp_gateway_queue_oldest_seconds",
                     "Age of the oldest row waiting (out: outbox, in: held for XMPP, parked); 0 when none.",
                     ["component", "direction"], registry=REGISTRY)
STREAM_UP = Gauge("xmpp_gateway_stream_up", "1 while the component stream is authenticated.",
                  ["component"], registry=REGISTRY)
SEND_LATENCY = Histogram("xmpp_gateway_send_latency_seconds",
                         "From accepting an XMPP message to the network confirming it.", ["component"],
                         buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30,
                                  60, 300, 3600), registry=REGISTRY)
RETRIES = Counter("xmpp_gateway_retries", "Temporary send failures that were retried.", ["component"],
                  registry=REGISTRY)
PARKED = Counter("xmpp_gateway_parked", "Queue rows set aside as dead letters (see `xmpp-gateway queue`).",
                 ["component", "direction"], registry=REGISTRY)
FENCED = Counter("xmpp_gateway_fenced", "Attempts stopped because another process had taken the message over.",
                 ["component"], registry=REGISTRY)
ROOM_EVENTS_DROPPED = Counter("xmpp_gateway_room_events_dropped",
                              "Room events dropped because too many piled up while the stream was down, "
                              "or over the paced room queue's bound (room_queue_limit).",
                              ["component"], registry=REGISTRY)
ROOM_QUEUE = Gauge("xmpp_gateway_room_queue", "Room events waiting for the pacing budget (room_pacing_bytes).",
                   ["component"], registry=REGISTRY)
SECRETS_UNREADABLE = Counter("xmpp_gateway_secrets_undecryptable",
                             "Actions refused because a user's stored secrets cannot be decrypted with the "
                             "configured keys (wrong or missing registry.secret_key / old_secret_keys).",
                             ["component"], registry=REGISTRY)
UNADDRESSABLE = Counter("xmpp_gateway_unaddressable_senders",
                        "Inbound messages whose foreign sender no JID can name (nodeprep refuses it): delivered "
                        "from the component's own address instead.", ["component"], registry=REGISTRY)
IRC_CONNECTIONS = Gauge("xmpp_gateway_irc_connections",
                        "IRC connections signed on, by server (servers not in the config counted as other).",
                        ["component", "server"], registry=REGISTRY)
IRC_RECONNECTS = Counter("xmpp_gateway_irc_reconnects",
                         "IRC connections signed on again after one was lost (a storm shows here).",
                         ["component", "server"], registry=REGISTRY)
IRC_CONNECT_ATTEMPTS = Counter("xmpp_gateway_irc_connect_attempts",
                               "IRC connection attempts started (first connects and reconnects), by server.",
                               ["component", "server"], registry=REGISTRY)
IRC_CONNECT_WAITING = Gauge("xmpp_gateway_irc_connect_waiting",
                            "IRC sessions waiting in line for a turn to connect (all servers), read at each scrape.",
                            ["component"], registry=REGISTRY)
IRC_CONNECT_IN_FLIGHT = Gauge("xmpp_gateway_irc_connect_in_flight",
                              "IRC connection attempts under way, before the welcome (all servers).",
                              ["component"], registry=REGISTRY)
IRC_DISCONNECTS = Counter("xmpp_gateway_irc_disconnects", "Signed-on IRC connections lost or closed.",
                          ["component", "server"], registry=REGISTRY)


class Tally:
    """
    A counter child's value as a plain number the hot paths add to in place
    (``tally.n += 1``: no call at all), read by the Prometheus collector at scrape
    time through the same ``get()`` its own value has — the exported names,
    labels and values stay those of the ``Counter``.

    Why: a labelled child's ``inc()`` is five calls (the check that it is
    observable, the value's ``inc`` and its lock); a room message XMPP → IRC
    counted three of them, 15 of its ~220 calls (issue 12). Only for counters
    the reactor thread alone adds to (``+=`` is not atomic across threads);
    ``inc()`` from elsewhere still takes the lock.
    """

    __slots__ = ("n", "_lock", "_exemplar")
    _multiprocess = False

    def __init__(self, start: float = 0.0) -> None:
        self.n = start
        self._lock = threading.Lock()
        self._exemplar = None

    def inc(self, amount: float) -> None:
        with self._lock:
            self.n += amount

    def set(self, value: float, timestamp=None) -> None:
        self.n = value

    def get(self) -> float:
        return self.n

    def set_exemplar(self, exemplar) -> None:
        self._exemplar = exemplar

    def get_exemplar(self):
        return self._exemplar


class _Forward:
    """``n`` read and written through a value that is not a plain ``MutexValue`` (multiprocess mode)."""

    __slots__ = ("_value",)

    def __init__(self, value) -> None:
        self._value = value

    @property
    def n(self) -> float:
        return self._value.get()

    @n.setter
    def n(self, value: float) -> None:
        self._value.set(value)


def tally(child) -> "Tally | _Forward":
    """
    The plain-number value behind a labelled ``Counter`` child (installed on first
    use, keeping what it counted so far); same child, same ``Tally``.
    """
    value = child._value
    if type(value) is Tally:
        return value
    if type(value) is not _prom_values.MutexValue:
        return _Forward(value)
    fresh = Tally(value.get())
    child._value = fresh
    return fresh
