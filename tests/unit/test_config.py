"""Config validation: every problem reported with its key and line; secrets from env and files."""

import json
import os
import subprocess
import sys

import pytest

from gateway.config import ConfigError, parse
from gateway.registry.crypto import SecretBox

KEY = SecretBox.generate()
GOOD = f"""
[gateway]
allowed_domains = ["example.org"]
admins = ["admin@example.org"]

[registry]
url = "sqlite:///tmp/x.sqlite"
secret_key = "{KEY}"

[[components]]
domain = "echo.example.org"
secret = "component-secret"
adapter = "echo"

[components.options]
delay = 0.5
"""


def problems(text: str) -> dict[str, tuple[int | None, str]]:
    with pytest.raises(ConfigError) as e:
        parse(text, "gw.toml")
    return {p.key: (p.line, p.message) for p in e.value.problems}


def test_good_config_fills_defaults():
    config = parse(GOOD)
    assert config.xmpp["port"] == 5347 and config.outbox["deadline"] == 3600.0
    comp = config.components[0]
    assert (comp.domain, comp.adapter, comp.options["delay"], comp.options["unreachable"]) == \
        ("echo.example.org", "echo", 0.5, [])
    assert comp.name == "Echo gateway"
    assert set(config.secrets()) == {KEY, "component-secret"}


def test_every_problem_with_key_and_line():
    bad = GOOD.replace('admins = ["admin@example.org"]', 'admins = ["not a jid"]\ncolour = "blue"') \
              .replace("delay = 0.5", "delay = -1\nspeed = 3") \
              .replace('adapter = "echo"', 'adapter = "echo"\nport = "5347"')
    bad += '\n[xmpp]\nping_interval = "often"\n\n[bogus]\nx = 1\n'
    found = problems(bad)
    lines = bad.splitlines()
    assert found["gateway.colour"][1] == "unknown key"
    assert lines[found["gateway.colour"][0] - 1].startswith("colour")
    assert "not a bare JID" in found["gateway.admins"][1]
    assert lines[found["gateway.admins"][0] - 1].startswith("admins")
    assert found["components[0].options.delay"][1] == "must not be negative"
    assert lines[found["components[0].options.delay"][0] - 1].startswith("delay")
    assert found["components[0].options.speed"][1] == "unknown key"
    assert "must be a integer" in found["components[0].port"][1] or "must be an integer" in found["components[0].port"][1]
    assert lines[found["components[0].port"][0] - 1].startswith("port")
    assert "number" in found["xmpp.ping_interval"][1]
    assert lines[found["xmpp.ping_interval"][0] - 1].startswith("ping_interval")
    assert found["bogus"][1] == "unknown section"


def test_missing_required_and_unknown_adapter():
    text = GOOD.replace('adapter = "echo"', 'adapter = "carrier-pigeon"').replace('allowed_domains = ["example.org"]\n', "")
    found = problems(text)
    assert found["gateway.allowed_domains"][1] == "is required"
    assert "no adapter named 'carrier-pigeon'" in found["components[0].adapter"][1]
    assert text.splitlines()[found["components[0].adapter"][0] - 1].startswith("adapter")


def test_duplicate_domains_and_no_components():
    twice = GOOD.replace("[components.options]\ndelay = 0.5", "") + \
        '\n[[components]]\ndomain = "echo.example.org"\nsecret = "s"\nadapter = "echo"\n'
    found = problems(twice)
    assert "configured twice" in found["components[1].domain"][1]
    assert twice.splitlines()[found["components[1].domain"][0] - 1].startswith("domain")
    assert "at least one" in problems(GOOD.split("[[components]]")[0])["components"][1]


def test_syntax_error_has_line():
    found = problems(GOOD + "\nthis is not toml\n")
    line, message = found["(syntax)"]
    assert line == len(GOOD.splitlines()) + 2


