"""The shape of an XEP-0050 command: a first step (usually a form) and a completion step."""

from __future__ import annotations

NS_COMMANDS = "http://jabber.org/protocol/commands"


class Done(Exception):
    """Raised by a command step to complete the command with a note."""

    def __init__(self, note: str, form=None):
        super().__init__(note)
        self.note = note
        self.form = form


class Command:
    node = ""
    name = ""
    admin = False
    needs_registration = False

    def __init__(self, handler):
        self.handler = handler
        self.bridge = handler.bridge

    @staticmethod
    def offered(adapter) -> bool:
        """Whether the component's network has what the command needs."""
        return True

    def start(self, user: str):
        """First step: return a form to fill in, or raise Done."""
        raise NotImplementedError

    def complete(self, user: str, values: dict):
        raise NotImplementedError
