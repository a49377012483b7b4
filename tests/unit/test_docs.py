"""Configuration examples in the docs are what operators copy: each must be valid TOML."""

import glob
import os
import re
import tomllib

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BLOCKS = [(os.path.relpath(path, ROOT), i, m.group(1))
          for path in sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")) + [os.path.join(ROOT, "README.md")])
          for i, m in enumerate(re.finditer(r"```toml\n(.*?)```", open(path, encoding="utf-8").read(), re.S))]


@pytest.mark.parametrize("path,index,text", BLOCKS, ids=[f"{p}#{i}" for p, i, _ in BLOCKS])
def test_toml_examples_parse(path, index, text):
    tomllib.loads(text)
