"""
Moderation and occupants' real JIDs in memory: what XEP-0045 roles and
affiliations become on IRC, how the server's verdict is awaited (echo, error
numeric, PONG, timeout), where occupants' user and host come from (JOIN,
userhost-in-names, one bounded WHO), and the stanzas the XMPP side makes of them.
The end-to-end tests are in tests/integration/test_irc_moderation.py.
"""

from __future__ import annotations

import pytest

from gateway.adapters.irc import moderation, text
from gateway.adapters.irc.session import INVITES_PER_MINUTE, WHO_LIMIT
from gateway.model import GatewayError, RoomEvent
from gateway.xmpp.muc import room_stanzas
from tests.unit.test_irc_session import SERVER, IRCSessionCase

ROOM = f"#room%{SERVER}"


# -- the mapping -----------------------------------------------------------------------

@pytest.mark.parametrize("role, modes, lines", [
    ("none", set(), ["KICK #c bob :go away"]),
    ("visitor", {"+"}, ["MODE #c -v bob"]),
    ("visitor", {"@", "+"}, ["MODE #c -ov bob bob"]),
    ("visitor", set(), []),
    ("participant", set(), ["MODE #c +v bob"]),
    ("participant", {"+"}, []),
    ("participant", {"@"}, ["MODE #c -o bob", "MODE #c +v bob"]),
    ("participant", {"@", "+"}, ["MODE #c -o bob"]),
    ("moderator", set(), ["MODE #c +o bob"]),
    ("moderator", {"@"}, []),
])
def test_roles_become_kick_and_modes_and_only_what_changes_is_sent(role, modes, lines):
    assert moderation.role_commands("#c", "bob", role, modes, "go away") == lines


def test_affiliations_become_bans_and_others_are_refused():
    assert moderation.affiliation_commands("#c", "bob", "outcast", True, "spam") == [
        "MODE #c +b bob!*@*", "KICK #c bob :spam"]
    assert moderation.affiliation_commands("#c", "bob", "outcast", False, None) == ["MODE #c +b bob!*@*"]
    assert moderation.affiliation_commands("#c", "bob", "none", False, None) == ["MODE #c -b bob!*@*"]
    with pytest.raises(GatewayError) as e:
        moderation.affiliation_commands("#c", "bob", "owner", True, None)
    assert e.value.condition == "feature-not-implemented"


def test_a_kick_reason_stays_one_bounded_line():
    line = moderation.kick_line("#c", "bob", "one\r\nQUIT :two" + "x" * 1000)
    assert "\r" not in line and "\n" not in line and line.startswith("KICK #c bob :one")
    assert len(line) < 400
    assert moderation.kick_line("#c", "bob", None) == "KICK #c bob"


@pytest.mark.parametrize("user, host, ok", [
    ("~bob", "127.0.0.1", True), ("bob", "2001:db8::1", True), ("bob", "user/bob/cloak", True),
    ("bob", "host'><x/>", False), ("b ob", "h", False), ("bob", "a@b", False), ("", "h", False),
    ("bob", "h" * 254, False), ("bób", "h", False),
])
def test_user_and_host_from_the_server_are_checked(user, host, ok):
    assert (text.userhost(user, host) is not None) == ok


# -- the session ------------------------------------------------------------------------