def test_secrets_from_environment_and_files(tmp_path, monkeypatch):
    secret_file = tmp_path / "component.secret"
    secret_file.write_text("from-a-file\n")
    monkeypatch.setenv("GW_TEST_KEY", KEY)
    text = GOOD.replace(f'secret_key = "{KEY}"', 'secret_key = { env = "GW_TEST_KEY" }') \
               .replace('secret = "component-secret"', f'secret = {{ file = "{secret_file}" }}')
    config = parse(text)
    assert config.registry["secret_key"] == KEY
    assert config.components[0].secret == "from-a-file"
    monkeypatch.delenv("GW_TEST_KEY")
    found = problems(text)
    assert found["registry.secret_key"][1] == "environment variable GW_TEST_KEY is not set"
    missing = text.replace(str(secret_file), str(tmp_path / "nope"))
    monkeypatch.setenv("GW_TEST_KEY", KEY)
    assert "cannot read secret file" in problems(missing)["components[0].secret"][1]


def test_weak_passphrase_refused():
    found = problems(GOOD.replace(KEY, "short"))
    assert "at least 16" in found["registry.secret_key"][1]


def cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          input=stdin, timeout=60)


def test_check_config_cli(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text(GOOD)
    result = cli("check-config", str(good))
    assert result.returncode == 0 and "OK: 1 component(s): echo.example.org (echo)" in result.stdout
    bad = tmp_path / "bad.toml"
    text = GOOD.replace("delay = 0.5", "delay = -1").replace('adapter = "echo"', 'adapter = "echo"\nfoo = 1')
    bad.write_text(text)
    result = cli("check-config", str(bad))
    assert result.returncode == 1
    assert "2 problem(s)" in result.stderr
    foo_line = text.splitlines().index("foo = 1") + 1
    assert f"{bad}:{foo_line}: components[0].foo: unknown key" in result.stderr
    assert "components[0].options.delay: must not be negative" in result.stderr
    assert "component-secret" not in result.stderr + result.stdout
    missing = cli("check-config", str(tmp_path / "absent.toml"))
    assert missing.returncode == 1 and "cannot read config" in missing.stderr


def test_registry_cli_export_import_list(tmp_path):
    db = tmp_path / "reg.sqlite"
    config = tmp_path / "gw.toml"
    config.write_text(GOOD.replace("sqlite:///tmp/x.sqlite", f"sqlite:///{db}"))
    dump = {"version": 1, "registrations": [
        {"component": "echo.example.org", "jid": "a@example.org", "foreign_id": "alice", "settings": {"prefix": ">"},
         "sealed_secrets": SecretBox(KEY).seal({"password": "pw-123"}), "subscribed": True, "created_at": 1.0}]}
    result = cli("registry", "import", "-", "--config", str(config), stdin=json.dumps(dump))
    assert result.returncode == 0 and "imported 1" in result.stdout, result.stderr
    listed = cli("registry", "list", "--config", str(config))
    assert "echo.example.org\ta@example.org\talice" in listed.stdout
    out = tmp_path / "export.json"
    assert cli("registry", "export", str(out), "--config", str(config)).returncode == 0
    exported = json.loads(out.read_text())
    assert exported["registrations"][0]["settings"] == {"prefix": ">"}
    assert "pw-123" not in out.read_text()
    assert SecretBox(KEY).open(exported["registrations"][0]["sealed_secrets"]) == {"password": "pw-123"}
    # The order the docs write it in (options first, then the file) works too.
    second = tmp_path / "backup.json"
    result = cli("registry", "export", "--config", str(config), str(second))
    assert result.returncode == 0, result.stderr
    assert json.loads(second.read_text())["registrations"][0]["jid"] == "a@example.org"
    assert cli("registry", "export", "--config", str(config), str(second), "extra").returncode == 2
    bad = cli("registry", "import", "-", "--config", str(config), stdin="{not json")
    assert bad.returncode == 1 and "not a registry export" in bad.stderr


def test_genkey_makes_a_usable_key():
    key = cli("genkey").stdout.strip()
    box = SecretBox(key)
    assert box.open(box.seal({"a": "b"})) == {"a": "b"}


def test_configuration_reference_is_current():
    """docs/configuration.md is generated from the schema; regenerate it when this fails."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(root, "docs", "configuration.md"), encoding="utf-8") as f:
        assert f.read() == cli("config-reference").stdout


def test_ports_endpoints_and_placeholders_are_refused_with_their_line():
    """check-config must not pass what the gateway cannot run with (issue 10)."""
    bad = GOOD.replace('[registry]', '[xmpp]\nport = 99999\n\n[web]\nlisten = "tcp:notaport"\n\n[registry]') \
              .replace('secret = "component-secret"', 'secret = "CHANGE-ME-component-secret"')
    found = problems(bad)
    lines = bad.splitlines()
    assert "between 1 and 65535" in found["xmpp.port"][1]
    assert lines[found["xmpp.port"][0] - 1].startswith("port")
    assert "notaport" in found["web.listen"][1] and lines[found["web.listen"][0] - 1].startswith("listen")
    assert "placeholder" in found["components[0].secret"][1]
    tls = problems(GOOD.replace('[registry]', '[web]\nlisten = "ssl:8443:privateKey=/nonexistent/key.pem"\n\n[registry]'))
    assert "cannot read /nonexistent/key.pem" in tls["web.listen"][1]
    smtp = GOOD.replace('adapter = "echo"', 'adapter = "email"').replace(
        "delay = 0.5", 'mail_domain = "mail.example.org"\nsmtp_listen = "tcp:25:interface=nowhere:x"\n'
                       'smarthost_port = 0')
    found = problems(smtp)
    assert "smtp_listen" in " ".join(found) and "between 1 and 65535" in found["components[0].options.smarthost_port"][1]


def test_domains_are_lower_cased_not_refused():
    config = parse(GOOD.replace('"example.org"]', '"Example.ORG"]').replace('domain = "echo.example.org"',
                                                                            'domain = "Echo.Example.org"'))
    assert config.gateway["allowed_domains"] == ["example.org"]
    assert config.components[0].domain == "echo.example.org"


def test_the_shipped_example_only_lacks_its_placeholders():
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = cli("check-config", os.path.join(root, "deploy", "gateway.toml"))
    assert result.returncode != 0
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    assert complaints and all("placeholder" in line for line in complaints[1:] or complaints), result.stderr


def test_unknown_names_get_the_closest_known_one():
    found = problems(GOOD.replace("allowed_domains", "allowed_domain").replace("[registry]", "[registy]")
                     .replace('adapter = "echo"', 'adapter = "ecko"'))
    assert found["gateway.allowed_domain"] == (3, "unknown key; did you mean `allowed_domains`?")
    assert found["registy"][1] == "unknown section; did you mean `registry`?" and found["registy"][0] == 6
    assert found["components[0].adapter"][1].endswith("did you mean `echo`?")
    assert problems(GOOD.replace("delay", "dleay"))["components[0].options.dleay"][1] == \
        "unknown key; did you mean `delay`?"
    assert problems(GOOD.replace("delay", "zzz"))["components[0].options.zzz"][1] == "unknown key"


def test_one_mistake_is_reported_once():
    """A misspelt key, section or adapter is the cause; what follows from it is not reported again."""
    found = problems(GOOD.replace('domain = "echo', 'domian = "echo'))
    assert set(found) == {"components[0].domian"}                    # not also "domain: is required"
    found = problems(GOOD.replace("[[components]]", "[[componets]]").replace("[components.options]", "")
                     .replace("delay = 0.5", ""))
    assert set(found) == {"componets"} and found["componets"][0] == 10
    found = problems(GOOD.replace('adapter = "echo"', 'adapter = "nosuch"') + "also_unknown = 1\n")
    assert set(found) == {"components[0].adapter"}                    # its options are not judged
