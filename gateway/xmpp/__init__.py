"""The XMPP side: the component stream and one handler per XEP. Knows nothing of SMS, SMTP or IRC."""

from gateway.xmpp import compat as _compat  # noqa: F401  (must run before any wokkel import)