class Moderation(IRCSessionCase):
    rate = 0.0

    def joined(self, names: str = "alice @carol bob", channel: str = "#room") -> None:
        self.session = self.sign_on()
        self.session.join("phone", channel, "alice")
        self.conn.lineReceived(f":alice!~alice@gw.example JOIN {channel}".encode())
        self.conn.lineReceived(f":{SERVER} 353 alice = {channel} :{names}".encode())
        self.conn.lineReceived(f":{SERVER} 366 alice {channel} :End of NAMES".encode())

    def presences(self, nick: str):
        return [e for e in self.context.events if e.kind == "presence" and e.nick == nick]

    def lines(self) -> list[str]:
        return self.written()

    def token(self) -> str:
        return next(line for line in self.lines() if line.startswith("PING :xg-mod-")).split(":", 1)[1]

    # real JIDs

    def test_without_userhost_in_names_one_who_brings_the_hosts(self):
        self.joined()
        self.assertIn("WHO #room", self.lines())
        self.assertIsNone(self.presences("bob")[-1].occupant_host)
        self.conn.lineReceived(f":{SERVER} 352 alice #room ~bob 10.0.0.2 {SERVER} bob H :0 Bob".encode())
        self.conn.lineReceived(f":{SERVER} 352 alice #room carol evil<host {SERVER} carol H@ :0 C".encode())
        self.conn.lineReceived(f":{SERVER} 315 alice #room :End of WHO".encode())
        bob = self.presences("bob")[-1]
        self.assertEqual((bob.occupant_user, bob.occupant_host), ("~bob", "10.0.0.2"))
        self.assertEqual(len(self.presences("carol")), 1)        # an unfit host: no update, no host
        self.assertIsNone(self.presences("carol")[0].occupant_host)

    def test_a_second_user_in_the_channel_borrows_the_hosts_instead_of_a_who(self):
        from twisted.internet.error import ConnectionDone
        from twisted.internet.testing import StringTransport
        from twisted.python.failure import Failure

        from gateway.model import Registration

        self.joined()
        self.conn.lineReceived(f":{SERVER} 352 alice #room ~bob 10.0.0.2 {SERVER} bob H :0 Bob".encode())
        self.conn.lineReceived(f":{SERVER} 352 alice #room c c.example {SERVER} carol H@ :0 C".encode())
        self.conn.lineReceived(f":{SERVER} 315 alice #room :End of WHO".encode())
        other = Registration(component=self.context.component, jid="zed@example.org")
        session = self.adapter.session(other, SERVER, "zed")
        session.connect()
        self.clock.advance(1)                                   # its turn with the connect scheduler
        self.assertEqual(len(self.clock.tcpClients), 2)
        conn = self.clock.tcpClients[-1][2].buildProtocol(None)
        transport = StringTransport()
        conn.makeConnection(transport)
        conn.lineReceived(f":{SERVER} 001 zed :Welcome".encode())
        session.join("laptop", "#room", "zed")
        transport.clear()
        conn.lineReceived(b":zed!~zed@z.example JOIN #room")
        conn.lineReceived(f":{SERVER} 353 zed = #room :zed alice @carol bob".encode())
        conn.lineReceived(f":{SERVER} 366 zed #room :End of NAMES".encode())
        self.assertNotIn("WHO #room", transport.value().decode())
        zeds = [e for e in self.context.events if e.user == "zed@example.org" and e.nick == "bob"]
        self.assertEqual(zeds[0].occupant_host, "10.0.0.2")
        self.assertIn(session, self.adapter.sessions_on(SERVER))
        session.closed = True
        conn.connectionLost(Failure(ConnectionDone()))

    def test_with_userhost_in_names_no_who(self):
        self.joined("alice!~alice@gw @carol!c@c.example bob!~bob@10.0.0.2")
        self.assertNotIn("WHO #room", self.lines())
        self.assertEqual(self.presences("carol")[0].role, "moderator")
        self.assertEqual(self.presences("bob")[0].occupant_host, "10.0.0.2")

    def test_no_who_in_a_big_channel(self):
        self.joined(" ".join(f"n{i}" for i in range(WHO_LIMIT + 1)))
        self.assertNotIn("WHO #room", self.lines())

    def test_a_joiner_s_host_comes_with_the_join_and_stays_through_a_nick_change(self):
        self.joined()
        self.conn.lineReceived(b":dave!~dave@d.example JOIN #room")
        self.assertEqual(self.presences("dave")[-1].occupant_host, "d.example")
        self.conn.lineReceived(b":dave!~dave@d.example NICK dave2")
        self.assertEqual(self.presences("dave2")[-1].occupant_user, "~dave")
        self.conn.lineReceived(b":dave2!~dave@d.example PART #room")
        self.assertTrue(self.presences("dave2")[-1].unavailable)
        self.assertEqual(self.presences("dave2")[-1].occupant_host, "d.example")
        self.assertNotIn("dave2", self.session.rooms["#room"].hosts)

    # moderation and its verdicts

    def test_a_kick_succeeds_on_its_echo_and_the_pong(self):
        self.joined()
        d = self.adapter.set_role(self.registration, ROOM, "bob", "none", "bye")
        self.assertIn("KICK #room bob :bye", self.lines())
        token = self.token()
        self.conn.lineReceived(b":alice!~alice@gw KICK #room bob :bye")
        self.assertNoResult(d)
        self.conn.lineReceived(f":{SERVER} PONG {SERVER} :{token}".encode())
        self.assertIsNone(self.successResultOf(d))
        kicked = self.presences("bob")[-1]
        self.assertTrue(kicked.kicked and kicked.unavailable)
        self.assertEqual(kicked.actor, "alice")

    def test_a_kick_refused_by_the_server_fails_with_its_condition(self):
        self.joined()
        d = self.adapter.set_role(self.registration, ROOM, "carol", "none", None)
        token = self.token()
        self.conn.lineReceived(f":{SERVER} 482 alice #room :You're not channel operator".encode())
        self.conn.lineReceived(f":{SERVER} PONG {SERVER} :{token}".encode())
        error = self.failureResultOf(d, GatewayError).value
        self.assertEqual(error.condition, "forbidden")
        self.assertIn("not channel operator", error.text)

    def test_no_such_nick_is_item_not_found(self):
        self.joined()
        d = self.adapter.set_role(self.registration, ROOM, "ghost", "moderator", None)
        token = self.token()
        self.conn.lineReceived(f":{SERVER} 401 alice ghost :No such nick".encode())
        self.conn.lineReceived(f":{SERVER} PONG {SERVER} :{token}".encode())
        self.assertEqual(self.failureResultOf(d, GatewayError).value.condition, "item-not-found")

    def test_a_server_that_never_answers_is_a_timeout(self):
        self.joined()
        d = self.adapter.set_role(self.registration, ROOM, "bob", "participant", None)
        self.assertIn("MODE #room +v bob", self.lines())
        self.clock.advance(moderation.TIMEOUT + 1)
        self.assertEqual(self.failureResultOf(d, GatewayError).value.condition, "remote-server-timeout")

    def test_a_change_that_changes_nothing_succeeds_at_once(self):
        self.joined()
        self.assertIsNone(self.successResultOf(self.adapter.set_role(self.registration, ROOM, "carol",
                                                                     "moderator", None)))

    def test_a_ban_bans_the_nick_and_kicks(self):
        self.joined()
        d = self.adapter.set_affiliation(self.registration, ROOM, "Bob", "outcast", "spam")
        self.assertEqual(self.lines()[-3:-1], ["MODE #room +b bob!*@*", "KICK #room bob :spam"])
        token = self.token()
        self.conn.lineReceived(b":alice!~alice@gw MODE #room +b bob!*@*")
        self.conn.lineReceived(b":alice!~alice@gw KICK #room bob :spam")
        self.assertNoResult(d)
        self.conn.lineReceived(f":{SERVER} PONG {SERVER} :{token}".encode())
        self.assertIsNone(self.successResultOf(d))

    def test_a_kick_the_server_answered_without_removing_anyone_fails(self):
        self.joined()
        d = self.adapter.set_affiliation(self.registration, ROOM, "bob", "outcast", None)
        token = self.token()
        self.conn.lineReceived(b":alice!~alice@gw MODE #room +b bob!*@*")
        self.conn.lineReceived(f":{SERVER} PONG {SERVER} :{token}".encode())
        self.assertEqual(self.failureResultOf(d, GatewayError).value.condition, "item-not-found")

    def test_moderation_in_a_room_not_joined_is_forbidden(self):
        self.sign_on()
        d = self.adapter.set_role(self.registration, ROOM, "bob", "none", None)
        self.assertEqual(self.failureResultOf(d, GatewayError).value.condition, "forbidden")

    def test_a_lost_connection_fails_what_waits(self):
        self.joined()
        d = self.adapter.set_role(self.registration, ROOM, "bob", "none", None)
        self.lose()
        self.assertEqual(self.failureResultOf(d, GatewayError).value.condition, "remote-server-timeout")

    def test_invite_goes_out_and_an_invitation_comes_in(self):
        self.joined()
        d = self.adapter.invite(self.registration, ROOM, f"dave%{SERVER}", None)
        self.assertIn("INVITE dave #room", self.lines())
        token = self.token()
        self.conn.lineReceived(f":{SERVER} 341 alice dave #room".encode())
        self.conn.lineReceived(f":{SERVER} PONG {SERVER} :{token}".encode())
        self.assertIsNone(self.successResultOf(d))
        self.conn.lineReceived(b":dave!~d@h INVITE alice #elsewhere")
        invite = self.context.events[-1]
        self.assertEqual((invite.kind, invite.room, invite.actor, invite.resources),
                         ("invite", f"#elsewhere%{SERVER}", "dave", [""]))

    def test_invitations_from_irc_are_bounded(self):
        self.joined()
        for i in range(INVITES_PER_MINUTE + 3):
            self.conn.lineReceived(f":spam{i}!~s@h INVITE alice #c{i}".encode())
        self.assertEqual(len([e for e in self.context.events if e.kind == "invite"]), INVITES_PER_MINUTE)
        self.clock.advance(61)
        self.conn.lineReceived(b":dave!~d@h INVITE alice #later")
        self.assertEqual(self.context.events[-1].room, f"#later%{SERVER}")
        self.conn.lineReceived(b":dave!~d@h INVITE alice #bad\x07name")
        self.assertEqual(self.context.events[-1].room, f"#later%{SERVER}")

    # modes

    def test_a_mode_change_is_a_room_notice_and_a_new_role(self):
        self.joined()
        self.conn.lineReceived(b":carol!c@h MODE #room +o bob")
        notice = [e for e in self.context.events if e.kind == "message"][-1]
        self.assertIsNone(notice.nick)
        self.assertEqual(notice.body, "Mode #room [+o bob] by carol")
        self.assertEqual(self.presences("bob")[-1].role, "moderator")
        self.conn.lineReceived(b":carol!c@h MODE #room +i")
        self.assertEqual([e for e in self.context.events if e.kind == "message"][-1].body,
                         "Mode #room [+i] by carol")


