"""
What an operator gets from the built wheel and sdist, tested from a fresh venv.

The fresh venv sees the test venv's dependencies through a farm of symlinks that
leaves out everything of this project (its package, its twistd plugin, its
metadata), and runs with a scratch working directory and no PYTHONPATH: what
works there works because the wheel carries it.
"""

import os
import signal
import subprocess
import sys
import sysconfig
import tarfile
import zipfile

import pytest

from gateway.testing.process import wait_for
from tests.conftest import ROOT
from tests.integration.conftest import COMPONENTS
from tests.integration.harness import free_port, http_get, write_config

OURS = ("gateway", "xmpp_gateway", "__editable__", "_xmpp_gateway")


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """The wheel and sdist built from this checkout, the way a release is built."""
    out = str(tmp_path_factory.mktemp("dist"))
    subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], check=True,
                   cwd=out, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=300)
    names = os.listdir(out)
    wheel = next(os.path.join(out, n) for n in names if n.endswith(".whl"))
    sdist = next(os.path.join(out, n) for n in names if n.endswith(".tar.gz"))
    return wheel, sdist


def _farm(src: str, dst: str, skip) -> None:
    """Symlink every entry of ``src`` into ``dst`` except those ``skip`` names."""
    os.makedirs(dst, exist_ok=True)
    for name in os.listdir(src):
        if not skip(name):
            os.symlink(os.path.join(src, name), os.path.join(dst, name))


@pytest.fixture(scope="module")
def venv(dist, tmp_path_factory):
    """A new venv with only the wheel installed from this project."""
    base = tmp_path_factory.mktemp("venv")
    deps = str(base / "deps")
    site = sysconfig.get_paths()["purelib"]
    _farm(site, deps, lambda n: n.startswith(OURS) or n in ("twisted",) or n.endswith(".pth"))
    twisted_dir = os.path.join(site, "twisted")
    _farm(twisted_dir, os.path.join(deps, "twisted"), lambda n: n == "plugins")
    _farm(os.path.join(twisted_dir, "plugins"), os.path.join(deps, "twisted", "plugins"),
          lambda n: n.startswith("xmpp_gateway") or n == "dropin.cache")
    env_dir = str(base / "env")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", env_dir], check=True, timeout=120)
    new_site = subprocess.run([os.path.join(env_dir, "bin", "python"), "-c",
                               "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              check=True, capture_output=True, text=True).stdout.strip()
    with open(os.path.join(new_site, "test-deps.pth"), "w") as f:
        f.write(deps + "\n")
    clean = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-m", "pip", "--python", os.path.join(env_dir, "bin", "python"), "install",
                    "-q", "--no-deps", "--no-index", dist[0]], check=True, timeout=300, env=clean, cwd=str(base))
    # Twisted's own console script, as installing Twisted into this venv would have made it.
    twistd = os.path.join(env_dir, "bin", "twistd")
    with open(twistd, "w") as f:
        f.write(f"#!{env_dir}/bin/python\nimport sys\nfrom twisted.scripts.twistd import run\nsys.exit(run())\n")
    os.chmod(twistd, 0o755)
    return env_dir


def in_venv(venv: str, *args: str, cwd: str, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.path.join(venv, "bin") + os.pathsep + env.get("PATH", "")
    return subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=120, **kw)


