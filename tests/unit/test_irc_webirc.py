"""WEBIRC per server: the config (a secret inside `servers`, masked like every secret) and the line sent."""

import io
import ipaddress

import pytest

from gateway.config import ConfigError, parse
from gateway.logs import RedactingFile
from gateway.registry.crypto import SecretBox

KEY = SecretBox.generate()


def config(servers: str) -> str:
    return f"""
[gateway]
allowed_domains = ["example.org"]

[registry]
url = "sqlite:///tmp/x.sqlite"
secret_key = "{KEY}"

[[components]]
domain = "irc.example.org"
secret = "component-secret"
adapter = "irc"

[components.options]
servers = {servers}
"""


def test_the_password_is_a_secret_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("GW_WEBIRC_TEST", "w3birc-pass")
    conf = parse(config('{ "irc.example.net" = { webirc_password = { env = "GW_WEBIRC_TEST" }, '
                        'webirc_gateway = "xmppgw" } }'))
    server = conf.components[0].options["servers"]["irc.example.net"]
    assert server["webirc_password"] == "w3birc-pass"
    assert "w3birc-pass" in conf.secrets()
    out = io.StringIO()
    RedactingFile(out, conf.secrets()).write("sent WEBIRC w3birc-pass xmppgw ...")
    assert "w3birc-pass" not in out.getvalue()


def test_bad_webirc_settings_are_refused():
    with pytest.raises(ConfigError) as e:
        parse(config('{ "a.example" = { webirc_password = "has space" }, "b.example" = { webirc_ip = "nope" }, '
                     '"c.example" = { webirc_gateway = "x y" }, "e.example" = { webirc_host = "a_b.example" }, "d.example" = { webirc_password = { env = "GW_UNSET_X" } } }'))
    text = str(e.value)
    for bad in ("a.example: webirc_password", "b.example: webirc_ip", "c.example: webirc_gateway", "e.example: webirc_host", "GW_UNSET_X"):
        assert bad in text, text


def test_the_line_names_a_per_user_host_and_address():
    from gateway.adapters.irc import IRCAdapter
    from gateway.options import validate_table

    class Context:
        component = "irc.example.org"
        token_key = b"k" * 32
        clock = None

    opts = validate_table({"servers": {"irc.example.net": {"webirc_password": "pw", "webirc_gateway": "gw"}}},
                          IRCAdapter.options, "", [])
    adapter = IRCAdapter.__new__(IRCAdapter)
    adapter.config, adapter.context = opts, Context()
    line = adapter.webirc_line("irc.example.net", "alice@example.org/phone")
    word, password, gateway, host, ip = line.split(" ")
    token = adapter.ident_token("alice@example.org")
    assert (word, password, gateway, host) == ("WEBIRC", "pw", "gw", f"{token}.irc.example.org")
    assert ipaddress.IPv6Address(ip) in ipaddress.IPv6Network("fd00::/8")
    assert line == adapter.webirc_line("irc.example.net", "alice@example.org")        # stable per user
    assert ip not in adapter.webirc_line("irc.example.net", "bob@example.org")
    assert adapter.webirc_line("other.example.net", "alice@example.org") is None