# -- the stanzas -------------------------------------------------------------------------

def _event(**kw) -> RoomEvent:
    return RoomEvent(component="irc.example.org", user="u@example.org", resources=["r"], room=ROOM,
                     kind="presence", **kw)


def _occupant(room: str, nick: str) -> str:
    return f"{nick.lower()}%{room.rpartition('%')[2]}"


def _item(el):
    x = next(c for c in el.elements() if c.name == "x")
    return next(c for c in x.elements() if c.name == "item")


def test_an_occupant_s_real_jid_is_the_private_message_address_with_user_at_host():
    el, = room_stanzas("irc.example.org", _event(nick="Bob", occupant_user="~bob", occupant_host="10.0.0.2"),
                       non_anonymous=True, occupant=_occupant)
    assert _item(el)["jid"] == f"bob%{SERVER}@irc.example.org/~bob@10.0.0.2"


def test_no_host_or_an_unfit_one_leaves_the_bare_jid_and_anonymous_rooms_none():
    el, = room_stanzas("irc.example.org", _event(nick="Bob", occupant_user="x", occupant_host="a'b"),
                       non_anonymous=True, occupant=_occupant)
    assert _item(el)["jid"] == f"bob%{SERVER}@irc.example.org"
    el, = room_stanzas("irc.example.org", _event(nick="Bob"), non_anonymous=False, occupant=_occupant)
    assert not _item(el).hasAttribute("jid")


def test_the_user_s_own_presence_carries_their_own_jid():
    el, = room_stanzas("irc.example.org", _event(nick="me", own=True), non_anonymous=True, occupant=_occupant)
    assert _item(el)["jid"] == "u@example.org/r"


def test_an_invitation_comes_from_the_room_naming_who_invites():
    event = RoomEvent(component="irc.example.org", user="u@example.org", resources=[""], room=ROOM, kind="invite",
                      actor="dave", body="dave invites you")
    el, = room_stanzas("irc.example.org", event, non_anonymous=True, occupant=_occupant)
    assert el.name == "message" and el["from"] == f"#room%{SERVER}@irc.example.org" and el["to"] == "u@example.org"
    x = next(c for c in el.elements() if c.name == "x")
    invite = next(x.elements())
    assert invite.name == "invite" and invite["from"] == f"dave%{SERVER}@irc.example.org"
