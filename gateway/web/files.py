"""
Files the gateway offers users as links (email attachments, and later MMS media):
stored under an unguessable token, served at /files/<token>/<name> until they
expire, then swept. Disk work runs in a thread so the reactor never waits on it.

A file is on disk (data, metadata and the directory entries naming them, all
fsynced) before ``put`` fires: callers acknowledge what they stored (an SMTP
250), and a link in a durable message must not point at data a power cut lost.
"""

from __future__ import annotations

import json
import mimetypes
import os
import re
import secrets
import shutil
import time
import urllib.parse

from twisted.internet import defer, task, threads
from twisted.logger import Logger
from twisted.web import pages, resource, static

log = Logger(namespace="gateway.web.files")

#: Types a browser may show inline; anything else is served as a download, so a stored
#: HTML or SVG file can never run script in the gateway's origin.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain", "audio/mpeg",
                          "audio/ogg", "video/mp4", "application/pdf"})


#: A media type as RFC 6838 names them (``type/subtype``, restricted-name characters), nothing more.
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}", re.ASCII)


def plain_type(content_type: str | None) -> str:
    """
    A file's media type fit for an XML attribute and an HTTP header: the
    network's (a mail part's, which may hold control characters) when it is a
    plain type/subtype, else application/octet-stream.
    """
    value = (content_type or "").partition(";")[0].strip().lower()
    return value if _MEDIA_TYPE.fullmatch(value) else "application/octet-stream"


def safe_name(name: str | None, content_type: str | None) -> str:
    name = os.path.basename((name or "").replace("\\", "/")).strip()
    name = re.sub(r"[^\w.\- ]+", "_", name)[:100].strip(" .")
    if not name:
        ext = mimetypes.guess_extension(content_type or "") or ".bin"
        name = "attachment" + ext
    return name


def _fsync_dir(path: str) -> None:
    """Make a directory's entries durable: a file fsynced under a name not on disk is lost all the same."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class FileStore:
    #: A token folder without readable metadata this old is a write a crash cut
    #: short; younger ones may still be being written.
    ABANDONED_AFTER = 86400

    def __init__(self, directory: str, public_url: str, expiry_days: float, reactor):
        self.directory = directory
        self.public_url = public_url.rstrip("/")
        self.expiry = expiry_days * 86400
        self.reactor = reactor
        self._sweeper: task.LoopingCall | None = None
        self._root_durable = False

    def _write(self, data: bytes, name: str, content_type: str) -> str:
        token = secrets.token_urlsafe(24)
        folder = os.path.join(self.directory, token)
        os.makedirs(folder, mode=0o750)
        try:
            # The data first: .meta makes a file servable, so it must never
            # reach the disk ahead of the data it describes.
            _write_durably(os.path.join(folder, name), data)
            meta = {"name": name, "type": content_type, "expires": time.time() + self.expiry}
            _write_durably(os.path.join(folder, ".meta"), json.dumps(meta).encode())
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)     # a full disk must not leave half a file behind
            raise
        _fsync_dir(self.directory)
        if not self._root_durable:
            # start() may just have created the store's directory itself
            _fsync_dir(os.path.dirname(os.path.abspath(self.directory)))
            self._root_durable = True
        return f"{self.public_url}/files/{token}/{urllib.parse.quote(name)}"

    def put(self, data: bytes, name: str | None, content_type: str | None) -> defer.Deferred:
        """Store a file; a Deferred firing with its public URL once the file is durably on disk."""
        content_type = plain_type(content_type)
        name = safe_name(name, content_type)
        return threads.deferToThread(self._write, data, name, content_type)

    def _token_of(self, url: str) -> str | None:
        prefix = f"{self.public_url}/files/"
        if not url.startswith(prefix):
            return None
        token = url[len(prefix):].partition("/")[0]
        return token if re.fullmatch(r"[\w-]{20,64}", token) else None

    def _remove(self, tokens: list[str]) -> None:
        for token in tokens:
            shutil.rmtree(os.path.join(self.directory, token), ignore_errors=True)

    def discard(self, urls: list[str]) -> defer.Deferred:
        """
        Remove files ``put`` stored for something that then failed (a mail the
        sender will send again): retries would otherwise pile up copies nobody
        links to until they expire. URLs not from this store are ignored.
        """
        tokens = [t for t in map(self._token_of, urls) if t]
        if not tokens:
            return defer.succeed(None)
        return threads.deferToThread(self._remove, tokens)

    def lookup(self, token: str, name: str) -> tuple[str, dict] | None:
        if not re.fullmatch(r"[\w-]{20,64}", token):
            return None
        folder = os.path.join(self.directory, token)
        try:
            with open(os.path.join(folder, ".meta")) as f:
                meta = json.load(f)
        except (OSError, ValueError):
            return None
        if meta.get("name") != name or meta.get("expires", 0) < time.time():
            return None
        return os.path.join(folder, name), meta

    def _expired(self, folder: str, now: float) -> bool:
        try:
            with open(os.path.join(folder, ".meta")) as f:
                return json.load(f).get("expires", 0) < now
        except (OSError, ValueError, AttributeError):
            # No readable metadata: a write a crash cut short, once old enough
            # that it cannot be one still in progress.
            try:
                return os.path.isdir(folder) and os.stat(folder).st_mtime < now - self.ABANDONED_AFTER
            except OSError:
                return False

    def sweep(self) -> int:
        """Delete expired files, and folders a crash left without metadata (runs in a thread)."""
        removed = 0
        now = time.time()
        try:
            tokens = os.listdir(self.directory)
        except OSError:
            return 0
        for token in tokens:
            folder = os.path.join(self.directory, token)
            if self._expired(folder, now):
                shutil.rmtree(folder, ignore_errors=True)
                removed += 1
        return removed

    def start(self) -> None:
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self._sweeper = task.LoopingCall(lambda: threads.deferToThread(self.sweep).addErrback(
            lambda f: log.failure("sweeping expired files failed", f)))
        self._sweeper.clock = self.reactor
        self._sweeper.start(3600, now=True)

    def stop(self) -> None:
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()


class FilesResource(resource.Resource):
    """/files/<token>/<name>: 404 for anything unknown, expired or mistyped."""

    def __init__(self, store: FileStore):
        super().__init__()
        self.store = store

    def getChild(self, token, request):
        rest = request.postpath
        if len(rest) != 1:
            return pages.notFound()
        found = self.store.lookup(token.decode("latin-1"), urllib.parse.unquote(rest[0].decode("latin-1")))
        if found is None:
            return pages.notFound()
        path, meta = found
        request.postpath = []
        f = static.File(path, defaultType=meta["type"])
        f.type = meta["type"]
        f.encoding = None
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"content-security-policy", b"default-src 'none'; sandbox")
        disposition = "inline" if meta["type"] in INLINE_TYPES else "attachment"
        request.setHeader(b"content-disposition",
                          f"{disposition}; filename*=UTF-8''{urllib.parse.quote(meta['name'])}".encode())
        return f
