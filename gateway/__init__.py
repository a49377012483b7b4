"""xmpp-gateway: XMPP to SMS, email and IRC through XEP-0114 components."""

__version__ = "0.1.0"
