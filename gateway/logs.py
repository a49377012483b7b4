"""
Logging with twisted.logger: text for people, JSON lines for machines, and a
last line of defence that replaces any configured secret before a byte is
written, whatever code logged it.
"""

from __future__ import annotations

import json
import sys
from typing import IO

from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner,
                            jsonFileLogObserver, textFileLogObserver)

LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


class RedactingFile:
    """A file wrapper that masks secrets, in plain and JSON-escaped form."""

    def __init__(self, stream: IO[str], secrets: list[str]):
        self.stream = stream
        forms = set()
        for s in secrets:
            if len(s) >= 4:
                forms.add(s)
                forms.add(json.dumps(s)[1:-1])
        self.forms = sorted(forms, key=len, reverse=True)

    def write(self, text: str) -> int:
        for secret in self.forms:
            if secret in text:
                text = text.replace(secret, "********")
        return self.stream.write(text)

    def flush(self) -> None:
        self.stream.flush()


#: The level filter of the observer started last, so a reload can change the level.
_predicate: LogLevelFilterPredicate | None = None


def make_observer(fmt: str, level: str, secrets: list[str], stream: IO[str] | None = None):
    global _predicate
    out = RedactingFile(stream or sys.stdout, secrets)
    observer = jsonFileLogObserver(out) if fmt == "json" else textFileLogObserver(out)
    _predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    return FilteringLogObserver(observer, [_predicate])


def set_level(level: str) -> None:
    if _predicate is not None:
        _predicate.defaultLogLevel = LEVELS[level]
        _predicate.clearLogLevels()


def start_logging(fmt: str, level: str, secrets: list[str]) -> None:
    globalLogBeginner.beginLoggingTo([make_observer(fmt, level, secrets)], redirectStandardIO=False)