def test_the_wheel_and_sdist_carry_everything(dist):
    wheel, sdist = dist
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("twisted/plugins/xmpp_gateway_plugin.py", "gateway/data/gateway.toml", "gateway/data/smtp-port-25.conf",
                   "gateway/data/xmpp-gateway.service", "gateway/data/prosody-component.cfg.lua",
                   "gateway/data/ejabberd-component.yml", "gateway/py.typed", "gateway/cli.py"):
        assert needed in names, needed
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names)
    assert not any("dropin.cache" in n or "__pycache__" in n or n.startswith("tests/") for n in names)
    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("METADATA"))).decode()
    from gateway import __version__
    assert f"Version: {__version__}" in meta
    assert "Classifier: Framework :: Twisted" in meta and "Project-URL:" in meta
    # The licence as metadata, not as a classifier: current setuptools prints a deprecation banner for
    # licence classifiers (in favour of an SPDX expression), and installs must not print one.
    lines = meta.splitlines()
    assert "License: MIT" in lines or "License-Expression: MIT" in lines, meta[:3000]
    assert not any(line.startswith("Classifier: License ::") for line in lines)
    assert "Project-URL: Source, https://pypi.org/project/xmpp-gateway/#files" in meta.splitlines(), meta[:3000]
    members = tarfile.open(sdist).getnames()
    top = members[0].split("/")[0]
    for needed in ("LICENSE", "constraints.txt", "tests/integration/test_packaging.py", "docs/install.md",
                   "deploy/gateway.toml", "deploy/xmpp-gateway.service", "scripts/install.sh",
                   "twisted/plugins/xmpp_gateway_plugin.py", "gateway/data/gateway.toml"):
        assert f"{top}/{needed}" in members, needed


def test_the_deploy_files_are_the_shipped_ones():
    """deploy/ is what docs point at; the package data is what a wheel user gets: one source."""
    for name in ("gateway.toml", "xmpp-gateway.service", "prosody-component.cfg.lua", "ejabberd-component.yml"):
        with open(os.path.join(ROOT, "deploy", name), "rb") as a, \
                open(os.path.join(ROOT, "gateway", "data", name), "rb") as b:
            assert a.read() == b.read(), name


def test_the_installed_wheel_runs_its_commands(venv, tmp_path):
    cwd = str(tmp_path)
    where = in_venv(venv, "python", "-c", "import gateway, twisted.plugins.xmpp_gateway_plugin as p; "
                    "print(gateway.__file__); print(p.__file__)", cwd=cwd)
    assert where.returncode == 0, where.stderr
    assert all(line.startswith(venv) for line in where.stdout.split()), where.stdout
    help_ = in_venv(venv, "xmpp-gateway", "--help", cwd=cwd)
    assert help_.returncode == 0 and "check-config" in help_.stdout and "example-config" in help_.stdout
    example = in_venv(venv, "xmpp-gateway", "example-config", cwd=cwd)
    with open(os.path.join(ROOT, "deploy", "gateway.toml"), encoding="utf-8") as f:
        assert example.stdout == f.read()
    unit = in_venv(venv, "xmpp-gateway", "example-config", "systemd", cwd=cwd)
    assert "[Service]" in unit.stdout
    path = os.path.join(cwd, "gateway.toml")
    with open(path, "w") as f:
        f.write(example.stdout)
    checked = in_venv(venv, "xmpp-gateway", "check-config", path, cwd=cwd)
    assert checked.returncode == 1 and checked.stderr.count("CHANGE-ME") == 2, checked.stderr
    with open(path, "w") as f:
        f.write(example.stdout.replace("CHANGE-ME-component-secret", "a-real-secret-of-enough-length")
                .replace("CHANGE-ME", "a passphrase of enough length"))
    checked = in_venv(venv, "xmpp-gateway", "check-config", path, cwd=cwd)
    assert checked.returncode == 0 and "OK" in checked.stdout, checked.stdout + checked.stderr


def test_twistd_from_the_wheel_connects_to_prosody(venv, prosody, tmp_path):
    cwd = str(tmp_path)
    config = os.path.join(cwd, "wheel.toml")
    web_port = free_port()
    write_config(config, components=[{"domain": "wheel.localhost", "secret": COMPONENTS["wheel.localhost"],
                                      "adapter": "echo"}], xmpp_port=prosody.component_port,
                 registry_url=f"sqlite:///{cwd}/wheel.sqlite", web_port=web_port)
    log = os.path.join(cwd, "twistd.log")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.Popen([os.path.join(venv, "bin", "twistd"), "-n", "--pidfile=", "--logfile", log,
                             "xmpp-gateway", "--config", config], cwd=cwd, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: os.path.exists(log) and "wheel.localhost: authenticated" in open(log).read()
                 and http_get(f"http://127.0.0.1:{web_port}/healthz")[0] == 200, 60, "twistd from the wheel", proc)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    assert "Traceback" not in open(log).read()
