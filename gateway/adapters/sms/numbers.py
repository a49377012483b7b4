"""Phone numbers: anything a user types, in E.164, checked with phonenumbers (libphonenumber's data)."""

from __future__ import annotations

import functools

import phonenumbers

from gateway.model import AddressError


@functools.lru_cache(maxsize=4096)
def normalize(text: str, default_region: str | None) -> str:
    """
    ``text`` as E.164 (``+14155550100``); national formats use ``default_region``.
    Cached (a pure function of its arguments, and bounded): every inbound
    webhook normalizes its sender, and phonenumbers' parse and validation cost
    about 5 % of the reactor's time under a webhook load, for the few numbers
    a user's contacts have. Refusals (AddressError) are not cached.
    """
    raw = (text or "").strip()
    if not raw:
        raise AddressError("the phone number is empty")
    try:
        number = phonenumbers.parse(raw, default_region or None)
    except phonenumbers.NumberParseException as e:
        hint = "" if raw.startswith("+") or default_region else " (write it with + and the country code)"
        raise AddressError(f"{raw!r} is not a phone number: {e._msg}{hint}") from None
    if not phonenumbers.is_valid_number(number):
        region = phonenumbers.region_code_for_number(number)
        where = f" in {region}" if region else f" for country code +{number.country_code}"
        raise AddressError(f"{raw!r} is not a valid phone number{where}")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def country(e164: str) -> str | None:
    """The ISO country code of an E.164 number (``US``, ``GB``), None if unknown."""
    try:
        return phonenumbers.region_code_for_number(phonenumbers.parse(e164, None))
    except phonenumbers.NumberParseException:
        return None
