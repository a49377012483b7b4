"""
The gateway's HTTP side. ``/healthz`` answers 200 only when every component
stream is authenticated and the registry answers; ``/metrics`` is Prometheus'
text format; adapters may mount webhooks under ``/hooks/<domain>/``.

Every path has a body limit enforced while the request arrives (see
gateway.web.limits): an adapter's mount may declare its own as ``max_body``
(a provider's largest webhook), everything else takes the small default.
"""

from __future__ import annotations

import json
import re

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import http, resource, server

from gateway import metrics
from gateway.web import status
from gateway.interfaces import IHealthReport, IWebHooks
from gateway.web.files import FilesResource
from gateway.web.limits import BodyLimits, LimitedSite

log = Logger(namespace="gateway.web")


class _Async(resource.Resource):
    isLeaf = True

    def render_GET(self, request):
        d = defer.maybeDeferred(self.respond, request)

        def done(body):
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(body)
                request.finish()

        def failed(f):
            log.failure("{path} failed", f, path=request.path)
            request.setResponseCode(500)
            done(b"internal error\n")

        d.addCallbacks(done, failed)
        return server.NOT_DONE_YET


class Health(_Async):
    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway

    @defer.inlineCallbacks
    def respond(self, request):
        streams = {c.domain: c.connected for c in self.gateway.components}
        try:
            registry_ok = yield self.gateway.registry.ping().addTimeout(3, self.gateway.reactor)
        except Exception as e:
            registry_ok = False
            log.warn("health check: registry did not answer: {e}", e=e)
        problems = {}
        for bridge in self.gateway.bridges:
            if IHealthReport.providedBy(bridge.adapter):
                found = list(bridge.adapter.problems())
                if found:
                    problems[bridge.component] = found
        ok = bool(streams) and all(streams.values()) and registry_ok and not problems
        request.setResponseCode(200 if ok else 503)
        request.setHeader(b"content-type", b"application/json")
        report = {"ok": ok, "components": streams, "registry": registry_ok}
        if problems:
            report["problems"] = problems
        return json.dumps(report).encode() + b"\n"


class Metrics(_Async):
    def __init__(self, gateway):
        super().__init__()
        self.gateway = gateway

    @defer.inlineCallbacks
    def respond(self, request):
        for bridge in self.gateway.bridges:
            try:
                yield bridge.stats()  # refreshes the registration and queue gauges
            except Exception:
                log.failure("refreshing metrics for {c}", component=bridge.component)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return generate_latest(metrics.REGISTRY)


#: Query parameters that carry a credential (the status page's one-time login token).
_SECRET_QUERY = re.compile(r"([?&]token=)[^&\s\"]*")


def access_log_line(timestamp: str, request) -> str:
    """Twisted's combined log line, minus any login token in the URL: logs are read by more people."""
    return _SECRET_QUERY.sub(r"\1********", http.combinedLogFormatter(timestamp, request))


def build_site(gateway) -> server.Site:
    limits = BodyLimits()
    root = resource.Resource()
    root.putChild(b"healthz", Health(gateway))
    root.putChild(b"metrics", Metrics(gateway))
    root.putChild(b"files", FilesResource(gateway.files))
    root.putChild(b"", status.mount(root, gateway))
    hooks = resource.Resource()
    root.putChild(b"hooks", hooks)
    for bridge in gateway.bridges:
        if not IWebHooks.providedBy(bridge.adapter):
            continue
        mount = resource.Resource()
        for name, res in bridge.adapter.web_resources().items():
            mount.putChild(name.encode(), res)
            limit = getattr(res, "max_body", None)
            if limit:
                limits.set(f"/hooks/{bridge.component}/{name}/".encode(), int(limit))
        hooks.putChild(bridge.component.encode(), mount)
    site = LimitedSite(root, limits, in_flight_limit=gateway.config.web["max_bodies_in_flight"],
                       logFormatter=access_log_line)
    site.noisy = False
    site.displayTracebacks = False
    return site
