"""Starting and stopping a server process, and waiting until it is ready."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Callable


def read_text(path: str) -> str:
    """A server's log or state file as text so far; empty while it does not exist."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


#: Under pytest-xdist each worker (PYTEST_XDIST_WORKER=gwN of PYTEST_XDIST_WORKER_COUNT, inherited by
#: what it starts) takes its ports from its own share of 10000-32767, below the kernel's ephemeral
#: range (32768-60999 on Linux): a port one worker picked but has not bound yet cannot be picked by
#: another worker, nor be the source port of someone's outgoing connection. The shares are as large
#: as the workers allow (11384 ports each for two), so another suite running beside this one rarely
#: meets the same port, as with the kernel's own choice.
_PORTS_LOW, _PORTS_HIGH = 10000, 32768
_next_port: list[int] = []


def _worker_block() -> range | None:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not worker[2:].isdigit():
        return None
    count = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    count = max(int(count) if count.isdigit() else 1, int(worker[2:]) + 1)
    size = (_PORTS_HIGH - _PORTS_LOW) // count
    start = _PORTS_LOW + int(worker[2:]) * size
    return range(start, start + size)


def free_port() -> int:
    """A loopback TCP port nothing listens on now (and, in one process, not handed out recently)."""
    block = _worker_block()
    if block is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return s.getsockname()[1]
    if not _next_port:
        # A random start: processes a worker starts (the demo...) begin elsewhere in the block.
        _next_port.append(block.start + int.from_bytes(os.urandom(2), "big") % len(block))
    for _ in range(len(block)):
        port = _next_port[0]
        _next_port[0] = block.start + (port + 1 - block.start) % len(block)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))        # no SO_REUSEADDR: a port in TIME_WAIT is skipped too
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {block}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, proc=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with status {proc.returncode}")
        time.sleep(0.02)
    raise TimeoutError(f"{what}: not ready after {timeout} s")


def make_dir(path: str, mode: int = 0o755) -> str:
    """A directory servers that drop privileges can reach (pytest's tmp dirs are 0700)."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, mode)
    return path


class Server:
    """One foreground server process with a log file."""

    def __init__(self, name: str, argv: list[str], logfile: str, stop_signal: int = signal.SIGTERM,
                 env: dict | None = None, cwd: str | None = None, **popen):
        self.name = name
        self.argv = argv
        self.logfile = logfile
        self.stop_signal = stop_signal
        self.env = env
        self.cwd = cwd
        self.popen = popen
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Server":
        log = open(self.logfile, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=self.env, cwd=self.cwd, **self.popen)
        log.close()
        return self

    def log(self) -> str:
        return read_text(self.logfile)

    def wait_log(self, text: str, timeout: float = 15.0, fail: str | None = None, since: int = 0,
                 count: int = 1) -> None:
        """Wait until ``text`` appears ``count`` times in the log after offset ``since``."""
        def ready():
            content = self.log()[since:]
            if fail and fail in content:
                raise RuntimeError(f"{self.name}: {fail!r} in its log:\n{content[-2000:]}")
            return content.count(text) >= count

        try:
            wait_for(ready, timeout, f"{self.name} ({text!r})", self.proc)
        except (TimeoutError, RuntimeError) as e:
            raise type(e)(f"{e}\n--- end of {self.name}'s log ---\n{self.log()[-3000:]}") from None

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.send_signal(self.stop_signal)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(5)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
