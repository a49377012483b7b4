"""An occupant's host entry follows a nick change under the one interned copy of the new nick (see members.py)."""

from __future__ import annotations

from tests.unit import test_irc_members
from tests.unit.test_irc_session import IRCSessionCase


class HostsFollowNickChanges(IRCSessionCase):
    joined = test_irc_members.RolesFollowModes.joined

    def test_a_nick_change_keeps_the_host_under_the_interned_nick(self):
        session, room = self.joined("alice eve")
        self.conn.lineReceived(b":zed!z@host.example JOIN #room")
        self.conn.lineReceived(b":zed!z@host.example NICK :" + "".join(["ze", "dd"]).encode())
        self.assertEqual(room.hosts["zedd"], ("z", "host.example"))
        self.assertIs(next(k for k in room.hosts if k == "zedd"), next(k for k in room.occupants if k == "zedd"))
