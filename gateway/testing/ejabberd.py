"""
An ejabberd 23.01 on loopback, run through erl directly (no su, no epmd daemon).

``balancing`` maps component domains to a ``component_number``: those domains get
``domain_balancing`` with ``type: bare_source`` (each user pinned to one of N
connections, see docs/notes-ejabberd-balancing.md) and each its own
``ejabberd_service`` listener, because every connection on a shared listener
binds routes for every domain of that listener (xmpp-servers-2.md, pitfall 1).
``port_for(domain)`` gives the port a component of that domain connects to.
"""

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
{balancing}acl:
  local:
    user_regexp: ""
{privileged_acl}access_rules:
  local:
    allow: local
  c2s:
    allow: all
{privileged_rule}api_permissions:
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
{privileged_module}"""


def erl_libs() -> str:
    found = glob.glob("/usr/lib/*/ejabberd-*")
    if not found:
        raise RuntimeError("ejabberd is not installed (apt-get install ejabberd)")
    return os.path.dirname(sorted(found)[0])


class Ejabberd:
    def __init__(self, workdir: str, components: dict[str, str], host: str = "localhost",
                 snippet_path: str | None = None, extra_hosts: tuple[str, ...] = (),
                 balancing: dict[str, int] | None = None, privileged: tuple[str, ...] = ()):
        self.dir = make_dir(workdir)
        self.host = host
        self.balancing = dict(balancing or {})
        #: Domains mod_privilege grants roster (both) and message (outgoing) access, each on a
        #: listener of its own: on a shared one the server's answers went to another connection.
        self.privileged = tuple(privileged)
        unknown = (set(self.balancing) | set(self.privileged)) - set(components)
        if unknown:
            raise ValueError(f"balanced or privileged domains without a component secret: {sorted(unknown)}")
        own = [*self.balancing, *(d for d in self.privileged if d not in self.balancing)]
        #: Domains on the shared listener (``component_port``); balanced and privileged ones have their own.
        self.components = {d: s for d, s in components.items() if d not in own}
        self.secrets = dict(components)
        self.c2s_port = free_port()
        self.component_port = free_port()
        self.balanced_ports = {d: free_port() for d in own}
        self.dist_port = free_port()
        self.snippet_path = snippet_path
        self.server: Server | None = None
        for sub in ("db", "log"):
            make_dir(os.path.join(self.dir, sub))
        shutil.copy("/etc/ejabberd/inetrc", os.path.join(self.dir, "inetrc"))
        self.config_path = os.path.join(self.dir, "ejabberd.yml")
        with open(self.config_path, "w", encoding="utf-8") as f:
            hosts = "".join(f"  - {h}\n" for h in (host, *extra_hosts))
            f.write(CONFIG.format(hosts=hosts, c2s=self.c2s_port, service=self._service() + self._balanced_listeners(),
                                  balancing=self._balancing(), **self._privileges()))

    def port_for(self, domain: str) -> int:
        """The component port a connection for ``domain`` uses."""
        return self.balanced_ports.get(domain, self.component_port)

    def _balanced_listeners(self) -> str:
        return "".join(
            f'\n  -\n    port: {port}\n    ip: "127.0.0.1"\n    module: ejabberd_service\n    backlog: 1024\n'
            f'    access: all\n    hosts:\n      "{domain}":\n        password: "{self.secrets[domain]}"'
            for domain, port in self.balanced_ports.items())

    def _privileges(self) -> dict[str, str]:
        if not self.privileged:
            return {"privileged_acl": "", "privileged_rule": "", "privileged_module": ""}
        servers = "".join(f'      - "{d}"\n' for d in self.privileged)
        return {"privileged_acl": f"  privileged_component:\n    server:\n{servers}",
                "privileged_rule": "  privileged:\n    allow: privileged_component\n",
                "privileged_module": "  mod_privilege:\n    roster:\n      both: privileged\n"
                                     "    message:\n      outgoing: privileged\n"}

    def _balancing(self) -> str:
        if not self.balancing:
            return ""
        return "domain_balancing:\n" + "".join(
            f'  "{domain}":\n    type: bare_source\n    component_number: {n}\n'
            for domain, n in self.balancing.items())

    def slots(self, bare_jids: list[str], component_number: int) -> dict[str, int]:
        """
        The slot (1..N) ejabberd's ``bare_source`` balancing gives each bare JID:
        ``erlang:phash2({User, Server, <<>>}, N) + 1``, computed by erl itself.
        """
        terms = ",".join("{<<\"%s\">>,<<\"%s\">>}" % tuple(j.lower().split("@", 1)) for j in bare_jids)
        script = (f"[io:format(\"~s@~s ~p~n\", [U, S, erlang:phash2({{U, S, <<>>}}, {component_number}) + 1])"
                  f" || {{U, S}} <- [{terms}]], init:stop().")
        out = subprocess.run(["/usr/bin/erl", "-noshell", "-eval", script], check=True, capture_output=True,
                             text=True, timeout=60, env={**os.environ, "HOME": self.dir}).stdout
        return {jid: int(slot) for jid, slot in (line.split() for line in out.splitlines() if line.strip())}

    def _service(self) -> str:
        if not self.components:
            return ""
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
            wait_for(lambda: port_open(self.c2s_port) and (not self.components or port_open(self.component_port))
                     and all(port_open(p) for p in self.balanced_ports.values()), 60, "ejabberd", self.server.proc)
        except Exception:
            self.server.stop(timeout=15)
            raise
        return self

    def stop(self) -> None:
        if self.server:
            self.server.stop(timeout=15)

    def restart(self) -> None:
        self.stop()
        wait_for(lambda: not port_open(self.c2s_port), 10, "ejabberd port release")
        self.start()

    def register(self, user: str, password: str, host: str | None = None) -> str:
        argv = ["/usr/bin/erl", "-sname", f"ctl{os.getpid()}@localhost", "-hidden", "-noinput",
                *self._erl_common(), "-dist_listen", "false", "-s", "ejabberd_ctl",
                "-extra", "ejabberd@localhost", "register", user, host or self.host, password]
        subprocess.run(argv, check=True, capture_output=True, env=self._env(), timeout=60)
        return f"{user}@{host or self.host}"
