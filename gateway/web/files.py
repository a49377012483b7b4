"""
Files the gateway offers users as links (email attachments, and later MMS media):
stored under an unguessable token, served at /files/<token>/<name> until they
expire, then swept. Disk work runs in a thread so the reactor never waits on it.
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

from twisted.internet import task, threads
from twisted.logger import Logger
from twisted.web import resource, static

log = Logger(namespace="gateway.web.files")

#: Types a browser may show inline; anything else is served as a download, so a stored
#: HTML or SVG file can never run script in the gateway's origin.
INLINE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp", "text/plain", "audio/mpeg",
                          "audio/ogg", "video/mp4", "application/pdf"})


def safe_name(name: str | None, content_type: str | None) -> str:
    name = os.path.basename((name or "").replace("\\", "/")).strip()
    name = re.sub(r"[^\w.\- ]+", "_", name)[:100].strip(" .")
    if not name:
        ext = mimetypes.guess_extension(content_type or "") or ".bin"
        name = "attachment" + ext
    return name


class FileStore:
    def __init__(self, directory: str, public_url: str, expiry_days: float, reactor):
        self.directory = directory
        self.public_url = public_url.rstrip("/")
        self.expiry = expiry_days * 86400
        self.reactor = reactor
        self._sweeper: task.LoopingCall | None = None

    def _write(self, data: bytes, name: str, content_type: str) -> str:
        token = secrets.token_urlsafe(24)
        folder = os.path.join(self.directory, token)
        os.makedirs(folder, mode=0o750)
        with open(os.path.join(folder, name), "wb") as f:
            f.write(data)
        with open(os.path.join(folder, ".meta"), "w") as f:
            json.dump({"name": name, "type": content_type, "expires": time.time() + self.expiry}, f)
        return f"{self.public_url}/files/{token}/{urllib.parse.quote(name)}"

    def put(self, data: bytes, name: str | None, content_type: str | None):
        """Store a file; a Deferred firing with its public URL."""
        name = safe_name(name, content_type)
        return threads.deferToThread(self._write, data, name, content_type or "application/octet-stream")

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

    def sweep(self) -> int:
        """Delete expired files (runs in a thread)."""
        removed = 0
        now = time.time()
        try:
            tokens = os.listdir(self.directory)
        except OSError:
            return 0
        for token in tokens:
            try:
                with open(os.path.join(self.directory, token, ".meta")) as f:
                    expires = json.load(f).get("expires", 0)
            except (OSError, ValueError):
                continue
            if expires < now:
                shutil.rmtree(os.path.join(self.directory, token), ignore_errors=True)
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
            return resource.NoResource()
        found = self.store.lookup(token.decode("latin-1"), urllib.parse.unquote(rest[0].decode("latin-1")))
        if found is None:
            return resource.NoResource()
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
