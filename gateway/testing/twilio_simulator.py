"""
A Twilio simulator, for the tests and the demo where no real carrier can be reached.

It speaks Twilio's wire format: ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json``
with HTTP basic auth (AccountSid, AuthToken) and form fields To, From, Body, MediaUrl,
StatusCallback, answered with Twilio's message resource (201) or its error JSON; status
callbacks and inbound-message webhooks are form POSTs signed with X-Twilio-Signature
(base64 HMAC-SHA1 with the auth token over the URL and the sorted parameters). Its
signing code is its own, so it checks the gateway's rather than sharing it.

A JSON control API under /_sim/ lets a test or the demo drive it:

    GET  /_sim/messages                      every message accepted, the number of API calls, and
                                             the auto-replies with the status their webhook got
    POST /_sim/fail    {"count": 2, "status": 500}          fail the next API calls
    POST /_sim/fail    {"count": 1, "mode": "slow", "delay": 3.0}
    POST /_sim/fail    {"count": 1, "mode": "drop"}      (or "lose")
    POST /_sim/status  {"sid": ..., "status": "delivered", "error_code": "30003"}
    POST /_sim/inbound {"url": ..., "from": ..., "to": ..., "body": ..., "media": [[url, type]],
                        "signature": "valid" | "forged" | "none", "sid": "SM..."}

Fault modes of /_sim/fail, for the next ``count`` Messages API calls:

- ``"error"`` (the default): answer ``status`` (500) and accept nothing;
- ``"slow"``: accept and store the message (it counts in /_sim/messages and gets status
  callbacks), but answer only after ``delay`` seconds: past the client's read timeout, the
  client cannot know whether the message was taken;
- ``"drop"``: accept and store the message, then close the connection without an answer;
- ``"lose"``: read the request and close the connection without an answer, storing nothing
  (the request got lost on the provider's side: no status callback will ever come).

``sid`` in /_sim/inbound sends the webhook of that message again (Twilio retrying or replaying a
webhook: same MessageSid, same parameters, same signature) instead of a new message.

    python -m gateway.testing.twilio_simulator --port 8081 --account-sid AC... --auth-token ...
        [--auto-reply INBOUND_URL]   (the demo: mark each message delivered, then text back)
"""

from __future__ import annotations

import argparse
import base64
import email.utils
import hashlib
import hmac
import io
import json
import math
import re
import secrets
import sys
from urllib.parse import urlencode

from twisted.internet import defer, reactor, task
from twisted.web import resource, server
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

E164 = re.compile(r"^\+[1-9]\d{1,14}$")
GSM_PLAIN = set("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_DOUBLE = set("^{}\\[~]|€\f")


def twilio_signature(token: str, url: str, params: list[tuple[str, str]]) -> str:
    text = url + "".join(k + v for k, v in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), text.encode(), hashlib.sha1).digest()).decode()


def num_segments(body: str) -> int:
    """Twilio's count: GSM-7 160/153 septets, else UCS-2 70/67 UTF-16 units."""
    if all(c in GSM_PLAIN or c in GSM_DOUBLE for c in body):
        units, single, part = sum(2 if c in GSM_DOUBLE else 1 for c in body), 160, 153
    else:
        units, single, part = len(body.encode("utf-16-le")) // 2, 70, 67
    return 1 if units <= single else math.ceil(units / part)


