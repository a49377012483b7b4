"""Error answers: every RFC 6120 condition must serialise, or the refusal is never sent."""

import pytest
from twisted.words.xish import domish

from gateway.xmpp.stanzas import error_reply

#: RFC 6120 §8.3.3, all of them.
CONDITIONS = ["bad-request", "conflict", "feature-not-implemented", "forbidden", "gone", "internal-server-error",
              "item-not-found", "jid-malformed", "not-acceptable", "not-allowed", "not-authorized",
              "policy-violation", "recipient-unavailable", "redirect", "registration-required",
              "remote-server-not-found", "remote-server-timeout", "resource-constraint", "service-unavailable",
              "subscription-required", "undefined-condition", "unexpected-request"]


@pytest.mark.parametrize("condition", CONDITIONS)
def test_every_condition_serialises_with_a_type(condition):
    stanza = domish.Element((None, "message"))
    stanza["from"], stanza["to"], stanza["id"] = "u@example.org/r", "c@gw.example.org", "m1"
    xml = error_reply(stanza, condition, "why \x01").toXml()
    assert f"<{condition} xmlns='urn:ietf:params:xml:ns:xmpp-stanzas'/>" in xml
    assert "type='modify'" in xml if condition == "policy-violation" else "type='" in xml
    assert "\x01" not in xml
