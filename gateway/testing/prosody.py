"""A Prosody 0.12 on loopback with components, for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess

from gateway.testing.process import Server, free_port, make_dir

CONFIG = """-- Written by xmpp-gateway's test harness: loopback only, no TLS, no rate limits.
{run_as_root}
data_path = "{dir}/data"
certificates = "{dir}/certs"
pidfile = "{dir}/prosody.pid"
log = {{ {{ levels = {{ min = "{level}" }}, to = "console" }} }}
interfaces = {{ "127.0.0.1" }}
network_settings = {{ tcp_backlog = 1024 }}
c2s_ports = {{ {c2s} }}
c2s_interfaces = {{ "127.0.0.1" }}
component_ports = {{ {component} }}
component_interfaces = {{ "127.0.0.1" }}
c2s_direct_tls_ports = {{ }}
legacy_ssl_ports = {{ }}
modules_enabled = {{ "roster"; "saslauth"; "disco"; "ping"; "presence"; "message"; "iq";{modules} }}
modules_disabled = {{ "s2s" }}
c2s_require_encryption = false
allow_unencrypted_plain_auth = true
authentication = "internal_plain"
storage = "internal"

VirtualHost "{host}"
{host_config}
{extra_hosts}
{components}
"""


def prosody_binary() -> str:
    path = shutil.which("prosody")
    if not path:
        raise RuntimeError("Prosody is not installed (apt-get install prosody)")
    return path


class Prosody:
    def __init__(self, workdir: str, components: dict[str, str], host: str = "localhost",
                 extra_hosts: tuple[str, ...] = (), level: str = "info", snippet_path: str | None = None,
                 c2s_port: int | None = None, modules: tuple[str, ...] = (), run_as: str | None = None,
                 host_config: str = "", component_config: dict[str, str] | None = None):
        self.dir = make_dir(workdir)
        #: A system user to run Prosody (and prosodyctl) as when started by root: the demo's
        #: choice, so a server anyone can log in to does not run with root's privileges.
        self.run_as = run_as if run_as and os.geteuid() == 0 else None
        self.host = host
        self.extra_hosts = extra_hosts
        self.components = components
        self.c2s_port = c2s_port or free_port()
        self.component_port = free_port()
        self.level = level
        self.snippet_path = snippet_path
        self.modules = modules
        #: Lines for the main VirtualHost (e.g. mod_privilege's ``privileged_entities``).
        self.host_config = host_config
        #: Extra lines per component domain (e.g. ``modules_enabled = { "privilege" }``).
        self.component_config = component_config or {}
        self.config_path = os.path.join(self.dir, "prosody.cfg.lua")
        self.server: Server | None = None
        make_dir(os.path.join(self.dir, "data"))
        make_dir(os.path.join(self.dir, "certs"))
        self._write_config()
        if self.run_as:
            import pwd

            entry = pwd.getpwnam(self.run_as)
            self._ids = {"user": entry.pw_uid, "group": entry.pw_gid}
            for root, dirs, files in os.walk(self.dir):
                for name in [root, *(os.path.join(root, n) for n in dirs + files)]:
                    os.chown(name, entry.pw_uid, entry.pw_gid)
        else:
            self._ids = {}

    def _components_text(self) -> str:
        if self.snippet_path:
            # The operator's snippet from deploy/, with our domains and secrets put in.
            with open(self.snippet_path, encoding="utf-8") as f:
                template = f.read()
            blocks = []
            for domain, secret in self.components.items():
                block = template.split("-- BEGIN COMPONENT", 1)[1].split("-- END COMPONENT", 1)[0]
                blocks.append(block.replace("sms.example.org", domain).replace("CHANGE-ME-component-secret", secret))
            return "\n".join(blocks)
        return "\n".join(f'Component "{d}"\n  component_secret = "{s}"\n' + self.component_config.get(d, "")
                         for d, s in self.components.items())

    def _write_config(self) -> None:
        text = CONFIG.format(run_as_root="" if self.run_as else "run_as_root = true", dir=self.dir, level=self.level, c2s=self.c2s_port, component=self.component_port,
                             host=self.host, host_config=self.host_config, components=self._components_text(),
                             modules="".join(f' "{m}";' for m in self.modules),
                             extra_hosts="\n".join(f'VirtualHost "{h}"' for h in self.extra_hosts))
        with open(self.config_path, "w", encoding="utf-8") as f:
            f.write(text)

    def start(self) -> "Prosody":
        self.server = Server("prosody", [prosody_binary(), "--config", self.config_path, "-F"],
                             os.path.join(self.dir, "prosody.log"), **self._ids)
        since = len(self.server.log())
        self.server.start()
        try:
            for service, port in (("component", self.component_port), ("c2s", self.c2s_port)):
                self.server.wait_log(f"Activated service '{service}' on [127.0.0.1]:{port}",
                                     fail="Failed to open server port", since=since)
        except Exception:
            self.server.stop()
            raise
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def kill(self) -> None:
        """SIGKILL: no goodbye to anyone, buffers in the process lost."""
        if self.server:
            self.server.kill()

    def pause(self) -> None:
        """SIGSTOP: the sockets stay open and the kernel buffers fill, but nothing is read (a half-open link)."""
        os.killpg(self.server.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.server.proc.pid, signal.SIGCONT)

    def register(self, user: str, password: str, host: str | None = None) -> str:
        subprocess.run(["prosodyctl", "--config", self.config_path, "register", user, host or self.host, password],
                       check=True, capture_output=True, **self._ids)
        return f"{user}@{host or self.host}"
