"""The provider's webhooks on the gateway's web site: /hooks/<domain>/<provider>/{inbound,status}."""

from __future__ import annotations

from twisted.internet import defer
from twisted.logger import Logger
from twisted.web import resource, server

from gateway.adapters.sms.providers import WebhookRequest

log = Logger(namespace="gateway.adapters.sms.webhooks")

#: Provider webhooks are small forms or JSON documents; Twilio's largest (ten
#: media URLs, a 1,600-character body) stays far below this.
MAX_BODY = 256 * 1024


class WebhookResource(resource.Resource):
    isLeaf = True

    def __init__(self, adapter, kind: str, max_body: int = MAX_BODY):
        super().__init__()
        self.adapter = adapter
        self.kind = kind
        self.max_body = max_body

    def render_GET(self, request):
        request.setResponseCode(405)
        request.setHeader(b"allow", b"POST")
        return b"POST only\n"

    def render_POST(self, request):
        # The site refused larger bodies while they arrived; this only guards a
        # resource mounted on a site without those limits.
        body = request.content.read(self.max_body + 1)
        if len(body) > self.max_body:
            request.setResponseCode(413)
            return b"payload too large\n"
        headers = {k.decode("latin-1").lower(): v[-1].decode("latin-1")
                   for k, v in request.requestHeaders.getAllRawHeaders()}
        url = self.adapter.public_url + request.uri.decode("latin-1")
        d = defer.maybeDeferred(self.adapter.handle_webhook, self.kind, WebhookRequest(url, headers, body))

        def respond(result):
            code, content_type, payload = result
            if request.finished or request._disconnected:
                return
            request.setResponseCode(code)
            request.setHeader(b"content-type", content_type)
            request.write(payload)
            request.finish()

        def failed(failure):
            log.failure("{kind} webhook failed", failure, kind=self.kind)
            respond((500, b"text/plain", b"internal error\n"))

        d.addCallbacks(respond, failed)
        return server.NOT_DONE_YET
