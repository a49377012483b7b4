"""The Twilio simulator as a process, its control API, and a scripted JSON SMS API (the generic provider)."""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from gateway.testing.process import Server, free_port

ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "simulated-auth-token-000000000000"
GENERIC_SECRET = "generic-webhook-secret-0000000000"


class TwilioSimulator(Server):
    def __init__(self, workdir: str):
        self.port = free_port()
        super().__init__("twilio-simulator", [sys.executable, "-m", "gateway.testing.twilio_simulator",
                                              "--port", str(self.port), "--account-sid", ACCOUNT_SID,
                                              "--auth-token", AUTH_TOKEN], os.path.join(workdir, "twilio.log"))
        self.url = f"http://127.0.0.1:{self.port}"

    def start(self) -> "TwilioSimulator":
        super().start()
        self.wait_log("listening on")
        return self

    def control(self, path: str, data: dict | None = None) -> dict:
        request = urllib.request.Request(self.url + "/_sim/" + path, method="POST" if data is not None else "GET",
                                         data=json.dumps(data).encode() if data is not None else None)
        with urllib.request.urlopen(request, timeout=20) as r:
            return json.loads(r.read())

    def messages(self) -> list[dict]:
        return self.control("messages")["messages"]

    def api_calls(self) -> int:
        return self.control("messages")["api_calls"]


def sms_options(simulator: TwilioSimulator, web_port: int, **extra) -> dict:
    return {"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN, "api_url": simulator.url,
            "public_url": f"http://127.0.0.1:{web_port}", "default_region": "US", **extra}


class GenericAPI:
    """
    A JSON SMS API that sends one SMS per request (it does not concatenate),
    in a thread of the test process: it records every request and answers by
    rules a test sets per message text, so a test can make one part fail or
    hang and then count what the provider really accepted (answered 2xx).
    """

    def __init__(self):
        self.requests: list[dict] = []
        self._rules: list[dict] = []
        self._lock = threading.Lock()
        self.released = threading.Event()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                length = int(self.headers.get("content-length") or 0)
                payload = json.loads(self.rfile.read(length) or b"{}")
                record = {"json": payload, "headers": {k.lower(): v for k, v in self.headers.items()},
                          "answered": None}
                with api._lock:
                    api.requests.append(record)
                    record["n"] = len(api.requests)
                    rule = next((r for r in api._rules if r["text"] == payload.get("text") and r["times"] > 0), None)
                    if rule is not None:
                        rule["times"] -= 1
                if rule is not None and rule.get("hang"):
                    # The provider stalls with the request unanswered (and, for the test, not taken).
                    api.released.wait(60)
                    code, answer = 503, {"error": "gave up"}
                elif rule is not None:
                    code, answer = rule["status"], {"error": f"scripted {rule['status']}"}
                else:
                    code, answer = 200, {"id": f"g{record['n']}"}
                data = json.dumps(answer).encode()
                try:
                    self.send_response(code)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                except OSError:
                    return                       # the gateway is gone: nobody heard this answer
                record["answered"] = code

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="generic-sms-api", daemon=True)

    def start(self) -> "GenericAPI":
        self._thread.start()
        return self

    def stop(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()

    def fail(self, text: str, status: int = 500, times: int = 1) -> None:
        """Answer ``status`` to the next ``times`` requests carrying ``text``."""
        with self._lock:
            self._rules.append({"text": text, "status": status, "times": times})

    def hang(self, text: str) -> None:
        """Leave the next request carrying ``text`` unanswered until stop()."""
        with self._lock:
            self._rules.append({"text": text, "hang": True, "times": 1})

    def accepted(self) -> list[str]:
        """The texts the provider took (answered 2xx), in order."""
        with self._lock:
            return [r["json"].get("text") for r in self.requests if r["answered"] and 200 <= r["answered"] < 300]

    def sent(self) -> list[str]:
        """Every text requested, answered or not."""
        with self._lock:
            return [r["json"].get("text") for r in self.requests]


def generic_options(api: GenericAPI, web_port: int, **extra) -> dict:
    return {"provider": "generic", "generic_send_url": api.url + "/send", "generic_webhook_secret": GENERIC_SECRET,
            "generic_concatenates": False, "generic_fields": {"callback": "status_url"},
            "public_url": f"http://127.0.0.1:{web_port}", "default_region": "US", **extra}


def generic_signature(body: bytes) -> str:
    return hmac.new(GENERIC_SECRET.encode(), body, hashlib.sha256).hexdigest()
