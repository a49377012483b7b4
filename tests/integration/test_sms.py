"""
SMS end to end: a real Prosody, slixmpp users, the gateway process with the SMS
adapter on Twilio's API, and the Twilio simulator (the one stand-in: no carrier can
run here) speaking Twilio's wire format.
"""

import asyncio
import json
import os
import re
import secrets
import time
import urllib.request

import pytest

from gateway.testing.process import free_port
from tests.integration.gateway_fixture import register_form, registered_client, start_gateway
from tests.integration.harness import Client, body, error_condition, http_get, run
from tests.integration.sms_support import (ACCOUNT_SID, AUTH_TOKEN, GenericAPI, TwilioSimulator, generic_options,
                                           generic_signature, sms_options)

DOMAIN = "sms.localhost"
CONTACT = "+12025550143"
NS_RECEIPTS = "urn:xmpp:receipts"
_numbers = iter(range(100, 10000))


def new_number() -> str:
    return f"+1415555{next(_numbers):04d}"


@pytest.fixture(scope="module")
def simulator(workdir):
    sim = TwilioSimulator(workdir).start()
    yield sim
    sim.stop()


@pytest.fixture(scope="module")
def sms_gateway(prosody, simulator, workdir):
    path = os.path.join(workdir, "sms-gw")
    os.makedirs(path, exist_ok=True)
    web_port = free_port()
    gateway = start_gateway(prosody, path, "sms", adapter="sms", web_port=web_port,
                            options=sms_options(simulator, web_port, allowed_countries=["US", "CA"]),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    gateway.hooks = f"http://127.0.0.1:{web_port}/hooks/{DOMAIN}/twilio"
    yield gateway
    gateway.stop()


def metric(gateway, name: str, **labels) -> float:
    _, text = http_get(f"http://127.0.0.1:{gateway.web_port}/metrics")
    for line in text.splitlines():
        m = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if m and all(f'{k}="{v}"' in m.group(1) for k, v in labels.items()):
            return float(m.group(2))
    return 0.0


async def sms_user(prosody, name: str, number: str):
    return await registered_client(prosody, DOMAIN, name, Client, {"number": number})


def sent_to_simulator(simulator, text: str, timeout: float = 10.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [m for m in simulator.messages() if m["body"] == text]
        if found:
            return found
        time.sleep(0.05)
    return []


def test_registration_numbers_and_conflicts(prosody, sms_gateway):
    number = new_number()

    async def scenario():
        alice = await sms_user(prosody, "smsalice", number[:2] + " " + number[2:5] + " " + number[5:])
        bob = await Client(prosody.register(f"smsbob{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
        try:
            form = await alice.iq(DOMAIN, "get", "<query xmlns='jabber:iq:register'/>")
            assert number in "".join(form.itertext())                   # stored normalised to E.164
            cond, text = await bob.iq_error(DOMAIN, "set", register_form({"number": number}))
            assert cond == "conflict" and number in text
            cond, text = await bob.iq_error(DOMAIN, "set", register_form({"number": "12"}))
            assert cond == "not-acceptable" and "phone number" in text
            national = await bob.iq(DOMAIN, "set", "<query xmlns='jabber:iq:gateway'><prompt>(202) 555-0143"
                                                   "</prompt></query>")
            assert "".join(national.itertext()).startswith(f"{CONTACT}@{DOMAIN}")
        finally:
            await alice.stop()
            await bob.stop()

    run(scenario())


def test_send_then_delivery_receipt(prosody, simulator, sms_gateway):
    number = new_number()

    async def scenario():
        client = await sms_user(prosody, "smsrita", number)
        try:
            msg_id = client.send_chat(f"{CONTACT}@{DOMAIN}", "hello by SMS", receipt=True)
            client.send_raw(f"<message to='{CONTACT}@{DOMAIN}' type='chat'>"
                            "<composing xmlns='http://jabber.org/protocol/chatstates'/></message>")
            sent = await asyncio.to_thread(sent_to_simulator, simulator, "hello by SMS")
            assert len(sent) == 1
            form = sent[0]["form"]
            callback = form.pop("StatusCallback")
            assert form == {"To": [CONTACT], "From": [number], "Body": ["hello by SMS"]}
            assert re.fullmatch(rf"{re.escape(sms_gateway.hooks)}/status\?gw_id=[0-9a-f]{{32}}", callback[0])
            result = await asyncio.to_thread(simulator.control, "status", {"sid": sent[0]["sid"],
                                                                           "status": "delivered"})
            assert result["status"] == 200
            receipt = await client.next_message(lambda m: m.find(f"{{{NS_RECEIPTS}}}received") is not None)
            assert receipt.find(f"{{{NS_RECEIPTS}}}received").get("id") == msg_id
            assert receipt.get("from").startswith(f"{CONTACT}@{DOMAIN}")
            assert not [m for m in simulator.messages() if m["from"] == number and m["body"] != "hello by SMS"]
        finally:
            await client.stop()

    run(scenario())


def test_failed_delivery_reaches_the_sender(prosody, simulator, sms_gateway):
    number = new_number()

    async def scenario():
        client = await sms_user(prosody, "smsfay", number)
        try:
            msg_id = client.send_chat(f"{CONTACT}@{DOMAIN}", "will not arrive")
            sent = await asyncio.to_thread(sent_to_simulator, simulator, "will not arrive")
            await asyncio.to_thread(simulator.control, "status", {"sid": sent[0]["sid"], "status": "undelivered",
                                                                  "error_code": "30003"})
            err = await client.next_message(lambda m: m.get("id") == msg_id)
            cond, text = error_condition(err)
            assert err.get("type") == "error" and cond == "recipient-unavailable"
            assert "unreachable" in text and "30003" in text
        finally:
            await client.stop()

    run(scenario())


def test_inbound_signed_forged_unsigned_and_unknown(prosody, simulator, sms_gateway):
    number = new_number()
    inbound = f"{sms_gateway.hooks}/inbound"

    async def scenario():
        client = await sms_user(prosody, "smsivy", number)
        try:
            ok = await asyncio.to_thread(simulator.control, "inbound", {
                "url": inbound, "from": CONTACT, "to": number, "body": "picture attached",
                "media": [["https://media.example/p1.jpg", "image/jpeg"]]})
            assert ok["status"] == 200 and "<Response>" in ok["body"]
            msg = await client.next_message(lambda m: body(m) is not None)
            assert msg.get("from") == f"{CONTACT}@{DOMAIN}" and msg.get("type") == "chat"
            assert body(msg) == "picture attached\nhttps://media.example/p1.jpg"
            assert msg.find("{jabber:x:oob}x/{jabber:x:oob}url").text == "https://media.example/p1.jpg"

            for signing in ("forged", "none"):
                refused = await asyncio.to_thread(simulator.control, "inbound", {
                    "url": inbound, "from": CONTACT, "to": number, "body": f"{signing} one", "signature": signing})
                assert refused["status"] == 403
            unknown_before = metric(sms_gateway, "xmpp_gateway_sms_webhooks_total", outcome="unknown-number")
            nobody = await asyncio.to_thread(simulator.control, "inbound", {
                "url": inbound, "from": CONTACT, "to": "+14155559999", "body": "for nobody"})
            assert nobody["status"] == 200
            assert metric(sms_gateway, "xmpp_gateway_sms_webhooks_total", outcome="unknown-number") == \
                unknown_before + 1
            assert await client.quiet(seconds=1.0, predicate=lambda m: body(m) is not None) == []
        finally:
            await client.stop()

    run(scenario())


def test_provider_errors_then_success_is_sent_once(prosody, simulator, sms_gateway):
    number = new_number()

    async def scenario():
        client = await sms_user(prosody, "smsotto", number)
        try:
            calls = await asyncio.to_thread(simulator.api_calls)
            await asyncio.to_thread(simulator.control, "fail", {"count": 2, "status": 500})
            client.send_chat(f"{CONTACT}@{DOMAIN}", "third time lucky")
            sent = await asyncio.to_thread(sent_to_simulator, simulator, "third time lucky")
            await asyncio.sleep(1.5)                               # room for a wrongful extra send
            assert len([m for m in simulator.messages() if m["body"] == "third time lucky"]) == 1
            assert len(sent) == 1 and await asyncio.to_thread(simulator.api_calls) == calls + 3
        finally:
            await client.stop()

    run(scenario())


def test_bad_numbers_limits_segments_and_groups(prosody, simulator, sms_gateway):
    number = new_number()

    async def scenario():
        client = await sms_user(prosody, "smsuma", number)
        try:
            bad = client.send_chat(f"12@{DOMAIN}", "to nowhere")
            err = await client.next_message(lambda m: m.get("id") == bad)
            cond, text = error_condition(err)
            assert cond == "jid-malformed" and "phone number" in text

            abroad = client.send_chat(f"+442079460958@{DOMAIN}", "to London")
            err = await client.next_message(lambda m: m.get("id") == abroad)
            cond, text = error_condition(err)
            assert cond == "policy-violation" and "GB" in text

            before = metric(sms_gateway, "xmpp_gateway_sms_segments_total", component=DOMAIN)
            long_text = "ж" * 300                                  # UCS-2: 300 > 4 * 67 → 5 segments
            client.send_chat(f"{CONTACT}@{DOMAIN}", long_text)
            sent = await asyncio.to_thread(sent_to_simulator, simulator, long_text)
            assert len(sent) == 1 and sent[0]["num_segments"] == 5   # one concatenated message
            await asyncio.sleep(0.3)
            assert metric(sms_gateway, "xmpp_gateway_sms_segments_total", component=DOMAIN) == before + 5

            group = f"m{time.monotonic_ns()}"
            client.send_raw(f"<message to='{DOMAIN}' id='{group}' type='normal'><body>all of you</body>"
                            "<addresses xmlns='http://jabber.org/protocol/address'>"
                            f"<address type='to' jid='{CONTACT}@{DOMAIN}'/>"
                            f"<address type='to' jid='+12025550144@{DOMAIN}'/></addresses></message>")
            err = await client.next_message(lambda m: m.get("id") == group)
            assert error_condition(err)[0] == "feature-not-implemented"
        finally:
            await client.stop()

    run(scenario())


def test_a_split_text_is_said_once_per_conversation_unless_turned_off(prosody, simulator, sms_gateway):
    """Several SMS cost several times: the sender hears it once per contact, and can turn it off."""
    number = new_number()
    notice = re.compile(r"^Your message to \+12025550145 was sent as 2 SMS: .* each part may be charged")

    async def scenario():
        client = await sms_user(prosody, "smssplit", number)
        try:
            client.send_chat(f"+12025550145@{DOMAIN}", "x" * 200)                     # GSM: 200 > 160 → 2 parts
            await client.next_message(lambda m: m.get("from") == DOMAIN and notice.match(body(m) or ""))
            client.send_chat(f"+12025550145@{DOMAIN}", "z" * 200)                     # the same conversation
            await asyncio.to_thread(sent_to_simulator, simulator, "z" * 200)
            assert not await client.quiet("messages", 1.0, lambda m: m.get("from") == DOMAIN)
            client.send_chat(f"+12025550146@{DOMAIN}", "one part, nothing said")
            await asyncio.to_thread(sent_to_simulator, simulator, "one part, nothing said")
            assert not await client.quiet("messages", 0.5, lambda m: m.get("from") == DOMAIN)
            reply = await client.iq(DOMAIN, "set", "<command xmlns='http://jabber.org/protocol/commands' "
                                                   "node='settings' action='execute'/>")
            session = reply.find("{http://jabber.org/protocol/commands}command").get("sessionid")
            await client.iq(DOMAIN, "set", "<command xmlns='http://jabber.org/protocol/commands' node='settings' "
                                           f"sessionid='{session}' action='complete'><x xmlns='jabber:x:data' "
                                           "type='submit'><field var='split_notices'><value>0</value></field></x>"
                                           "</command>")
            client.send_chat(f"+12025550147@{DOMAIN}", "y" * 200)
            await asyncio.to_thread(sent_to_simulator, simulator, "y" * 200)
            said = await client.quiet("messages", 1.0, lambda m: m.get("from") == DOMAIN)
            assert not said
        finally:
            await client.stop()

    run(scenario())


def test_daily_cap(prosody, simulator, fresh_dir):
    web_port = free_port()
    gateway = start_gateway(prosody, fresh_dir, "smscap", adapter="sms", web_port=web_port,
                            options=sms_options(simulator, web_port, daily_limit=2))
    number = new_number()

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "smscap", Client, {"number": number})
        try:
            ids = []
            for n in range(3):
                ids.append(client.send_chat(f"{CONTACT}@{gateway.domain}", f"capped {n}"))
                await asyncio.sleep(0.3)
            err = await client.next_message(lambda m: m.get("id") == ids[2])
            cond, text = error_condition(err)
            assert cond == "policy-violation" and "daily limit of 2" in text
            assert sorted(m["body"] for m in simulator.messages() if m["from"] == number) == ["capped 0", "capped 1"]
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()


def test_provider_down_past_the_deadline(prosody, fresh_dir):
    web_port = free_port()
    closed = free_port()                                           # nothing listens there: a provider that is down
    options = {"provider": "twilio", "account_sid": ACCOUNT_SID, "auth_token": AUTH_TOKEN,
               "api_url": f"http://127.0.0.1:{closed}", "public_url": f"http://127.0.0.1:{web_port}"}
    gateway = start_gateway(prosody, fresh_dir, "smsdown", adapter="sms", web_port=web_port, options=options,
                            outbox={"deadline": 2.0, "retry_initial": 0.3, "retry_max": 0.5})

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "smsdown", Client, {"number": new_number()})
        try:
            msg_id = client.send_chat(f"{CONTACT}@{gateway.domain}", "anyone?")
            err = await client.next_message(lambda m: m.get("id") == msg_id, timeout=15)
            cond, text = error_condition(err)
            assert cond == "remote-server-timeout" and "cannot reach twilio" in text
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()


def test_webhook_answers_get_with_405(sms_gateway):
    request = urllib.request.Request(f"{sms_gateway.hooks}/inbound")
    try:
        urllib.request.urlopen(request, timeout=5)
        raise AssertionError("GET was accepted")
    except urllib.error.HTTPError as e:
        assert e.code == 405


def test_number_pool_and_users_own_credentials(prosody, simulator, fresh_dir):
    web_port = free_port()
    pool = ["+14155550198", "+14155550199"]
    gateway = start_gateway(prosody, fresh_dir, "smsown", adapter="sms", web_port=web_port,
                            options=sms_options(simulator, web_port, number_pool=pool, user_credentials=True))

    async def scenario():
        client = await Client(prosody.register(f"smsown{os.getpid()}", "pw"), "pw").start(prosody.c2s_port)
        try:
            form = await client.iq(gateway.domain, "get", "<query xmlns='jabber:iq:register'/>")
            field = form.find(".//{jabber:x:data}field[@var='number']")
            assert field.get("type") == "list-single"
            assert sorted(o.find("{jabber:x:data}value").text for o in field.findall("{jabber:x:data}option")) == pool
            cond, text = await client.iq_error(gateway.domain, "set", register_form({"number": "+14155550100"}))
            assert cond == "not-acceptable" and "not one of this gateway's numbers" in text
            await client.iq(gateway.domain, "set", register_form({
                "number": pool[0], "account_sid": "AC" + "9" * 32, "auth_token": "the-users-own-token-1234"}))
            again = await client.iq(gateway.domain, "get", "<query xmlns='jabber:iq:register'/>")
            assert "the-users-own-token-1234" not in "".join(again.itertext())
            # The simulator knows only the operator's account: the user's own credentials are refused,
            # which shows they, not the operator's, were used.
            msg_id = client.send_chat(f"{CONTACT}@{gateway.domain}", "on my own account")
            err = await client.next_message(lambda m: m.get("id") == msg_id)
            cond, text = error_condition(err)
            assert cond == "service-unavailable" and "credentials" in text
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()
    assert "the-users-own-token-1234" not in gateway.log()


# -- delivery guarantees under faults ----------------------------------------------
#
# The gateways these tests start serve smsdown.localhost: Prosody knows only the
# component domains listed in tests/integration/conftest.py, and the tests that use
# this one run one after another, each stopping its gateway.

def is_receipt_for(msg_id: str):
    return lambda m: (m.find(f"{{{NS_RECEIPTS}}}received") is not None
                      and m.find(f"{{{NS_RECEIPTS}}}received").get("id") == msg_id)


def wait_until(predicate, timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def post(url: str, data: bytes, headers: dict[str, str]) -> int:
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def test_replayed_inbound_webhook_is_delivered_once(prosody, simulator, sms_gateway):
    """Twilio retries a webhook it got no answer to, and anyone may replay a captured one."""
    number = new_number()
    inbound = f"{sms_gateway.hooks}/inbound"

    async def scenario():
        client = await sms_user(prosody, "smsrex", number)
        try:
            sid = "SM" + secrets.token_hex(16)
            for _ in range(3):                       # the same MessageSid, parameters and signature each time
                answer = await asyncio.to_thread(simulator.control, "inbound", {
                    "url": inbound, "from": CONTACT, "to": number, "body": "only once, please", "sid": sid})
                assert answer["status"] == 200 and "<Response>" in answer["body"]
            got = await client.quiet(seconds=2.0, predicate=lambda m: body(m) is not None)
            assert [body(m) for m in got] == ["only once, please"]
        finally:
            await client.stop()

    run(scenario())


@pytest.mark.parametrize("fault", ["slow", "drop"])
def test_lost_answer_is_not_sent_again(prosody, simulator, fresh_dir, fault):
    """
    Twilio took the message but its answer never came (read timeout, or the
    connection closed): sending again would text the recipient twice.
    """
    web_port = free_port()
    gateway = start_gateway(prosody, fresh_dir, "smsdown", adapter="sms", web_port=web_port,
                            options=sms_options(simulator, web_port, http_timeout=1.0),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    hooks = f"http://127.0.0.1:{web_port}/hooks/{gateway.domain}/twilio"
    text = f"the answer to this one is lost ({fault})"

    async def scenario():
        client = await registered_client(prosody, gateway.domain, f"smslost{fault}", Client,
                                         {"number": new_number()})
        try:
            await asyncio.to_thread(simulator.control, "fail", {"count": 1, "mode": fault, "delay": 3.0})
            msg_id = client.send_chat(f"{CONTACT}@{gateway.domain}", text, receipt=True)
            assert len(await asyncio.to_thread(sent_to_simulator, simulator, text)) == 1
            await asyncio.sleep(3.0)             # past the 1 s timeout, the late answer and several retry periods
            taken = [m for m in simulator.messages() if m["body"] == text]
            assert len(taken) == 1, f"the provider took {len(taken)} copies"
            assert taken[0]["status_callback"].startswith(f"{hooks}/status?gw_id=")
            # The status callback still finds the message: the user gets the receipt, and no error.
            result = await asyncio.to_thread(simulator.control, "status", {"sid": taken[0]["sid"],
                                                                           "status": "delivered"})
            assert result["status"] == 200
            answer = await client.next_message(lambda m: is_receipt_for(msg_id)(m) or m.get("id") == msg_id)
            assert is_receipt_for(msg_id)(answer), f"not a receipt: {error_condition(answer)}"
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()
    assert "unconfirmed" in gateway.log()


def test_a_lost_send_that_is_never_confirmed_is_reported(prosody, simulator, fresh_dir):
    """
    The request got lost on the provider's side (nothing stored, no answer): it
    is not sent again (it might have gone), but no status ever comes, so after
    ``unconfirmed_timeout`` the sender gets an error instead of silence. A
    message the provider confirms in time ('sent') gets none.
    """
    web_port = free_port()
    gateway = start_gateway(prosody, fresh_dir, "smsdown", adapter="sms", web_port=web_port,
                            options=sms_options(simulator, web_port, http_timeout=1.0, unconfirmed_timeout=2.0),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "smsnever", Client, {"number": new_number()})
        try:
            await asyncio.to_thread(simulator.control, "fail", {"count": 1, "mode": "lose"})
            lost = client.send_chat(f"{CONTACT}@{gateway.domain}", "lost on the way")
            err = await client.next_message(lambda m: m.get("id") == lost, timeout=15)
            cond, text = error_condition(err)
            assert err.get("type") == "error" and cond == "remote-server-timeout" and "never confirmed" in text
            assert [m for m in simulator.messages() if m["body"] == "lost on the way"] == []

            await asyncio.to_thread(simulator.control, "fail", {"count": 1, "mode": "drop"})
            kept = client.send_chat(f"{CONTACT}@{gateway.domain}", "taken, answer lost")
            taken = await asyncio.to_thread(sent_to_simulator, simulator, "taken, answer lost")
            result = await asyncio.to_thread(simulator.control, "status", {"sid": taken[0]["sid"], "status": "sent"})
            assert result["status"] == 200
            late = await client.quiet(seconds=4.0, predicate=lambda m: m.get("id") == kept)
            assert late == []                    # confirmed in time: no error
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()


PARTS = ["a" * 153, "b" * 153, "c" * 40]             # GSM-7, 346 septets: three parts of a concatenated SMS


def test_split_parts_resume_after_a_failed_part(prosody, fresh_dir):
    """A provider that sends one SMS per request fails part 2 once: parts 1 and 3 must not go twice."""
    api = GenericAPI().start()
    web_port = free_port()
    gateway = start_gateway(prosody, fresh_dir, "smsdown", adapter="sms", web_port=web_port,
                            options=generic_options(api, web_port),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 30.0})
    status_hook = f"http://127.0.0.1:{web_port}/hooks/{gateway.domain}/generic/status"
    api.fail(PARTS[1], status=500)

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "smsparts", Client, {"number": new_number()})
        try:
            msg_id = client.send_chat(f"{CONTACT}@{gateway.domain}", "".join(PARTS), receipt=True)
            await asyncio.to_thread(wait_until, lambda: len(api.accepted()) >= 3, 15, "three parts accepted")
            await asyncio.sleep(1.0)                               # room for a wrongful extra send
            assert api.accepted() == PARTS
            assert api.sent() == [PARTS[0], PARTS[1], PARTS[1], PARTS[2]]
            callbacks = [r["json"]["status_url"] for r in api.requests]
            assert all(c.startswith(f"{status_hook}?gw_id=") for c in callbacks)
            assert len({c.split("gw_id=")[1].split("&")[0] for c in callbacks}) == 1   # one message, three parts
            # Only the last part's delivery confirms the message: one receipt, after it.
            for request in (api.requests[0], api.requests[3]):
                event = json.dumps({"id": f"g{request['n']}", "status": "delivered"}).encode()
                code = await asyncio.to_thread(post, request["json"]["status_url"], event,
                                               {"content-type": "application/json",
                                                "x-signature": generic_signature(event)})
                assert code == 200
            receipts = await client.quiet(seconds=2.0, predicate=is_receipt_for(msg_id))
            assert len(receipts) == 1
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()
        api.stop()


def test_split_parts_resume_after_a_crash(prosody, fresh_dir):
    """The gateway dies while part 2 is in flight: after the restart, part 1 is not sent again."""
    api = GenericAPI().start()
    web_port = free_port()
    gateway = start_gateway(prosody, fresh_dir, "smsdown", adapter="sms", web_port=web_port,
                            options=generic_options(api, web_port),
                            outbox={"retry_initial": 0.3, "retry_max": 0.5, "deadline": 60.0})
    api.hang(PARTS[1])

    async def scenario():
        client = await registered_client(prosody, gateway.domain, "smscrash", Client, {"number": new_number()})
        try:
            client.send_chat(f"{CONTACT}@{gateway.domain}", "".join(PARTS))
            await asyncio.to_thread(wait_until, lambda: PARTS[1] in api.sent(), 15, "part 2 requested")
            await asyncio.to_thread(gateway.kill)
            await asyncio.to_thread(gateway.start)
            await asyncio.to_thread(wait_until, lambda: len(api.accepted()) >= 3, 20, "three parts accepted")
            await asyncio.sleep(1.0)
            assert api.accepted() == PARTS
            assert api.sent() == [PARTS[0], PARTS[1], PARTS[1], PARTS[2]]
        finally:
            await client.stop()

    try:
        run(scenario())
    finally:
        gateway.stop()
        api.stop()
