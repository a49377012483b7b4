"""
The neutral middle: sessions, routing, the durable outbox, limits. Translates
between the XMPP side (above) and the adapters (below) and owns delivery
guarantees.
"""

from gateway.bridge.bridge import Bridge

__all__ = ["Bridge"]