class Simulator(resource.Resource):
    isLeaf = True

    def __init__(self, account_sid: str, auth_token: str, auto_reply: str | None = None):
        super().__init__()
        self.sid = account_sid
        self.token = auth_token
        self.auto_reply = auto_reply
        #: Auto-replies texted back, with the HTTP status the webhook got (None: no answer),
        #: like a carrier that tries a webhook once: only a 200 means the gateway took it.
        self.replies: list[dict] = []
        self.messages: list[dict] = []
        self.api_calls = 0
        self.fail_next = 0
        self.fail_status = 500
        self.fail_mode = "error"
        self.fail_delay = 0.0
        self.agent = Agent(reactor)

    # -- HTTP plumbing --------------------------------------------------------

    def _json(self, request, code: int, data) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(data).encode()

    def _error(self, request, status: int, code: int, message: str) -> bytes:
        return self._json(request, status, {"code": code, "message": message, "status": status,
                                            "more_info": f"https://www.twilio.com/docs/errors/{code}"})

    def render_GET(self, request):
        if request.path == b"/_sim/messages":
            return self._json(request, 200, {"messages": self.messages, "api_calls": self.api_calls,
                                             "replies": self.replies})
        return self._error(request, 404, 20404, "The requested resource was not found")

    def render_POST(self, request):
        path = request.path.decode()
        if path.startswith("/_sim/"):
            body = json.loads(request.content.read() or b"{}")
            handler = {"/_sim/fail": self._control_fail, "/_sim/status": self._control_status,
                       "/_sim/inbound": self._control_inbound}.get(path)
            if handler is None:
                return self._json(request, 404, {"error": "no such control"})
            d = defer.maybeDeferred(handler, body)
            d.addCallback(lambda data: request.write(self._json(request, 200, data)))
            d.addErrback(lambda f: request.write(self._json(request, 500, {"error": f.getErrorMessage()})))
            d.addBoth(lambda _: request.finish())
            return server.NOT_DONE_YET
        m = re.fullmatch(r"/2010-04-01/Accounts/([^/]+)/Messages\.json", path)
        if not m:
            return self._error(request, 404, 20404, "The requested resource was not found")
        return self._create_message(request, m.group(1))

    # -- the Messages API -------------------------------------------------------

    def _create_message(self, request, account: str) -> bytes:
        self.api_calls += 1
        user, password = request.getUser().decode(), request.getPassword().decode()
        if user != self.sid or password != self.token or account != self.sid:
            return self._error(request, 401, 20003, "Authenticate")
        fault = None
        if self.fail_next > 0:
            self.fail_next -= 1
            fault = self.fail_mode
            if fault == "error":
                return self._error(request, self.fail_status, 20500, "Internal Server Error")
            if fault == "lose":
                request.transport.abortConnection()
                return server.NOT_DONE_YET
        args = {k.decode(): [v.decode() for v in vs] for k, vs in request.args.items()}
        one = lambda k: (args.get(k) or [""])[0]  # noqa: E731
        to, sender, body, media = one("To"), one("From"), one("Body"), args.get("MediaUrl", [])
        if not E164.match(to):
            return self._error(request, 400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if not E164.match(sender):
            return self._error(request, 400, 21212, f"The 'From' number {sender} is not a valid phone number.")
        if not body and not media:
            return self._error(request, 400, 21602, "Message body is required.")
        sid = "SM" + secrets.token_hex(16)
        now = email.utils.formatdate(usegmt=True)
        record = {"sid": sid, "to": to, "from": sender, "body": body, "media": media,
                  "status_callback": one("StatusCallback") or None, "num_segments": num_segments(body),
                  "status": "queued", "form": args}
        self.messages.append(record)
        if self.auto_reply:
            reactor.callLater(0.3, self._demo_reply, record)
        resource_json = {
            "account_sid": self.sid, "api_version": "2010-04-01", "body": body, "date_created": now,
            "date_sent": None, "date_updated": now, "direction": "outbound-api", "error_code": None,
            "error_message": None, "from": sender, "messaging_service_sid": None, "num_media": str(len(media)),
            "num_segments": str(record["num_segments"]), "price": None, "price_unit": "USD", "sid": sid,
            "status": "queued", "to": to, "uri": f"/2010-04-01/Accounts/{self.sid}/Messages/{sid}.json",
            "subresource_uris": {"media": f"/2010-04-01/Accounts/{self.sid}/Messages/{sid}/Media.json"}}
        answer = self._json(request, 201, resource_json)
        if fault == "drop":
            request.transport.abortConnection()
            return server.NOT_DONE_YET
        if fault == "slow":
            reactor.callLater(self.fail_delay, self._answer_late, request, answer)
            return server.NOT_DONE_YET
        return answer

    @staticmethod
    def _answer_late(request, answer: bytes) -> None:
        if request.finished or request._disconnected:
            return                           # the client gave up waiting, as intended
        request.write(answer)
        request.finish()

    # -- webhooks the simulator sends -------------------------------------------

    @defer.inlineCallbacks
    def _post_form(self, url: str, params: list[tuple[str, str]], signing: str = "valid"):
        headers = Headers({b"content-type": [b"application/x-www-form-urlencoded"],
                           b"user-agent": [b"TwilioProxy/1.1"]})
        if signing == "valid":
            headers.addRawHeader(b"x-twilio-signature", twilio_signature(self.token, url, params).encode())
        elif signing == "forged":
            headers.addRawHeader(b"x-twilio-signature", twilio_signature("not-the-token", url, params).encode())
        body = FileBodyProducer(io.BytesIO(urlencode(params).encode()))
        response = yield self.agent.request(b"POST", url.encode(), headers, body)
        text = yield readBody(response)
        return {"status": response.code, "body": text.decode("utf-8", "replace")}

    def _control_fail(self, body: dict) -> dict:
        mode = body.get("mode", "error")
        if mode not in ("error", "slow", "drop", "lose"):
            raise ValueError(f"unknown fault mode {mode!r}")
        self.fail_next = int(body.get("count", 1))
        self.fail_status = int(body.get("status", 500))
        self.fail_mode = mode
        self.fail_delay = float(body.get("delay", 3.0))
        return {"fail_next": self.fail_next, "mode": mode}

    def _control_status(self, body: dict):
        record = next((m for m in self.messages if m["sid"] == body["sid"]), None)
        if record is None or not record["status_callback"]:
            raise ValueError("no such message, or it has no StatusCallback")
        record["status"] = body.get("status", "delivered")
        params = [("AccountSid", self.sid), ("ApiVersion", "2010-04-01"), ("From", record["from"]),
                  ("MessageSid", record["sid"]), ("MessageStatus", record["status"]), ("SmsSid", record["sid"]),
                  ("SmsStatus", record["status"]), ("To", record["to"])]
        if body.get("error_code"):
            params.append(("ErrorCode", str(body["error_code"])))
        return self._post_form(record["status_callback"], params, body.get("signature", "valid"))

    def _control_inbound(self, body: dict):
        sid = body.get("sid") or "SM" + secrets.token_hex(16)
        media = body.get("media") or []
        params = [("AccountSid", self.sid), ("ApiVersion", "2010-04-01"), ("Body", body.get("body", "")),
                  ("From", body["from"]), ("MessageSid", sid), ("NumMedia", str(len(media))),
                  ("NumSegments", "1"), ("SmsMessageSid", sid), ("SmsSid", sid), ("SmsStatus", "received"),
                  ("To", body["to"])]
        for i, (url, ctype) in enumerate(media):
            params += [(f"MediaContentType{i}", ctype), (f"MediaUrl{i}", url)]
        return self._post_form(body["url"], params, body.get("signature", "valid"))

    @defer.inlineCallbacks
    def _demo_reply(self, record: dict):
        try:
            if record["status_callback"]:
                yield self._control_status({"sid": record["sid"], "status": "delivered"})
            yield task.deferLater(reactor, 0.7, lambda: None)
            reply = {"body": f"(simulated reply from {record['to']}) got: {record['body']}", "status": None}
            self.replies.append(reply)
            result = yield self._control_inbound({"url": self.auto_reply, "from": record["to"],
                                                  "to": record["from"], "body": reply["body"]})
            reply["status"] = result["status"]
        except Exception as e:  # the demo goes on if the gateway is not there
            print(f"twilio simulator: auto-reply failed: {e}", file=sys.stderr, flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Twilio Messages API simulator")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--account-sid", required=True)
    parser.add_argument("--auth-token", required=True)
    parser.add_argument("--auto-reply", metavar="INBOUND_URL")
    args = parser.parse_args(argv)
    site = server.Site(Simulator(args.account_sid, args.auth_token, args.auto_reply))
    site.noisy = False
    reactor.listenTCP(args.port, site, interface="127.0.0.1")
    print(f"twilio simulator listening on 127.0.0.1:{args.port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
