"""The identd's parts in memory: the token, the table, the protocol on a StringTransport, the caps, on a Clock."""

import re

from twisted.internet import address, task
from twisted.internet.testing import StringTransport

from gateway.adapters.irc import identd
from gateway.adapters.irc.identd import IdentFactory, IdentTable, ident_token


def ends(host, port):
    return address.IPv4Address("TCP", host, port)


def test_token_is_short_stable_keyed_and_safe():
    a = ident_token(b"key", "Alice@Example.org/phone")
    assert re.fullmatch(r"[a-z2-7]{10}", a)
    assert a == ident_token(b"key", "alice@example.org")             # bare JID, case folded
    assert a != ident_token(b"other key", "alice@example.org")
    assert a != ident_token(b"key", "bob@example.org")
    assert "alice" not in a


def connect(factory, peer=("10.0.0.9", 40000), local=("10.0.0.1", 113)):
    proto = factory.buildProtocol(ends(*peer))
    if proto is None:
        return None, None
    transport = StringTransport(hostAddress=ends(*local), peerAddress=ends(*peer))
    proto.makeConnection(transport)
    return proto, transport


def table_with_one():
    table = IdentTable()
    # our IRC connection: 10.0.0.1:50000 -> the IRC server 10.0.0.9:6667
    table.add(object(), ends("10.0.0.1", 50000), ends("10.0.0.9", 6667), "tok4567890")
    return table


def test_answers_only_the_host_at_the_other_end():
    clock = task.Clock()
    factory = IdentFactory(table_with_one(), clock, 10)
    proto, t = connect(factory)
    proto.dataReceived(b"50000 , 6667\r\n")
    assert t.value() == b"50000, 6667 : USERID : UNIX : tok4567890\r\n" and t.disconnecting
    # the same ports asked by another host: it is not that connection's peer
    proto, t = connect(factory, peer=("192.0.2.7", 40001))
    proto.dataReceived(b"50000 , 6667\r\n")
    assert t.value() == b"50000, 6667 : ERROR : NO-USER\r\n"


def test_malformed_and_out_of_range():
    factory = IdentFactory(table_with_one(), task.Clock(), 10)
    for line, reply in ((b"garbage\r\n", b"0, 0 : ERROR : INVALID-PORT\r\n"),
                        (b"99999, 1\n", b"99999, 1 : ERROR : INVALID-PORT\r\n"),
                        (b"\xd9\xa1, 1\n", b"0, 0 : ERROR : INVALID-PORT\r\n")):
        proto, t = connect(factory)
        proto.dataReceived(line)
        assert t.value() == reply, line


def test_one_query_a_bounded_line_and_a_deadline():
    clock = task.Clock()
    factory = IdentFactory(table_with_one(), clock, 10)
    proto, t = connect(factory)
    proto.dataReceived(b"50000, 6667\r\n50000, 6667\r\n")
    assert t.value().count(b"USERID") == 1
    proto, t = connect(factory)
    proto.dataReceived(b"1" * (identd.MAX_LINE + 1))
    assert t.value() == b"" and t.disconnected            # aborted, no answer
    proto, t = connect(factory)
    clock.advance(identd.TIMEOUT - 0.1)
    assert not t.disconnected
    clock.advance(0.2)
    assert t.disconnected


def test_connection_caps_overall_and_per_address():
    factory = IdentFactory(IdentTable(), task.Clock(), 3)
    held = [connect(factory, peer=(f"10.0.0.{n}", 1000 + n)) for n in range(3)]
    assert connect(factory, peer=("10.0.0.99", 999))[0] is None
    held[0][0].connectionLost(None)
    assert connect(factory, peer=("10.0.0.99", 999))[0] is not None
    factory = IdentFactory(IdentTable(), task.Clock(), 1000)
    for n in range(identd.MAX_PER_ADDRESS):
        assert connect(factory, peer=("10.0.0.5", 2000 + n))[0] is not None
    assert connect(factory, peer=("10.0.0.5", 3000))[0] is None
    assert connect(factory, peer=("10.0.0.6", 3000))[0] is not None


def test_table_forgets_a_lost_connection():
    table, conn = IdentTable(), object()
    local, peer = ends("127.0.0.1", 50001), ends("127.0.0.1", 6667)
    table.add(conn, local, peer, "tok")
    assert table.lookup("127.0.0.1", 50001, "127.0.0.1", 6667) == "tok"
    assert table.lookup("::ffff:127.0.0.1", 50001, "::ffff:127.0.0.1", 6667) == "tok"
    table.remove(conn, local, peer)
    assert table.lookup("127.0.0.1", 50001, "127.0.0.1", 6667) is None and len(table) == 0
