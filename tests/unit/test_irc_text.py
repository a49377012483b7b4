"""IRC text rules: splitting, injection safety, formatting, decoding."""

from hypothesis import given, strategies as st

from gateway.adapters.irc import text


def test_long_body_splits_on_character_boundaries_within_512_bytes():
    body = "é" * 1000                                    # 2000 bytes
    lines = text.message_lines("PRIVMSG", "#chan", body, "alice")
    assert len(lines) > 1
    assert "".join(line.split(" :", 1)[1] for line in lines) == body
    for line in lines:
        assert len(line.encode()) + 2 + text.RELAY_OVERHEAD <= 512


def test_each_body_line_is_its_own_privmsg_and_no_line_break_survives():
    lines = text.message_lines("PRIVMSG", "#chan", "one\r\ntwo\n\nthree\rQUIT :bye\x00NICK x")
    assert lines == ["PRIVMSG #chan :one", "PRIVMSG #chan :two", "PRIVMSG #chan :three",
                     "PRIVMSG #chan :QUIT :byeNICK x"]


def test_action_wrapping():
    assert text.message_lines("PRIVMSG", "#c", "waves", ctcp="ACTION") == ["PRIVMSG #c :\x01ACTION waves\x01"]


@given(st.text(min_size=1, max_size=3000))
def test_no_line_ever_holds_a_break(body):
    for line in text.message_lines("PRIVMSG", "#chan", body):
        assert "\r" not in line and "\n" not in line and "\x00" not in line
        assert len(line.encode()) + 2 + text.RELAY_OVERHEAD <= 512


def test_formatting_and_decoding():
    assert text.strip_formatting("\x02bold\x02 \x0304,12red\x03 \x1fu\x1f \x0fplain") == "bold red u plain"
    assert text.decode("héllo".encode("latin-1"), "latin-1") == "héllo"
    assert text.decode("héllo".encode("utf-8"), "latin-1") == "héllo"
    assert text.one_line("a\r\nb\x00c") == "a b c"
