"""
Configuration examples in the docs are what operators copy: each must be valid
TOML, and valid to check-config once placed in a whole config.

A block that is a whole config is checked as it is. A fragment is merged into
the shipped example (deploy/gateway.toml, placeholders filled in): its sections
replace the example's keys, its [[components]] replace the example's component.
A block of bare adapter options says where it goes in its first line:
`# in the [components.options] of an "sms" component`. Secrets it reads from
files or the environment are provided.
"""

import glob
import os
import re
import tomllib

import pytest

from gateway.config import ConfigError, validate

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCKS = [(os.path.relpath(path, ROOT), i, m.group(1))
          for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + glob.glob(os.path.join(ROOT, "deploy", "*.md"))
                             + [os.path.join(ROOT, "README.md")])
          for i, m in enumerate(re.finditer(r"```toml\n(.*?)```", open(path, encoding="utf-8").read(), re.S))]
OPTIONS_OF = re.compile(r'^# in the \[components\.options\] of an? "(\w+)" component')


def example() -> dict:
    with open(os.path.join(ROOT, "deploy", "gateway.toml"), encoding="utf-8") as f:
        text = f.read()
    return tomllib.loads(text.replace("CHANGE-ME-to-the-output-of-xmpp-gateway-genkey", "a passphrase long enough")
                         .replace("CHANGE-ME-component-secret", "a-component-secret"))


def place(block: dict, first_line: str) -> dict:
    """The block inside a whole config, as an operator would put it."""
    config = example()
    where = OPTIONS_OF.match(first_line)
    if where:
        # Its own [components.options.x] tables belong to the same options.
        block = dict(block)
        block |= block.pop("components", {}).get("options", {})
        return config | {"components": [{"domain": "x.example.org", "secret": "a-component-secret",
                                         "adapter": where.group(1), "options": block}]}
    for name, value in block.items():
        if name == "components":
            config["components"] = value
        elif isinstance(value, dict):
            config[name] = config.get(name, {}) | value
        else:
            config[name] = value
    return config


def provide_secrets(node, tmp_path, monkeypatch):
    """{file = P} and {env = V}: a file with a value, a variable with a value."""
    if isinstance(node, dict):
        if set(node) == {"file"}:
            path = tmp_path / os.path.basename(node["file"])
            path.write_text("a-secret-value-from-a-file\n")
            return {"file": str(path)}
        if set(node) == {"env"}:
            monkeypatch.setenv(node["env"], "a-secret-value-from-the-environment")
            return node
        return {k: provide_secrets(v, tmp_path, monkeypatch) for k, v in node.items()}
    if isinstance(node, list):
        return [provide_secrets(v, tmp_path, monkeypatch) for v in node]
    return node


@pytest.mark.parametrize("path,index,text", BLOCKS, ids=[f"{p}#{i}" for p, i, _ in BLOCKS])
def test_toml_examples_pass_check_config(path, index, text, tmp_path, monkeypatch):
    block = tomllib.loads(text)
    config = provide_secrets(place(block, text.splitlines()[0]), tmp_path, monkeypatch)
    try:
        validate(config)
    except ConfigError as e:
        raise AssertionError(f"{path}, toml block {index}:\n{e}") from None


def test_every_block_is_checked():
    assert len(BLOCKS) >= 6
    assert any(OPTIONS_OF.match(text.splitlines()[0]) for _, _, text in BLOCKS)
