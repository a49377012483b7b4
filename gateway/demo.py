"""
``xmpp-gateway demo``: a local Prosody, ngircd and Twilio simulator, and the
gateway with its four adapters (echo, SMS, email, IRC), so anyone can log in
with an XMPP client and see the gateway work. Everything lives in one
directory; nothing listens beyond 127.0.0.1.

The secrets (registry key, component secrets, logins) are made once and kept
in ``demo-state.json`` beside the registry: a second run reuses them, so what a
user registered in the first run still opens. Deleting the directory starts clean.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import sys

from gateway.testing.process import Server, free_port, port_open


def _port(preferred: int) -> int:
    return preferred if not port_open(preferred) else free_port()


def _state(directory: str) -> tuple[dict, bool]:
    """The demo's secrets: read back from an earlier run, or made now and saved (mode 0600)."""
    from gateway.registry.crypto import SecretBox

    path = os.path.join(directory, "demo-state.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f), True
    except FileNotFoundError:
        pass
    state = {"registry_key": SecretBox.generate(),
             "component_secrets": {d: secrets.token_urlsafe(16) for d in
                                   ("echo.localhost", "sms.localhost", "mail.localhost", "irc.localhost")},
             "users": {name: secrets.token_urlsafe(9) for name in ("alice", "bob")},
             "twilio": ["AC" + secrets.token_hex(16), secrets.token_hex(16)]}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(state, f, indent=2)
    return state, False


def _prosody_user() -> str | None:
    """Prosody's own system user (Debian's package makes it), else nobody; None when not root."""
    if os.geteuid() != 0:
        return None
    for name in ("prosody", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def run_demo(directory: str, log_format: str = "text") -> int:
    from gateway.testing.ngircd import Ngircd
    from gateway.testing.prosody import Prosody

    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    os.chmod(directory, 0o755)
    state, reused = _state(directory)
    domain = "echo.localhost"
    component_secrets = state["component_secrets"]
    component_secret, sms_secret, mail_secret, irc_secret = (
        component_secrets[d] for d in (domain, "sms.localhost", "mail.localhost", "irc.localhost"))
    prosody = Prosody(os.path.join(directory, "prosody"), component_secrets, c2s_port=_port(5222),
                      run_as=_prosody_user())
    try:
        prosody.start()
    except Exception as e:
        print(f"demo: Prosody did not start: {e}", file=sys.stderr)
        return 1
    users = state["users"]
    for name, password in users.items():
        prosody.register(name, password)
    web_port = _port(8480)
    smtp_port = _port(2525)
    sim_port = free_port()
    twilio_sid, twilio_token = state["twilio"]
    simulator = Server("twilio-simulator", [
        sys.executable, "-m", "gateway.testing.twilio_simulator", "--port", str(sim_port),
        "--account-sid", twilio_sid, "--auth-token", twilio_token,
        "--auto-reply", f"http://127.0.0.1:{web_port}/hooks/sms.localhost/twilio/inbound"],
        os.path.join(directory, "twilio-simulator.log")).start()
    simulator.wait_log("listening on")
    ircd = Ngircd(os.path.join(directory, "ngircd")).start()
    config_path = os.path.join(directory, "gateway.toml")
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(f"""# Written by `xmpp-gateway demo`.
[gateway]
allowed_domains = ["localhost"]
admins = ["alice@localhost"]

[xmpp]
host = "127.0.0.1"
port = {prosody.component_port}

[registry]
url = "sqlite:///{directory}/registry.sqlite"
secret_key = "{state['registry_key']}"

[web]
listen = "tcp:{web_port}:interface=127.0.0.1"

[outbox]
# short, so the demo's undeliverable mail (no smarthost) comes back as an error within a minute
deadline = 60.0

[files]
directory = "{directory}/files"

[log]
format = "{log_format}"

[[components]]
domain = "{domain}"
secret = "{component_secret}"
adapter = "echo"

[[components]]
domain = "sms.localhost"
secret = "{sms_secret}"
adapter = "sms"

[components.options]
provider = "twilio"
account_sid = "{twilio_sid}"
auth_token = "{twilio_token}"
api_url = "http://127.0.0.1:{sim_port}"
public_url = "http://127.0.0.1:{web_port}"
default_region = "US"

[[components]]
domain = "mail.localhost"
secret = "{mail_secret}"
adapter = "email"

[components.options]
mail_domain = "mail.example.test"
smtp_listen = "tcp:{smtp_port}:interface=127.0.0.1"
# no smarthost in the demo: outbound mail is retried until the outbox deadline, then bounced to you
smarthost_port = 1

[[components]]
domain = "irc.localhost"
secret = "{irc_secret}"
adapter = "irc"

[components.options]
servers = {{ "localhost" = {{ host = "127.0.0.1", port = {ircd.port}, tls = false }} }}
""")
    logins = "\n".join(f"    {name}@localhost   password: {pw}" for name, pw in users.items())
    again = (f"  Reusing the logins, keys and registrations of the last run in {directory}\n"
             f"  (delete that directory to start clean).\n" if reused else
             f"  A new demo in {directory}; the next run reuses its logins and registrations.\n")
    print(f"""
xmpp-gateway demo is running.

{again}
  XMPP server: 127.0.0.1 port {prosody.c2s_port} (Prosody, no TLS: allow plain-text login in your client)
  Log in as:
{logins}
  Then: register with the service {domain} (service discovery / "add transport"),
        and write to any contact at that domain, e.g. hello@{domain}: it echoes you.
        jabber:iq:gateway turns any name into a contact JID; ad-hoc commands on {domain}
        change settings (alice is an admin: list-users, stats, delete-user, status-page).
  SMS: register with sms.localhost giving any valid number (e.g. +14155550100), then text
        +12025550143@sms.localhost. A Twilio simulator (no real carrier) takes the message,
        reports it delivered (a receipt if your client asked) and texts you back.
  Email: register with mail.localhost (address alice@mail.example.test), then mail yourself:
        swaks --server 127.0.0.1 --port {smtp_port} --from bob@example.net --to alice@mail.example.test
        It arrives from bob\\40example.net@mail.localhost. (The demo has no smarthost, so mail you
        write is retried for a minute and then returned to you as an error.)
  IRC: join the group chat #demo%localhost@irc.localhost with any nickname; a local ngircd
        is on 127.0.0.1 port {ircd.port} for an IRC client to join #demo too.
  Health and metrics: http://127.0.0.1:{web_port}/healthz  http://127.0.0.1:{web_port}/metrics
  Status page: http://127.0.0.1:{web_port}/ (as alice, run the ad-hoc command "Status page" on
        {domain} for a one-time login link)
  Files (config, registry, Prosody): {directory}

Stop with Ctrl-C.
""", flush=True)
    try:
        from gateway.cli import main

        main(["run", config_path])
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        ircd.stop()
        simulator.stop()
        prosody.stop()
    return 0
