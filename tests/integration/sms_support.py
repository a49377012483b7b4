"""The Twilio simulator as a process, and its control API."""

import json
import os
import sys
import urllib.request

from gateway.testing.process import Server, free_port

ACCOUNT_SID = "AC" + "0" * 31 + "1"
AUTH_TOKEN = "simulated-auth-token-000000000000"


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
