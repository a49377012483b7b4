"""The file store behind attachment links: durable before it answers, tidy after failures."""

import os
import threading
import time

import pytest
import pytest_twisted
from twisted.internet import reactor

from gateway.web.files import FileStore

PUBLIC = "https://gw.example.org"


@pytest.fixture
def store(tmp_path):
    s = FileStore(str(tmp_path / "files"), PUBLIC, 30, reactor)
    os.makedirs(s.directory)
    return s


def split(url: str) -> tuple[str, str]:
    token, name = url.removeprefix(f"{PUBLIC}/files/").split("/")
    return token, name


@pytest_twisted.inlineCallbacks
def test_put_is_complete_and_fsynced_before_its_deferred_fires(store, monkeypatch):
    synced = []          # (path, whether .meta existed then, on the reactor's thread?)
    real_fsync = os.fsync

    def recording_fsync(fd):
        path = os.readlink(f"/proc/self/fd/{fd}")
        folder = path if os.path.isdir(path) else os.path.dirname(path)
        synced.append((path, os.path.exists(os.path.join(folder, ".meta")),
                       threading.current_thread() is threading.main_thread()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    data = os.urandom(3 * 1024 * 1024)
    url = yield store.put(data, "big report.bin", "application/octet-stream")

    token, name = split(url)
    path, meta = store.lookup(token, "big report.bin")
    with open(path, "rb") as f:
        assert f.read() == data                         # complete when the Deferred fires
    assert meta["type"] == "application/octet-stream"
    folder = os.path.dirname(path)
    paths = [p for p, _, _ in synced]
    # the data, its metadata, the new folder's entries and the folder's own entry
    for wanted in (path, os.path.join(folder, ".meta"), folder, store.directory):
        assert wanted in paths, (wanted, paths)
    # the data is durable before the .meta that makes it servable exists
    assert [had_meta for p, had_meta, _ in synced if p == path] == [False]
    assert not any(on_reactor for _, _, on_reactor in synced)     # never on the reactor's thread


@pytest_twisted.inlineCallbacks
def test_discard_removes_what_put_stored_and_nothing_else(store):
    kept = yield store.put(b"keep me", "a.txt", "text/plain")
    gone = yield store.put(b"drop me", "b.txt", "text/plain")
    yield store.discard([gone, f"{PUBLIC}/files/../../etc/passwd", "https://elsewhere.example/files/x/y"])
    assert store.lookup(*split(gone)) is None
    assert not os.path.exists(os.path.join(store.directory, split(gone)[0]))
    assert store.lookup(*split(kept)) is not None
    assert sorted(os.listdir(store.directory)) == [split(kept)[0]]


def test_sweep_removes_expired_and_long_abandoned_partial_folders(store):
    expired = os.path.join(store.directory, "e" * 32)
    os.makedirs(expired)
    with open(os.path.join(expired, ".meta"), "w") as f:
        f.write('{"name": "x", "type": "text/plain", "expires": 1}')
    partial_old = os.path.join(store.directory, "p" * 32)       # a crash before its .meta was written
    os.makedirs(partial_old)
    with open(os.path.join(partial_old, "x.bin"), "wb") as f:
        f.write(b"half")
    old = time.time() - 2 * 86400
    os.utime(partial_old, (old, old))
    partial_new = os.path.join(store.directory, "n" * 32)       # maybe being written right now
    os.makedirs(partial_new)
    assert store.sweep() == 2
    assert os.listdir(store.directory) == ["n" * 32]


@pytest_twisted.inlineCallbacks
def test_a_failed_write_leaves_nothing_behind(store, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError):
        yield store.put(b"x" * 1000, "a.bin", None)
    assert os.listdir(store.directory) == []
