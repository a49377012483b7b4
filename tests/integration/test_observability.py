"""Metrics, health, JSON logs with no secret in them, and the twistd plugin."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys

from gateway.testing.process import wait_for
from tests.integration.conftest import COMPONENTS
from tests.integration.gateway_fixture import registered_client, start_gateway
from tests.integration.harness import Client, body, free_port, http_get, run, write_config


def metric(text: str, name: str, **labels) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    raise AssertionError(f"no {name}{{{want}}} in metrics")


def test_metrics_health_and_json_logs_without_secrets(prosody, fresh_dir):
    gateway = start_gateway(prosody, fresh_dir, "web", web=True, log_format="json",
                            options={"rejecting": ["wall"]})
    base = f"http://127.0.0.1:{gateway.web_port}"

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "mia", Client)
        try:
            await client.iq(gateway.domain, "set",
                            "<query xmlns='jabber:iq:register'><x xmlns='jabber:x:data' type='submit'>"
                            "<field var='username'><value>mia</value></field>"
                            "<field var='password'><value>users-own-password</value></field></x></query>")
            client.send_chat(f"echo@{gateway.domain}", "measure me")
            await client.next_message(lambda m: body(m) == "measure me")
            client.send_chat(f"wall@{gateway.domain}", "refused")
            await client.next_message(lambda m: m.get("type") == "error")
        finally:
            await client.stop()

    try:
        run(scenario())
        status, health = http_get(base + "/healthz")
        assert status == 200 and json.loads(health) == {"ok": True, "components": {"web.localhost": True},
                                                        "registry": True}
        status, text = http_get(base + "/metrics")
        assert status == 200
        c = {"component": "web.localhost"}
        assert metric(text, "xmpp_gateway_stanzas_total", direction="in", type="message", **c) >= 2
        assert metric(text, "xmpp_gateway_stanzas_total", direction="out", type="presence", **c) >= 1
        assert metric(text, "xmpp_gateway_messages_total", direction="out", **c) == 1
        assert metric(text, "xmpp_gateway_messages_total", direction="in", **c) == 1
        assert metric(text, "xmpp_gateway_registrations", **c) == 1
        assert metric(text, "xmpp_gateway_queue_depth", direction="out", **c) == 0
        assert metric(text, "xmpp_gateway_send_latency_seconds_count", **c) == 1
        assert metric(text, "xmpp_gateway_errors_total", condition="not-acceptable", **c) == 1
        assert metric(text, "xmpp_gateway_stream_up", **c) == 1
    finally:
        gateway.stop()

    log = gateway.log()
    lines = [line for line in log.splitlines() if line.strip()]
    assert len(lines) > 5
    events = [json.loads(line) for line in lines]            # every line is one JSON object
    assert any(e.get("log_namespace") == "gateway.xmpp.component" for e in events)
    for secret in (COMPONENTS["web.localhost"], gateway.key, "users-own-password"):
        assert secret not in log


def _twistd(config: str, log: str, cwd: str) -> subprocess.Popen:
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    return subprocess.Popen([twistd, "-n", "--pidfile=", "--logfile", log, "xmpp-gateway", "--config", config],
                            cwd=cwd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)


def test_twistd_plugin_runs_the_gateway_and_redacts_its_log(prosody, fresh_dir):
    """
    The registry key is a passphrase that is also words the gateway logs at start
    ("registry open (sqlite); starting"): under twistd, as under ``run``, a configured secret never
    reaches the log file, whatever line carries it.
    """
    config = os.path.join(fresh_dir, "twistd.toml")
    web_port = free_port()
    write_config(config, components=[{"domain": "twistd.localhost", "secret": COMPONENTS["twistd.localhost"],
                                      "adapter": "echo"}], xmpp_port=prosody.component_port,
                 registry_url=f"sqlite:///{fresh_dir}/twistd.sqlite", web_port=web_port, key="registry open (sqlite); starting")
    log = os.path.join(fresh_dir, "twistd.log")
    proc = _twistd(config, log, fresh_dir)
    try:
        wait_for(lambda: http_get(f"http://127.0.0.1:{web_port}/healthz")[0] == 200
                 if os.path.exists(log) and "authenticated" in open(log).read() else False, 20, "twistd gateway",
                 proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
    text = open(log).read()
    assert "twistd.localhost: authenticated" in text
    assert proc.returncode in (0, -signal.SIGTERM)      # twistd ends by the signal it got, as it should
    assert "******** 1 component(s)" in text and "registry open" not in text


def test_twistd_exits_non_zero_on_a_fatal_error(prosody, fresh_dir):
    """A refused component secret is fatal: twistd must not report it as a clean stop (status 0)."""
    config = os.path.join(fresh_dir, "twistd.toml")
    write_config(config, components=[{"domain": "twistd.localhost", "secret": "not-the-secret",
                                      "adapter": "echo"}], xmpp_port=prosody.component_port,
                 registry_url=f"sqlite:///{fresh_dir}/twistd.sqlite", web_port=free_port())
    log = os.path.join(fresh_dir, "twistd.log")
    proc = _twistd(config, log, fresh_dir)
    try:
        assert proc.wait(60) == 2, open(log).read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()


def test_health_fails_when_a_listener_could_not_bind(prosody, fresh_dir):
    """
    The SMTP port taken (or not allowed): the gateway still serves what it can,
    but /healthz says 503 and names the listener, instead of staying green.
    """
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        gateway = start_gateway(prosody, fresh_dir, "health", adapter="email", web=True, options={
            "mail_domain": "mail.health.test", "smtp_listen": f"tcp:{port}:interface=127.0.0.1"})
        try:
            url = f"http://127.0.0.1:{gateway.web_port}/healthz"
            def answered():
                try:
                    return http_get(url)
                except OSError:
                    return None

            wait_for(lambda: answered() is not None, 20, "the web port")
            status, text = answered()
            assert status == 503, text
            report = json.loads(text)
            assert report["ok"] is False and report["components"] == {"health.localhost": True}
            assert any("smtp" in p.lower() and str(port) in p for p in report["problems"]["health.localhost"]), report
        finally:
            gateway.stop()
    finally:
        taken.close()


def test_sighup_reloads_what_it_safely_can_and_refuses_a_broken_config(prosody, fresh_dir):
    """
    SIGHUP (systemctl reload) re-reads the config: admins, allowed domains,
    limits and the log level change at once; a broken config is refused with
    its problems logged, and the gateway keeps running as it was.
    """
    gateway = start_gateway(prosody, fresh_dir, "reload")
    commands = "http://jabber.org/protocol/commands"

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "rita", Client)
        try:
            async def admin_nodes():
                items = await client.plugin["xep_0030"].get_items(jid=gateway.domain, node=commands, timeout=10)
                return {i[1] for i in items["disco_items"]["items"]}

            assert "list-users" not in await admin_nodes()
            user = client.boundjid.bare
            write_config(gateway.config_path, components=[{"domain": gateway.domain, "adapter": "echo",
                                                           "secret": COMPONENTS[gateway.domain], "options": {}}],
                         xmpp_port=prosody.component_port, registry_url=f"sqlite:///{gateway.db}",
                         admins=[user.upper()], key=gateway.key)
            offset = len(gateway.log())
            gateway.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(gateway.wait_log, "config reloaded", 20, None, offset)
            assert "list-users" in await admin_nodes()
            # A broken config is refused; the gateway keeps running with what it had.
            with open(gateway.config_path) as f:
                text = f.read()
            with open(gateway.config_path, "w") as f:
                f.write(re.sub(r"^port = \d+$", "port = 99999", text, count=1, flags=re.M))
            offset = len(gateway.log())
            gateway.proc.send_signal(signal.SIGHUP)
            await asyncio.to_thread(gateway.wait_log, "config not reloaded", 20, None, offset)
            assert "99999" in gateway.log()[offset:]
            client.send_chat(f"echo@{gateway.domain}", "still here")
            await client.next_message(lambda m: body(m) == "still here")
            assert "list-users" in await admin_nodes()
        finally:
            await client.stop()

    try:
        run(scenario())
        assert gateway.proc.poll() is None
    finally:
        assert gateway.stop() == 0
