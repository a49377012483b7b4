"""XEP-0115 entity capabilities: the verification string our presence carries."""

from __future__ import annotations

import base64
import hashlib

from twisted.words.xish import domish

NS_CAPS = "http://jabber.org/protocol/caps"
#: Names this software in the caps node, as XEP-0115 asks (a URI of the product).
CAPS_NODE = "https://pypi.org/project/xmpp-gateway/"


def verification_string(identities: list[tuple[str, str, str]], features: list[str]) -> str:
    """XEP-0115 §5.1 over (category, type, name) identities without xml:lang, no extended forms."""
    parts = [f"{cat}/{typ}//{name}<" for cat, typ, name in sorted(identities)]
    parts += [f"{feature}<" for feature in sorted(set(features))]
    return base64.b64encode(hashlib.sha1("".join(parts).encode("utf-8")).digest()).decode("ascii")


def caps_element(ver: str) -> domish.Element:
    c = domish.Element((NS_CAPS, "c"))
    c["hash"] = "sha-1"
    c["node"] = CAPS_NODE
    c["ver"] = ver
    return c
