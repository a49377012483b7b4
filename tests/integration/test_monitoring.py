"""
The dashboard and alert rules in deploy/ against promtool and the real gateway's
/metrics: a metric renamed in the code, an alert that no longer fires, or a
panel reading a name the gateway does not export fails here.
"""

import asyncio
import json
import os
import re
import shutil
import subprocess

from tests.conftest import ROOT
from tests.integration.conftest import COMPONENTS
from tests.integration.gateway_fixture import registered_client
from tests.integration.harness import Client, GatewayProcess, body, free_port, http_get, run, write_config

RULES = os.path.join(ROOT, "deploy", "prometheus-alerts.yml")
DASHBOARD = os.path.join(ROOT, "deploy", "grafana-dashboard.json")
NAME = re.compile(r"\b((?:xmpp_gateway|process|python)_[a-z_]+)\b")


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing (scripts/install.sh installs Debian's prometheus package)"
    return path


def test_alert_rules_are_valid_and_each_alert_fires_and_stays_quiet():
    checked = subprocess.run([promtool(), "check", "rules", RULES], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = subprocess.run([promtool(), "test", "rules", "alerts-test.yml"], capture_output=True, text=True,
                            cwd=os.path.join(ROOT, "tests", "promtool"))
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    # Every alert in the rules has a test case in which it fires.
    alerts = re.findall(r"^\s+- alert: (\w+)$", open(RULES).read(), re.M)
    cases = open(os.path.join(ROOT, "tests", "promtool", "alerts-test.yml")).read()
    assert len(alerts) >= 8
    for alert in alerts:
        assert re.search(rf"alertname: {alert}\n\s+exp_alerts:\n\s+- exp_labels", cases), alert


def _expressions() -> dict[str, str]:
    """Every PromQL expression shipped: dashboard panels and alert rules, by where it is."""
    found = {}
    dashboard = json.load(open(DASHBOARD))
    assert dashboard["schemaVersion"] >= 36 and dashboard["__inputs"][0]["name"] == "DS_PROMETHEUS"
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            found[f"panel {panel['title']!r}"] = target["expr"]
    for i, expr in enumerate(re.findall(r"^\s+expr: (.+)$", open(RULES).read(), re.M)):
        found[f"rule {i}"] = expr
    return found


def test_every_metric_the_dashboard_and_rules_read_is_exported(prosody, fresh_dir):
    web_port = free_port()
    config = os.path.join(fresh_dir, "monitor.toml")
    write_config(config, components=[
        {"domain": "monitor.localhost", "secret": COMPONENTS["monitor.localhost"], "adapter": "echo",
         "options": {"unreachable": ["away"]}},
        {"domain": "monitorsms.localhost", "secret": COMPONENTS["monitorsms.localhost"], "adapter": "sms",
         "options": {"provider": "twilio", "account_sid": "AC" + "1" * 32, "auth_token": "monitor-token-123456",
                     "api_url": f"http://127.0.0.1:{free_port()}", "public_url": f"http://127.0.0.1:{web_port}"}}],
        xmpp_port=prosody.component_port, registry_url=f"sqlite:///{fresh_dir}/monitor.sqlite", web_port=web_port,
        outbox={"deadline": 3600.0})
    gateway = GatewayProcess(config, os.path.join(fresh_dir, "monitor.log")).start(wait_authenticated=2)
    base = f"http://127.0.0.1:{web_port}"
    try:
        async def scenario():
            client = await registered_client(prosody, "monitor.localhost", "monitor", Client)
            try:
                client.send_chat("echo@monitor.localhost", "counted")
                await client.next_message(lambda m: body(m) == "counted")
                client.send_chat("away@monitor.localhost", "waits in the outbox")
                await asyncio.sleep(1.5)
            finally:
                await client.stop()

        run(scenario())
        # A forged webhook: refused 403 and counted as rejected (the 403-spike alert reads it).
        import urllib.request
        request = urllib.request.Request(f"{base}/hooks/monitorsms.localhost/twilio/inbound", method="POST",
                                         data=b"From=%2B12025550143&To=%2B14155550100&Body=x",
                                         headers={"X-Twilio-Signature": "forged",
                                                  "Content-Type": "application/x-www-form-urlencoded"})
        try:
            urllib.request.urlopen(request, timeout=5)
            raise AssertionError("a forged webhook was accepted")
        except urllib.error.HTTPError as e:
            assert e.code == 403
        status, text = http_get(base + "/metrics")
        assert status == 200
    finally:
        gateway.stop()

    exported = set()
    for line in text.splitlines():
        m = re.match(r"^# (?:HELP|TYPE) (\S+)", line) or re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)", line)
        if m:
            exported.add(m.group(1))
    for where, expr in _expressions().items():
        for name in NAME.findall(expr):
            assert name in exported, f"{where} reads {name}, which /metrics does not export"
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info"):
        assert name in exported, name
    from gateway import __version__
    assert re.search(rf'^xmpp_gateway_build_info{{.*version="{re.escape(__version__)}".*}} 1\.0$', text, re.M)
    oldest = re.search(r'^xmpp_gateway_queue_oldest_seconds{component="monitor.localhost",direction="out"} (\S+)$',
                       text, re.M)
    assert oldest and float(oldest.group(1)) > 0, "the row waiting for 'away' has an age"
    assert re.search(r'^xmpp_gateway_sms_webhooks_total{component="monitorsms.localhost",kind="inbound",'
                     r'outcome="rejected"} 1\.0$', text, re.M)
    linted = subprocess.run([promtool(), "check", "metrics"], input=text, capture_output=True, text=True)
    assert linted.returncode == 0, linted.stdout + linted.stderr
