"""An ejabberd 23.01 on loopback, run through erl directly (no su, no epmd daemon)."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

from gateway.testing.process import Server, free_port, make_dir, port_open, wait_for

CONFIG = """# Written by xmpp-gateway's test harness: loopback only, no TLS, no shapers.
hosts:
{hosts}
loglevel: info
log_rotate_count: 0
hide_sensitive_log_data: true
certfiles: []
auth_method: internal
auth_password_format: plain
listen:
  -
    port: {c2s}
    ip: "127.0.0.1"
    module: ejabberd_c2s
    backlog: 1024
    max_stanza_size: 262144
    access: c2s
    starttls: false
    starttls_required: false
{service}
acl:
  local:
    user_regexp: ""
access_rules:
  local:
    allow: local
  c2s:
    allow: all
api_permissions:
  "console commands":
    from:
      - ejabberd_ctl
    who: all
    what: "*"
shaper_rules:
  max_user_sessions: 100
modules:
  mod_disco: {{}}
  mod_roster: {{}}
  mod_ping: {{}}
  mod_admin_extra: {{}}
  mod_offline: {{}}
"""


def erl_libs() -> str:
    found = glob.glob("/usr/lib/*/ejabberd-*")
    if not found:
        raise RuntimeError("ejabberd is not installed (apt-get install ejabberd)")
    return os.path.dirname(sorted(found)[0])


class Ejabberd:
    def __init__(self, workdir: str, components: dict[str, str], host: str = "localhost",
                 snippet_path: str | None = None, extra_hosts: tuple[str, ...] = ()):
        self.dir = make_dir(workdir)
        self.host = host
        self.components = components
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.dist_port = free_port()
        self.snippet_path = snippet_path
        self.server: Server | None = None
        for sub in ("db", "log"):
            make_dir(os.path.join(self.dir, sub))
        shutil.copy("/etc/ejabberd/inetrc", os.path.join(self.dir, "inetrc"))
        self.config_path = os.path.join(self.dir, "ejabberd.yml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            hosts = "".join(f"  - {h}\n" for h in (host, *extra_hosts))
            f.write(CONFIG.format(hosts=hosts, c2s=self.c2s_port, service=self._service()))

    def _service(self) -> str:
        if self.snippet_path:
            with open(self.snippet_path, encoding="utf-8") as f:
                template = f.read().split("# BEGIN LISTENER\n", 1)[1].split("# END LISTENER", 1)[0]
            hosts = "".join(f'      "{d}":\n        password: "{s}"\n' for d, s in self.components.items())
            return (template.replace("5347", str(self.component_port))
                    .split("    hosts:\n", 1)[0] + "    hosts:\n" + hosts)
        hosts = "".join(f'      "{d}":\n        password: "{s}"\n' for d, s in self.components.items())
        return (f'  -\n    port: {self.component_port}\n    ip: "127.0.0.1"\n    module: ejabberd_service\n'
                f"    backlog: 1024\n    access: all\n    hosts:\n{hosts}")

    def _env(self) -> dict:
        env = dict(os.environ)
        env.update({
            "EJABBERD_CONFIG_PATH": self.config_path,
            "EJABBERD_LOG_PATH": os.path.join(self.dir, "log", "ejabberd.log"),
            "EJABBERD_PID_PATH": os.path.join(self.dir, "ejabberd.pid"),
            "ERL_LIBS": erl_libs(), "ERL_INETRC": os.path.join(self.dir, "inetrc"),
            "ERL_CRASH_DUMP": os.path.join(self.dir, "log", "erl_crash.dump"),
            "ERL_MAX_PORTS": "32000", "ERL_MAX_ETS_TABLES": "1400", "HOME": self.dir,
        })
        return env

    def _erl_common(self) -> list[str]:
        return ["-setcookie", "gwtest", "-erl_epmd_port", str(self.dist_port), "-start_epmd", "false"]

    def start(self) -> "Ejabberd":
        argv = ["/usr/bin/erl", "-sname", "ejabberd@localhost", "+K", "true", "+P", "250000",
                "-env", "ERL_CRASH_DUMP_BYTES", "0", *self._erl_common(),
                "-kernel", "inet_dist_use_interface", "{127,0,0,1}",
                "-mnesia", "dir", f'"{os.path.join(self.dir, "db")}"',
                "-ejabberd", "log_rotate_count", "0", "-s", "ejabberd", "-noinput"]
        self.server = Server("ejabberd", argv, os.path.join(self.dir, "stdout.log"), env=self._env(),
                             cwd=os.path.join(self.dir, "db"))
        self.server.start()
        try:
            wait_for(lambda: port_open(self.c2s_port) and port_open(self.component_port), 60, "ejabberd",
                     self.server.proc)
        except Exception:
            self.server.stop(timeout=15)
            raise
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop(timeout=15)

    def restart(self) -> None:
        self.stop()
        wait_for(lambda: not port_open(self.component_port), 10, "ejabberd port release")
        self.start()

    def register(self, user: str, password: str, host: str | None = None) -> str:
        argv = ["/usr/bin/erl", "-sname", f"ctl{os.getpid()}@localhost", "-hidden", "-noinput",
                *self._erl_common(), "-dist_listen", "false", "-s", "ejabberd_ctl",
                "-extra", "ejabberd@localhost", "register", user, host or self.host, password]
        subprocess.run(argv, check=True, capture_output=True, env=self._env(), timeout=60)
        return f"{user}@{host or self.host}"
