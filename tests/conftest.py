"""Shared fixtures: a scratch directory servers can reach, and PostgreSQL."""

import itertools
import os
import shutil
import tempfile

import pytest
from hypothesis import HealthCheck, settings

# Property-based tests: a fixed seed and a bounded example count in the README's
# test command (profile ci); scripts/fuzz-run uses the long profile.
settings.register_profile("ci", max_examples=300, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=20000, derandomize=False, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Every process a test starts (the gateway, twistd, the CLI) runs this checkout's code,
# whatever its working directory and however the package was installed into .venv.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)

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


#: Under pytest-xdist (README's command: ``--dist loadscope --no-loadscope-reorder``) modules are
#: handed to the workers in collection order, so the long ones go first and the many quick unit
#: modules fill the end, and no worker is left with a long fault module while the other idles.
_XDIST_ORDER = ("tests/faults/", "tests/integration/", "tests/hostile/", "tests/unit/")


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return                                  # one process: the order of pytest.ini's testpaths

    def rank(item):
        path = item.nodeid
        return next((i for i, prefix in enumerate(_XDIST_ORDER) if path.startswith(prefix)), len(_XDIST_ORDER))

    items.sort(key=rank)                        # stable: within a directory, the order is unchanged
