"""
How many SMS a text costs, and how it is split, by the rules carriers bill by.

GSM 03.38 (7-bit): 160 septets in one message, 153 per part of a concatenated
one (the user data header takes 7); characters of the extension table cost two
septets, and an escape pair is never split across parts. Anything outside the
GSM alphabet makes the whole message UCS-2 (UTF-16): 70 code units alone, 67
per part; a character outside the BMP takes two units and is never split.
"""

from __future__ import annotations

GSM_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_EXTENSION = frozenset("^{}\\[~]|€\f")

SINGLE = {"GSM-7": 160, "UCS-2": 70}
PART = {"GSM-7": 153, "UCS-2": 67}


def encoding(text: str) -> str:
    return "GSM-7" if all(c in GSM_BASIC or c in GSM_EXTENSION for c in text) else "UCS-2"


def _cost(ch: str, enc: str) -> int:
    if enc == "GSM-7":
        return 2 if ch in GSM_EXTENSION else 1
    return 2 if ord(ch) > 0xFFFF else 1


def split(text: str) -> list[str]:
    """The parts a carrier would send ``text`` as (one part if it fits in a single SMS)."""
    enc = encoding(text)
    costs = [_cost(c, enc) for c in text]
    if sum(costs) <= SINGLE[enc]:
        return [text]
    parts, current, used = [], [], 0
    for ch, cost in zip(text, costs):
        if used + cost > PART[enc]:
            parts.append("".join(current))
            current, used = [], 0
        current.append(ch)
        used += cost
    if current:
        parts.append("".join(current))
    return parts


def count(text: str) -> int:
    return len(split(text)) if text else 0


def split_notice(count: int) -> str | None:
    """What a sender should know when a text went as several SMS: each may be charged."""
    if count <= 1:
        return None
    return (f"sent as {count} SMS: a text over 160 characters (70 with emoji or other characters outside "
            "the GSM alphabet) is split, and each part may be charged")
