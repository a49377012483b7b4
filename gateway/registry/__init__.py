"""
Durable state: registrations, address and message-id mappings, and the queue
(outbox towards the networks, inbox towards XMPP). One SQL implementation
serves SQLite and PostgreSQL; see ``sql.py``.
"""

from gateway.registry.sql import (InstanceConflict, QueueItem, RegistrationConflict, RegistryClosed, SQLRegistry,
                                  open_registry)

__all__ = ["SQLRegistry", "InstanceConflict", "QueueItem", "RegistrationConflict", "RegistryClosed", "open_registry"]
