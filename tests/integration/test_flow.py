"""
The whole user journey through a real XMPP server (Prosody and ejabberd) with
slixmpp on the user's side: discover, register, subscription handshake,
address translation, message and echo with a receipt, a setting changed
through ad-hoc commands, unregistration.
"""

import os

import pytest

from tests.integration.harness import (Client, GatewayProcess, IqError, body, error_condition, run,
                                       write_config)

DOMAIN = "flow.localhost"
NS_REG = "jabber:iq:register"
NS_GW = "jabber:iq:gateway"
NS_RECEIPTS = "urn:xmpp:receipts"


@pytest.fixture
def flow_gateway(xmpp_server, fresh_dir):
    from tests.integration.conftest import COMPONENTS

    config = os.path.join(fresh_dir, "gateway.toml")
    write_config(config, components=[{"domain": DOMAIN, "secret": COMPONENTS[DOMAIN], "adapter": "echo"}],
                 xmpp_port=xmpp_server.component_port, registry_url=f"sqlite:///{fresh_dir}/registry.sqlite",
                 admins=["boss@localhost"])
    gateway = GatewayProcess(config, os.path.join(fresh_dir, "gateway.log")).start()
    yield gateway
    gateway.stop()


def presence_from(sender, ptype=None):
    def match(p):
        return p.get("from", "").split("/")[0] == sender and p.get("type") == ptype
    return match


def test_user_journey(xmpp_server, flow_gateway):
    user = xmpp_server.register(f"alice{os.getpid()}", "alicepw")

    async def journey():
        client = await Client(user, "alicepw").start(xmpp_server.c2s_port)
        client.register_plugin("xep_0077")
        try:
            # XEP-0030: the component says what it is.
            info = await client.plugin["xep_0030"].get_info(jid=DOMAIN, timeout=10)
            identities = info["disco_info"]["identities"]
            features = info["disco_info"]["features"]
            assert any(i[0] == "gateway" and i[1] == "echo" for i in identities), identities
            for feature in (NS_REG, NS_GW, "http://jabber.org/protocol/commands", "jid\\20escaping",
                            "http://jabber.org/protocol/disco#info", "urn:xmpp:ping", NS_RECEIPTS,
                            "jabber:iq:version"):
                assert feature in features, feature

            # XEP-0077: the form, then registration.
            iq = client.Iq(stype="get", sto=DOMAIN)
            iq.enable("register")
            form_iq = await iq.send(timeout=10)
            assert not form_iq["register"]["registered"]
            form = form_iq["register"]["form"]
            assert {"username", "password"} <= set(form.get_fields())
            assert form.get_fields()["username"]["required"]

            reply = client.Iq(stype="set", sto=DOMAIN)
            submit = reply["register"]["form"]
            submit["type"] = "submit"
            submit.add_field("FORM_TYPE", value=NS_REG, ftype="hidden")
            submit.add_field("username", value="Alice")
            submit.add_field("password", value="s3cret-pw")
            await reply.send(timeout=10)

            # XEP-0100: the gateway asks to subscribe; slixmpp accepts and subscribes back.
            await client.next_presence(presence_from(DOMAIN, "subscribe"))
            await client.next_presence(presence_from(DOMAIN, "subscribed"))
            available = await client.next_presence(presence_from(DOMAIN, None))
            assert available.find("{http://jabber.org/protocol/caps}c") is not None

            # Registered now: current values, the secret never sent back.
            iq = client.Iq(stype="get", sto=DOMAIN)
            iq.enable("register")
            again = await iq.send(timeout=10)
            assert again["register"]["registered"]
            values = again["register"]["form"].get_values()
            assert values["username"] == "alice" and not values.get("password")

            # jabber:iq:gateway turns a typed address into a JID (XEP-0106 escaped).
            query = await client.iq(DOMAIN, "set", f"<query xmlns='{NS_GW}'><prompt>Bob Smith@far.away</prompt></query>")
            jid = query.find(f"{{{NS_GW}}}query/{{{NS_GW}}}jid").text
            assert jid == "Bob\\20Smith\\40far.away@flow.localhost"

            # A message with a receipt request: the echo comes back from that JID, with a receipt.
            msg_id = client.send_chat(jid, "hello <world> & all", receipt=True)
            received = []
            while len(received) < 2:
                m = await client.next_message(lambda m: m.get("from", "").lower().startswith("bob\\20smith"))
                received.append(m)
            echo = next(m for m in received if body(m) is not None)
            receipt = next(m for m in received if m.find(f"{{{NS_RECEIPTS}}}received") is not None)
            assert body(echo) == "hello <world> & all"
            assert echo.get("type") == "chat"
            assert receipt.find(f"{{{NS_RECEIPTS}}}received").get("id") == msg_id

            # XEP-0050: users see their commands, not the admins'.
            items = await client.plugin["xep_0030"].get_items(jid=DOMAIN, node="http://jabber.org/protocol/commands",
                                                               timeout=10)
            nodes = {i[1] for i in items["disco_items"]["items"]}
            assert {"settings", "unregister"} <= nodes and "list-users" not in nodes
            with pytest.raises(IqError) as refused:
                await client.plugin["xep_0050"].send_command(DOMAIN, "list-users", timeout=10)
            assert refused.value.iq["error"]["condition"] == "forbidden"

            first = await client.plugin["xep_0050"].send_command(DOMAIN, "settings", timeout=10)
            assert first["command"]["status"] == "executing"
            settings_form = first["command"]["form"]
            assert "prefix" in settings_form.get_fields()
            done = client.Iq(stype="set", sto=DOMAIN)
            done["command"]["node"] = "settings"
            done["command"]["sessionid"] = first["command"]["sessionid"]
            done["command"]["action"] = "complete"
            answer = done["command"]["form"]
            answer["type"] = "submit"
            answer.add_field("prefix", value="ECHO: ")
            completed = await done.send(timeout=10)
            assert completed["command"]["status"] == "completed"

            client.send_chat(jid, "again")
            echo = await client.next_message(lambda m: body(m) is not None)
            assert body(echo) == "ECHO: again"

            # Unregister: the gateway says goodbye in presence, then refuses messages.
            await client.iq(DOMAIN, "set", f"<query xmlns='{NS_REG}'><remove/></query>")
            await client.next_presence(presence_from(DOMAIN, "unsubscribe"))
            await client.next_presence(presence_from(DOMAIN, "unavailable"))
            client.send_chat(jid, "anyone there?")
            err = await client.next_message(lambda m: m.get("type") == "error")
            assert error_condition(err)[0] == "registration-required"
        finally:
            await client.stop()

    run(journey(), timeout=90)
