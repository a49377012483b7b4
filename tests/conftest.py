"""Shared fixtures: a scratch directory servers can reach, and PostgreSQL."""

import itertools
import os
import shutil
import tempfile

import pytest

_counter = itertools.count()


@pytest.fixture(scope="session")
def workdir():
    """A 0755 scratch tree: servers that drop privileges cannot enter pytest's 0700 tmp_path."""
    path = tempfile.mkdtemp(prefix="gwtest-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    if os.environ.get("GW_KEEP_TEST_FILES") != "1":
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgresql(workdir):
    from gateway.testing.postgresql import PostgreSQL

    pg = PostgreSQL(os.path.join(workdir, "pg")).start()
    yield pg
    pg.stop()


@pytest.fixture
def fresh_dir(workdir):
    path = os.path.join(workdir, f"t{next(_counter)}")
    os.makedirs(path)
    os.chmod(path, 0o755)
    return path
