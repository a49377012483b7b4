"""
SIGKILLs at random moments while one gateway process carries steady two-way
traffic over three networks at once: the echo network, SMS through the
Twilio simulator (which texts back), and email (out through a real SMTP
smarthost, in from an SMTP client). The ledger counts each direction on the
side that receives it: the XMPP user, the SMS provider, the smarthost.
"""

from __future__ import annotations

import asyncio
import os
import random
import smtplib
import time

import pytest

from gateway.testing.certs import self_signed
from gateway.testing.prosody import Prosody
from gateway.xmpp.escaping import escape
from tests.faults.conftest import LONG
from tests.faults.ledger import Ledger, pump, server_knows_it_is_gone
from tests.integration.gateway_fixture import register_form
from tests.integration.harness import Client, GatewayProcess, body, free_port, run_then_stop, write_config
from tests.integration.mail_support import SMARTHOST_PASSWORD, SMARTHOST_USER, Smarthost
from tests.integration.sms_support import TwilioSimulator, sms_options

ECHO, SMS, MAIL = "necho.localhost", "nsms.localhost", "nmail.localhost"
SECRETS = {d: d.split(".")[0] + "-secret" for d in (ECHO, SMS, MAIL)}
MAIL_DOMAIN = "mail.fault.test"
USER_NUMBER = "+14155550990"
CONTACT_NUMBER = "+12025550147"


@pytest.fixture(scope="module")
def servers(workdir):
    prosody = Prosody(os.path.join(workdir, "prosody-networks"), SECRETS, modules=("offline",)).start()
    certs = self_signed(os.path.join(workdir, "network-fault-certs"), ("localhost", "smarthost.test"))
    smarthost = Smarthost(free_port(), *certs).start()
    simulator = TwilioSimulator(workdir)
    yield prosody, certs, smarthost, simulator
    simulator.stop()
    smarthost.stop()
    prosody.stop()


def start(prosody, certs, smarthost, simulator, fresh_dir) -> GatewayProcess:
    web_port, smtp_port = free_port(), free_port()
    # The simulator texts back to the gateway's webhook: started once the port is known.
    simulator.argv += ["--auto-reply", f"http://127.0.0.1:{web_port}/hooks/{SMS}/twilio/inbound"]
    simulator.start()
    cert, _key = certs
    config = os.path.join(fresh_dir, "networks.toml")
    write_config(config, xmpp_port=prosody.component_port, web_port=web_port,
                 registry_url=f"sqlite:///{fresh_dir}/networks.sqlite",
                 outbox={"retry_initial": 0.3, "retry_max": 1.0, "deadline": 120.0},
                 limits={"rate": 1000.0, "burst": 10000}, components=[
                     {"domain": ECHO, "secret": SECRETS[ECHO], "adapter": "echo", "options": {"delay": 0.3}},
                     {"domain": SMS, "secret": SECRETS[SMS], "adapter": "sms",
                      "options": sms_options(simulator, web_port)},
                     {"domain": MAIL, "secret": SECRETS[MAIL], "adapter": "email", "options": {
                         "mail_domain": MAIL_DOMAIN, "smarthost_host": "localhost",
                         "smarthost_port": smarthost.controller.port, "smarthost_tls": "required",
                         "smarthost_ca": cert, "smarthost_username": SMARTHOST_USER,
                         "smarthost_password": SMARTHOST_PASSWORD,
                         "smtp_listen": f"tcp:{smtp_port}:interface=127.0.0.1", "max_size": 200_000}}])
    gateway = GatewayProcess(config, os.path.join(fresh_dir, "networks.log"))
    gateway.smtp_port = smtp_port
    return gateway.start(wait_authenticated=3)


