"""One opened registry per test, on SQLite or a fresh PostgreSQL database, for
modules whose fixture is parametrised over both (``params=["sqlite", "postgresql"]``)."""

from __future__ import annotations

import itertools

import pytest_twisted

from gateway.registry import SQLRegistry

_dbs = itertools.count()


def open_either(request, fresh_dir: str, key: bytes, name: str, instance_id: str | None = None) -> SQLRegistry:
    """The registry the fixture's param names, opened; closed when the test ends."""
    if request.param == "sqlite":
        url = f"sqlite:///{fresh_dir}/registry.sqlite"
    else:
        url = request.getfixturevalue("postgresql").create_database(f"{name}_{next(_dbs)}")
    reg = SQLRegistry(url, key, instance_id=instance_id or f"test-{name}", lease=60)
    pytest_twisted.blockon(reg.open())
    request.addfinalizer(reg.close)
    return reg
