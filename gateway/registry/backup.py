"""
``xmpp-gateway backup``: a consistent copy of a SQLite registry while the gateway runs.

SQLite's online backup API copies the database page by page under a read
transaction, so the copy is one moment of the database (queue rows and
registrations together) even with the gateway writing; a plain file copy of a
WAL database is not. The copy is written beside the target and renamed over it,
mode 0600 from its first byte: it holds users' sealed secrets and queued messages.
PostgreSQL registries are backed up with pg_dump (docs/operations.md).
"""

from __future__ import annotations

import os
import sqlite3

from gateway.registry.migrations import MIGRATIONS


class SchemaTooNew(Exception):
    """The database was migrated by a newer gateway: this code would misread or damage it."""


def check_schema(applied: set[int]) -> None:
    """Refuse a database with migrations this code does not know (no downgrades)."""
    known = {version for version, _ in MIGRATIONS}
    unknown = sorted(applied - known)
    if unknown:
        raise SchemaTooNew(
            f"the registry's schema has migration(s) {', '.join(map(str, unknown))}, newer than this "
            f"xmpp-gateway (it knows up to {max(known)}): upgrade the gateway, or restore a backup taken "
            f"before the upgrade (docs/upgrading.md)")


def sqlite_path(url: str) -> str | None:
    """The file of a ``sqlite:`` registry URL; None for PostgreSQL."""
    if not url.startswith("sqlite:"):
        return None
    path = url[len("sqlite:"):]
    return path[2:] if path.startswith("//") else path


def backup_sqlite(path: str, target: str) -> int:
    """Copy the registry at ``path`` to ``target``; the number of pages copied."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no registry at {path}")
    source = sqlite3.connect(path, timeout=30)
    try:
        applied = {row[0] for row in source.execute("SELECT version FROM schema_version")}
        check_schema(applied)
        directory = os.path.dirname(os.path.abspath(target))
        partial = os.path.join(directory, f".{os.path.basename(target)}.partial-{os.getpid()}")
        os.close(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        try:
            copy = sqlite3.connect(partial)
            try:
                source.backup(copy)
                pages = copy.execute("PRAGMA page_count").fetchone()[0]
                # A single file: the copy must not depend on a -wal beside it.
                copy.execute("PRAGMA journal_mode=DELETE")
            finally:
                copy.close()
            os.chmod(partial, 0o600)
            os.replace(partial, target)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise
        return pages
    finally:
        source.close()
