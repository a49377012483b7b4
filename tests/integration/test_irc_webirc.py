"""
WEBIRC, end to end: the real gateway process, Prosody and slixmpp; the test is
the IRC server (a scripted one: it records every line the gateway sends). The
operator's WEBIRC password comes from the environment, is sent first of all,
only to the server it is configured for, and is in no line of the gateway's log.
"""

import os

from gateway.adapters.irc.identd import ident_token, webirc_address
from gateway.service import token_key
from gateway.testing.process import free_port
from tests.integration.gateway_fixture import start_gateway
from tests.integration.harness import Client, run
from tests.integration.irc_support import ScriptedSASLServer

NS_MUC = "http://jabber.org/protocol/muc"
DOMAIN = "ircwebirc.localhost"
PASSWORD = "webirc-S3cret-pw"


def test_webirc_is_the_first_line_with_the_configured_password_and_never_logged(prosody, fresh_dir, monkeypatch):
    port = free_port()
    monkeypatch.setenv("GW_TEST_WEBIRC_PASSWORD", PASSWORD)          # inherited by the gateway process
    gateway = start_gateway(prosody, fresh_dir, "ircwebirc", adapter="irc", options={
        "servers": {"webirc.test": {"host": "127.0.0.1", "port": port, "tls": False,
                                    "webirc_password": {"env": "GW_TEST_WEBIRC_PASSWORD"},
                                    "webirc_gateway": "xmppgw"},
                    "plain.test": {"host": "127.0.0.1", "port": port, "tls": False}},
        "throttle_rate": 0.0})
    user = prosody.register(f"webircuser{os.getpid()}", "pw")
    key = token_key(gateway.key)
    expected = f"WEBIRC {PASSWORD} xmppgw {ident_token(key, user)}.{DOMAIN} {webirc_address(key, user)}"

    async def scenario():
        peer = await ScriptedSASLServer(port, account=None).start()
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='#w%webirc.test@{DOMAIN}/webnick'><x xmlns='{NS_MUC}'/></presence>")
            await client.next_message(lambda m: m.find("{jabber:client}body") is not None
                                      and "from the past" in m.find("{jabber:client}body").text, timeout=30)
            assert peer.received[0] == expected, peer.received[:3]
            assert sum(1 for line in peer.received if line.startswith("WEBIRC")) == 1
            first = len(peer.received)
            # a server without WEBIRC settings never sees the line
            client.send_raw(f"<presence to='#p%plain.test@{DOMAIN}/webnick'><x xmlns='{NS_MUC}'/></presence>")
            await client.next_message(lambda m: m.find("{jabber:client}body") is not None
                                      and "from the past" in m.find("{jabber:client}body").text
                                      and m.get("from", "").startswith("#p%"), timeout=30)
            later = peer.received[first:]
            assert later[0] == "CAP LS 302" and not any(line.startswith("WEBIRC") for line in later), later[:3]
        finally:
            await client.stop()
            peer.close()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()
    log = gateway.log()
    assert "webirc.test" in log                                     # the connection was logged ...
    assert PASSWORD not in log                                      # ... its password never


def test_ngircd_takes_the_per_user_address(prosody, workdir, fresh_dir):
    """
    A real server: ngircd with WebIRCPassword shows the user at their per-user
    fd00::/8 address (JOIN prefix, WHOIS 311). ngircd reads WEBIRC as ``password username host
    ip`` (the CGI:IRC form), so the gateway field becomes the user name there:
    asserted, because docs/irc.md tells operators so.
    """
    import ipaddress

    from gateway.testing.ngircd import Ngircd
    from tests.integration.irc_support import RawIRC

    ircd = Ngircd(os.path.join(workdir, "ngircd-webirc"), webirc_password=PASSWORD).start()
    gateway = start_gateway(prosody, fresh_dir, "ircwebirc", adapter="irc", options={
        "servers": {"localhost": {"host": "127.0.0.1", "port": ircd.port, "tls": False,
                                  "webirc_password": PASSWORD, "webirc_gateway": "xmppgw"}},
        "throttle_rate": 0.0})
    user = prosody.register(f"webircng{os.getpid()}", "pw")
    address = webirc_address(token_key(gateway.key), user)
    assert ipaddress.IPv6Address(address) in ipaddress.IPv6Network("fd00::/8")

    async def scenario():
        watcher = await RawIRC(ircd.port, "webwatch").connect()
        watcher.send("JOIN #web")
        client = await Client(user, "pw").start(prosody.c2s_port)
        try:
            client.send_raw(f"<presence to='#web%localhost@{DOMAIN}/webng'><x xmlns='{NS_MUC}'/></presence>")
            joined = await watcher.expect(lambda l: l.startswith(":webng!") and " JOIN " in l, timeout=30)
            assert joined.startswith(f":webng!xmppgw@{address} "), joined
            watcher.send("WHOIS webng")
            whois = await watcher.expect(lambda l: " 311 webwatch webng " in l)
            assert whois.split()[4:6] == ["xmppgw", address], whois
        finally:
            await client.stop()
            await watcher.close()

    try:
        run(scenario(), timeout=60)
    finally:
        gateway.stop()
        ircd.stop()
    assert PASSWORD not in gateway.log()
