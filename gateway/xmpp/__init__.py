"""
The XMPP side: the component stream and one handler per XEP. Knows nothing of SMS, SMTP or IRC.

Importing this package installs the wokkel compatibility shim first, so every
module below may import wokkel freely.
"""

from gateway.xmpp import compat  # noqa: F401  (side effect: wokkel imports cleanly)