def mail_in(port: int, to: str, text: str) -> bool:
    """One mail into the gateway's SMTP listener; True if it answered 250 (accepted)."""
    data = (f"From: Carol <carol@example.net>\r\nTo: {to}\r\nSubject: fault\r\n"
            f"Message-ID: <{text}@example.net>\r\n\r\n{text}\r\n").encode()
    try:
        with smtplib.SMTP("127.0.0.1", port, "client.example.net", timeout=5) as s:
            return s.sendmail("carol@example.net", [to], data) == {}
    except (OSError, smtplib.SMTPException):
        return False


def test_sigkill_across_networks_loses_nothing(servers, fresh_dir):
    prosody, certs, smarthost, simulator = servers
    kills = 10 if LONG else 2
    seed = int(os.environ.get("FAULT_SEED", random.randrange(10**6)))
    rng = random.Random(seed)
    print(f"FAULT_SEED={seed}")
    gateway = start(prosody, certs, smarthost, simulator, fresh_dir)
    user = prosody.register(f"net{os.getpid()}", "pw")
    echo_to = f"e@{ECHO}"
    sms_to = f"{CONTACT_NUMBER}@{SMS}"
    mail_to = f"{escape('carol@example.net')}@{MAIL}"
    my_address = f"net{os.getpid()}@{MAIL_DOMAIN}"

    async def scenario():
        client = await Client(user, "pw").start(prosody.c2s_port)
        for domain, fields in ((ECHO, {"username": "net"}), (SMS, {"number": USER_NUMBER}),
                               (MAIL, {"alias": f"net{os.getpid()}", "name": "Net"})):
            await client.iq(domain, "set", register_form(fields))
        out = {"echo": Ledger(), "sms": Ledger(), "mail": Ledger()}       # what the user sent, per network
        mail_in_ledger = Ledger()                                          # mail sent to the user
        n = 0

        async def traffic(seconds: float):
            nonlocal n
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                out["echo"].send(client, echo_to, f"echo-{n}")
                out["sms"].send(client, sms_to, f"sms-{n}")
                out["mail"].send(client, mail_to, f"mail-{n}")
                if await asyncio.to_thread(mail_in, gateway.smtp_port, my_address, f"in-{n}"):
                    mail_in_ledger.expect(f"in-{n}")
                n += 1
                await pump([client], collect, 0.1)

        def collect_stanza(stanza):
            for ledger in (*out.values(), mail_in_ledger):
                ledger.note(stanza)
            text = body(stanza) or ""
            if "got: sms-" in text:                 # the simulated contact's reply names what it got
                # Counted by stanza id, as the ledgers count: a redelivery under the same id (the
                # gateway died after the server read it, before the queue row went) is a repeat the
                # client drops, not a duplicate (docs/reliability.md, "Repeats, not duplicates").
                replies.setdefault(text.rsplit("got: ", 1)[1], set()).add(stanza.get("id"))
                reply_stanzas[0] += 1

        replies: dict[str, set[str]] = {}
        reply_stanzas = [0]
        collect = type("Collect", (), {"note": staticmethod(collect_stanza)})()
        try:
            for _ in range(kills):
                await traffic(rng.uniform(1.0, 3.0))
                gateway.kill()
                for ledger in out.values():
                    ledger.killed(os.path.join(fresh_dir, "networks.sqlite"))
                for domain in (ECHO, SMS, MAIL):
                    await server_knows_it_is_gone(client, domain, collect)
                await traffic(rng.uniform(0.0, 0.5))
                since = len(gateway.log())
                gateway.start(wait_authenticated=0)
                while gateway.log()[since:].count(": authenticated") < 3:
                    await pump([client], collect, 0.1)
            await traffic(1.0)
            # Wait until everything the ledgers say must arrive has, as the checks below count it (a
            # reply whose webhook failed never comes, so waiting for it would only run out the clock).
            deadline = time.monotonic() + 60
            provider_count, provider_changed = -1, time.monotonic()
            while time.monotonic() < deadline:
                await pump([client], collect, 0.5)
                state = await asyncio.to_thread(simulator.control, "messages")
                if len(state["messages"]) != provider_count:
                    provider_count, provider_changed = len(state["messages"]), time.monotonic()
                at_provider = {m["body"] for m in state["messages"]}
                answered = [r["body"].rsplit("got: ", 1)[1] for r in state["replies"] if r["status"] == 200]
                at_smarthost = {line.strip() for m in list(smarthost.received) for line in (
                    m["data"].decode("utf-8", "replace") if isinstance(m["data"], bytes) else m["data"]).splitlines()}
                if (not out["echo"].missing() and not mail_in_ledger.missing()
                        and all(b in at_provider for b in out["sms"].sent
                                if b not in out["sms"].errors and not out["sms"].not_stored(b))
                        and all(b in at_smarthost for b in out["mail"].sent
                                if b not in out["mail"].errors and not out["mail"].not_stored(b))
                        and all(b in replies for b in answered)
                        # the simulator texts back ~1 s after a message: none may be on its way
                        and time.monotonic() - provider_changed >= 2.5):
                    break
            await pump([client], collect, 3.0)
            return out, mail_in_ledger, replies, reply_stanzas[0]
        finally:
            await client.stop()

    out, mail_in_ledger, replies, reply_stanzas = run_then_stop(gateway, scenario(), timeout=240 + 40 * kills)
    # What reached the networks, counted where it arrived.
    at_provider: dict[str, int] = {}
    state = simulator.control("messages")
    for m in state["messages"]:
        at_provider[m["body"]] = at_provider.get(m["body"], 0) + 1
    # The contact's replies: the carrier tries each webhook once; those the gateway answered 200 must arrive.
    reply_ledger = Ledger()
    for reply in state["replies"]:
        text = reply["body"].rsplit("got: ", 1)[1]
        reply_ledger.sent.append(text)
        if reply["status"] != 200:
            reply_ledger.errors.add(text)
    at_smarthost: dict[str, int] = {}
    for m in smarthost.received:
        text = m["data"].decode("utf-8", "replace") if isinstance(m["data"], bytes) else m["data"]
        for line in text.splitlines():
            if line.startswith("mail-"):
                at_smarthost[line.strip()] = at_smarthost.get(line.strip(), 0) + 1

    def outcome(name: str, ledger: Ledger, arrived: dict[str, int]) -> dict[str, int]:
        accepted = [b for b in ledger.sent if b not in ledger.errors]
        gone = [b for b in accepted if not arrived.get(b)]
        return {"network": name, "sent": len(ledger.sent), "accepted": len(accepted),
                "delivered": len(accepted) - len(gone),
                "not stored when killed": sum(1 for b in gone if ledger.not_stored(b)),
                "lost": sum(1 for b in gone if not ledger.not_stored(b)),
                "duplicates": sum(n - 1 for b, n in arrived.items() if n > 1)}

    rows = [
        outcome("echo (echoes at the user)", out["echo"], {b: len(ids) for b, ids in out["echo"].ids.items()}),
        outcome("SMS out (at the provider)", out["sms"], at_provider),
        outcome("SMS replies (at the user)", reply_ledger, {b: len(ids) for b, ids in replies.items()}),
        outcome("email out (at the smarthost)", out["mail"], at_smarthost),
        outcome("email in (at the user)", mail_in_ledger,
                {b: len(ids) for b, ids in mail_in_ledger.ids.items()}),
    ]
    for row in rows:
        print(f"ledger ({kills} SIGKILLs, seed {seed}, {row['network']}): "
              + ", ".join(f"{k} {v}" for k, v in row.items() if k != "network"))
    print(f"repeats (same id) at the user: echo {out['echo'].report()['repeats (same id)']}, "
          f"email in {mail_in_ledger.report()['repeats (same id)']}, "
          f"SMS replies {reply_stanzas - sum(len(ids) for ids in replies.values())}")
    assert all(row["lost"] == 0 for row in rows), rows
    assert all(row["duplicates"] == 0 for row in rows), rows
