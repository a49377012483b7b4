"""
The XMPP side: the component stream and one handler per XEP. Knows nothing of SMS, SMTP or IRC.

Importing this package installs the wokkel compatibility shim first, so every
module below may import wokkel freely, and bounds Twisted's JID intern table
(gateway/xmpp/jids.py), which every stanza's addresses pass through.
"""

from gateway.xmpp import compat  # noqa: F401  (side effect: wokkel imports cleanly)
from gateway.xmpp import jids  # noqa: F401,E402  (side effect: internJID's table is bounded)
