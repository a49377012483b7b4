"""A throwaway PostgreSQL cluster, run as the ``postgres`` user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess

from gateway.testing.process import Server, free_port, make_dir, wait_for


def _bindir() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    if not found:
        raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
    return os.path.dirname(found[-1])


class PostgreSQL:
    def __init__(self, workdir: str):
        self.workdir = make_dir(workdir)
        self.port = free_port()
        self.server: Server | None = None
        self.bindir = _bindir()

    def _as_postgres(self) -> dict:
        pw = pwd.getpwnam("postgres")
        if os.geteuid() != 0:
            return {}
        return {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}

    def start(self) -> "PostgreSQL":
        data = os.path.join(self.workdir, "data")
        shutil.rmtree(data, ignore_errors=True)
        as_pg = self._as_postgres()
        if as_pg:
            os.chown(self.workdir, as_pg["user"], as_pg["group"])
        subprocess.run([f"{self.bindir}/initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8",
                        "--locale=C.UTF-8", "--no-sync"], check=True, capture_output=True, **as_pg)
        with open(os.path.join(data, "postgresql.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\n"
                    f"unix_socket_directories = '{self.workdir}'\nfsync = off\nsynchronous_commit = off\n"
                    "full_page_writes = off\nmax_connections = 100\nlogging_collector = off\n")
        self.server = Server("postgres", [f"{self.bindir}/postgres", "-D", data],
                             os.path.join(self.workdir, "postgres.log"), stop_signal=signal.SIGINT, **as_pg)
        self.server.start()

        def ready():
            return subprocess.run([f"{self.bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(self.port),
                                   "-U", "postgres"]).returncode == 0

        wait_for(ready, 20, "postgres", self.server.proc)
        return self

    def create_database(self, name: str) -> str:
        subprocess.run([f"{self.bindir}/createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name],
                       check=True, capture_output=True)
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        if self.server:
            self.server.stop()
