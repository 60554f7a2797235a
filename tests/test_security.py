"""Opt-in protections: address validation (reflection guard) and authenticated datagrams."""

from __future__ import annotations

import errno
import os
import time
from typing import Any, List

import pytest

from chatudp import ChatUdpClient, ChatUdpServer, _core
from conftest import wait_for
from faultproxy import record_figures

SECRET = os.urandom(32)


def ack(text: bytes, port: int) -> bytes:
    return b"Ack b'" + text + b"'. from 127.0.0.1:" + str(port).encode()


def test_validation_challenges_new_sources_within_3x(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, validate=True)
    srv.start()
    stopper(srv)
    a = peers()
    a.send(b"^hb^", srv.addr)
    challenge = a.recv()
    assert challenge.startswith(b"^ck^") and len(challenge) <= 3 * len(b"^hb^")
    assert srv.clients == {}
    # Nothing at all for a datagram too short to pay for a challenge (the message is held).
    a.send(b"", srv.addr)
    assert a.recv_nothing()
    a.send(challenge, srv.addr)
    wait_for(lambda: a.addr in srv.clients, what="validated join")
    assert a.recv() == ack(b"", a.port)
    a.send(b"hi", srv.addr)
    assert a.recv() == ack(b"HI", a.port)
    assert srv.stats["dropped"]["auth"] == 1


def test_spoofed_source_never_receives_broadcasts(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, validate=True)
    srv.start()
    stopper(srv)
    victim, member = peers(), peers()
    # The attacker's heartbeat "from the victim" only earns the victim one small challenge.
    victim.send(b"^hb^", srv.addr)
    assert victim.recv().startswith(b"^ck^")
    member.send(b"^hb^", srv.addr)
    member.send(member.recv(), srv.addr)
    wait_for(lambda: member.addr in srv.clients, what="member joins")
    member.send(b"broadcast", srv.addr)
    assert member.recv() == ack(b"BROADCAST", member.port)
    assert victim.recv_nothing()
    assert victim.addr not in srv.clients


def test_chatudp_client_answers_the_challenge_by_itself(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, validate=True)
    srv.start()
    stopper(srv)
    got: List[bytes] = []
    cli = ChatUdpClient(*srv.addr, on_message=lambda d, a: got.append(d))
    cli.start()
    stopper(cli)
    cli.send("first words")
    wait_for(lambda: got, what="Ack after validation")
    assert got == [ack(b"FIRST WORDS", cli.addr[1])]


def test_authenticated_mode_round_trip(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, secret=SECRET)
    srv.start()
    stopper(srv)
    got: List[bytes] = []
    cli = ChatUdpClient(*srv.addr, secret=SECRET, on_message=lambda d, a: got.append(d))
    cli.start()
    stopper(cli)
    cli.send("signed")
    wait_for(lambda: got, what="authenticated Ack")
    assert got == [ack(b"SIGNED", cli.addr[1])]
    assert srv.recv_message(timeout=2) == (b"signed", cli.addr)


def test_unsigned_and_forged_datagrams_are_dropped(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, secret=SECRET)
    srv.start()
    stopper(srv)
    cli = ChatUdpClient(*srv.addr, secret=SECRET, on_message=lambda d, a: None)
    cli.start()
    stopper(cli)
    cli.send("^hb^")
    wait_for(lambda: cli.addr in srv.clients, what="signed heartbeat")
    spoofer = peers()
    spoofer.send(b"hello", srv.addr)
    spoofer.send(b"quit", srv.addr)
    spoofer.send(b"x" * 40, srv.addr)
    wait_for(lambda: srv.stats["dropped"]["auth"] == 3, what="three auth drops")
    assert spoofer.recv_nothing()
    assert list(srv.clients) == [cli.addr]


def test_wrong_secret_client_gets_nothing(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, secret=SECRET)
    srv.start()
    stopper(srv)
    got: List[bytes] = []
    cli = ChatUdpClient(*srv.addr, secret=os.urandom(32), on_message=lambda d, a: got.append(d))
    cli.start()
    stopper(cli)
    cli.send("let me in")
    wait_for(lambda: srv.stats["dropped"]["auth"] == 1, what="auth drop")
    assert srv.clients == {} and got == []


def test_replayed_datagram_is_dropped(stopper: Any, peers: Any) -> None:
    # A relay in the middle records the client's signed quit and plays it again later.
    import socket

    srv = ChatUdpServer(port=0, secret=SECRET)
    srv.start()
    stopper(srv)
    tap = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    tap.bind(("127.0.0.1", 0))
    tap.settimeout(3)
    try:
        cli = ChatUdpClient(*tap.getsockname(), secret=SECRET)
        cli.start()
        stopper(cli)
        cli.send("^hb^")
        recorded, client_addr = tap.recvfrom(2048)
        assert recorded.startswith(b"^hb^") and len(recorded) == 4 + _core.TRAILER_LEN
        tap.sendto(recorded, srv.addr)
        wait_for(lambda: len(srv.clients) == 1, what="first copy accepted")
        tap.sendto(recorded, srv.addr)
        wait_for(lambda: srv.stats["dropped"]["auth"] == 1, what="replay dropped")
    finally:
        tap.close()


@pytest.mark.parametrize("secret, error", [("text", TypeError), (b"short", ValueError)])
def test_bad_secrets(secret: Any, error: type) -> None:
    with pytest.raises(error):
        ChatUdpServer(port=0, secret=secret)
    with pytest.raises(error):
        ChatUdpClient(secret=secret)


# -- the adversary on the path (tests/adversary.py) --------------------------------------------


@pytest.fixture
def tapped(stopper: Any) -> Any:
    """A secret-mode server, and a client that reaches it through a capturing proxy."""
    from adversary import CapturingProxy

    made: List[Any] = []

    def make(**server_options: Any) -> Any:
        srv = ChatUdpServer(port=0, secret=SECRET, **server_options)
        srv.start()
        stopper(srv)
        proxy = CapturingProxy(srv.addr)
        made.append(proxy)
        got: List[bytes] = []
        cli = ChatUdpClient(*proxy.addr, secret=SECRET, on_message=lambda d, a: got.append(d))
        cli.start()
        stopper(cli)
        return srv, proxy, cli, got

    yield make
    for proxy in made:
        proxy.close()


def test_a_capture_replayed_from_new_ports_is_accepted_nowhere(tapped: Any) -> None:
    """Replay windows used to be kept per source address: one sealed message re-sent from five
    new ports was relayed five more times and the replaying sockets joined the table."""
    from adversary import UP, replay_from_new_ports

    srv, proxy, cli, got = tapped()
    cli.send("pay 10 to bob")
    wait_for(lambda: len(got) == 1, what="the first Ack")
    (sealed,) = proxy.taken(UP, b"pay 10")
    with replay_from_new_ports(sealed, srv.addr, 5) as replayer:
        wait_for(lambda: srv.stats["auth_refused"]["replayed"] == 5, what="five replays refused")
        # ... and from the client's own (proxied) address too.
        proxy.inject_up(sealed, cli.addr)
        wait_for(lambda: srv.stats["auth_refused"]["replayed"] == 6, what="the sixth replay refused")
        assert srv.stats["relayed"] == 1
        assert not any(addr in srv.clients for addr in replayer.addrs)
        cli.send("later")
        wait_for(lambda: len(got) == 2, what="the second Ack")
        assert all(box == [] for box in replayer.received().values())
    record_figures(
        "test_security::test_a_capture_replayed_from_new_ports_is_accepted_nowhere",
        replays=6,
        relayed=srv.stats["relayed"],
        refused=srv.stats["auth_refused"],
    )


def test_a_server_never_accepts_what_a_server_sealed_nor_a_client_what_a_client_sealed(tapped: Any) -> None:
    """The direction is bound into the tag: the server's own sealed Ack sent back to it used to
    be relayed as a new chat message."""
    from adversary import DOWN, UP

    srv, proxy, cli, got = tapped()
    cli.send("hello")
    wait_for(lambda: len(got) == 1, what="the Ack")
    (ack_sealed,) = proxy.taken(DOWN, b"Ack b'HELLO'")
    (hello_sealed,) = proxy.taken(UP, b"hello")
    proxy.inject_up(ack_sealed, cli.addr)
    wait_for(lambda: srv.stats["auth_refused"]["bad_tag"] == 1, what="the reflected Ack refused")
    proxy.inject_down(hello_sealed, cli.addr)
    wait_for(lambda: cli.stats["auth_refused"]["bad_tag"] == 1, what="the reflected message refused")
    # The client got its Ack once; a second copy of the Ack is a replay for the client too.
    proxy.inject_down(ack_sealed, cli.addr)
    wait_for(lambda: cli.stats["auth_refused"]["replayed"] == 1, what="the replayed Ack refused")
    assert srv.stats["relayed"] == 1 and got == [ack(b"HELLO", proxy.upstream_addr(cli.addr)[1])]


def test_a_capture_replayed_to_a_restarted_server_is_refused(stopper: Any, tapped: Any) -> None:
    """A restart empties the replay cache; the receiver refuses what was sealed before it
    started, so the captures of the last 30 s do not become new again."""
    from adversary import UP

    srv, proxy, cli, got = tapped()
    cli.send("^hb^")
    cli.send("transfer")
    wait_for(lambda: len(got) == 1, what="the Ack")
    port = srv.addr[1]
    srv.stop()
    new = ChatUdpServer(port=port, secret=SECRET)
    new.start()
    stopper(new)
    with replayer_for(proxy.taken(UP), new.addr) as replayer:
        wait_for(lambda: new.stats["auth_refused"]["stale"] == 2, what="both captures refused as stale")
        assert new.stats["relayed"] == 0 and new.clients == {}
        assert all(box == [] for box in replayer.received().values())


def replayer_for(captures: List[bytes], to: Any) -> Any:
    from adversary import Replayer

    replayer = Replayer(len(captures))
    for sock, data in zip(replayer.sockets, captures):
        sock.sendto(data, to)
    return replayer


def test_bufsize_counts_payload_bytes_in_authenticated_mode(stopper: Any) -> None:
    """With the default bufsize=1024 the trailer used to eat into the 1,024 bytes: a message of
    993+ bytes vanished at the server (and an Ack of 993+ at the client) while send() returned."""
    srv = ChatUdpServer(port=0, secret=SECRET)
    srv.start()
    stopper(srv)
    got: List[bytes] = []
    cli = ChatUdpClient(*srv.addr, secret=SECRET, on_message=lambda d, a: got.append(d))
    cli.start()
    stopper(cli)
    cli.send(b"a" * 1024)
    assert srv.recv_message(timeout=3)[0] == b"a" * 1024
    wait_for(lambda: len(got) == 1, what="the Ack of a 1,024-byte message")
    # The Ack is longer than bufsize: verified whole, then cut at bufsize as plain mode cuts it.
    assert got[0] == ack(b"A" * 1024, cli.addr[1])[:1024]
    assert cli.stats["truncated"] == 1 and cli.stats["dropped"]["auth"] == 0
    with pytest.raises(OSError, match="cannot be delivered.*authenticated mode") as caught:
        cli.send(b"b" * 1025)
    assert caught.value.errno == errno.EMSGSIZE
    big = ChatUdpClient(*srv.addr, secret=SECRET, bufsize=65507)
    big.start()
    stopper(big)
    with pytest.raises(OSError, match="at most 65467"):
        big.send(b"c" * 65500)
    assert srv.stats["dropped"]["auth"] == 0


# -- the reflection guard of the echo and time servers ---------------------------------------


@pytest.mark.parametrize("kind", ["time", "echo"])
def test_services_default_still_answer_everyone(stopper: Any, peers: Any, kind: str) -> None:
    from chatudp.services import EchoServer, TimeServer

    srv = (TimeServer if kind == "time" else EchoServer)(port=0)
    srv.start()
    stopper(srv)
    stranger = peers()
    stranger.send(b"%Y", srv.addr)
    assert stranger.recv() == (time.strftime("%Y").encode() if kind == "time" else b"%Y")


def test_a_validating_time_server_is_no_reflector(stopper: Any, peers: Any) -> None:
    """A 129-byte request used to get 65,122 bytes back (505x) from any source address."""
    from chatudp.services import TimeServer

    srv = TimeServer(port=0, validate=True)
    srv.start()
    stopper(srv)
    victim = peers()
    request = b"%65000Y" + b"x" * 122
    assert len(request) == 129
    # The spoofed request (the "victim" never asked) earns the victim one 12-byte challenge.
    victim.send(request, srv.addr)
    challenge = victim.recv()
    assert challenge.startswith(b"^ck^") and len(challenge) == 12
    assert victim.recv_nothing()
    # Even the empty request (the tutorial's default format) is challenged, within 3x on the wire.
    victim.send(b"", srv.addr)
    assert len(victim.recv()) + 28 <= 3 * (0 + 28)
    wait_for(lambda: srv.stats["dropped"]["auth"] == 2, what="two refusals")
    assert srv.stats["answered"] == 0
    # The real owner of the address echoes the cookie and is served.
    victim.send(challenge, srv.addr)
    victim.send(request, srv.addr)
    assert len(victim.recv()) == 65000 + 122
    record_figures(
        "test_security::test_a_validating_time_server_is_no_reflector",
        unvalidated_request=len(request),
        unvalidated_answer=len(challenge),
        validated_answer=65122,
    )


@pytest.mark.parametrize("kind", ["time", "echo"])
def test_chatudp_request_clients_answer_the_challenge_by_themselves(stopper: Any, kind: str) -> None:
    from chatudp.services import EchoClient, EchoServer, TimeClient, TimeServer

    srv = (TimeServer if kind == "time" else EchoServer)(port=0, validate=True)
    srv.start()
    stopper(srv)
    with (TimeClient if kind == "time" else EchoClient)(*srv.addr, timeout=2, retries=0) as cli:
        if kind == "time":
            assert cli.request("") == time.strftime("%Y-%m-%d %X") or cli.request("%Y") == time.strftime("%Y")
            assert cli.request("%Y") == time.strftime("%Y")
        else:
            assert cli.request("hello") == b"HELLO"
            assert cli.request(b"^ck^12345678") == b"^CK^12345678"
        assert cli.stats["challenges"] == 1 and cli.stats["retries"] == 0
    assert srv.stats["dropped"]["auth"] == 1


def test_bad_validate_on_services() -> None:
    from chatudp.services import TimeServer

    with pytest.raises(TypeError, match="validate"):
        TimeServer(port=0, validate="yes")  # type: ignore[arg-type]


# -- rate limits that leaving and re-joining cannot reset --------------------------------------


def test_quit_and_rejoin_never_refill_the_bucket(stopper: Any) -> None:
    """With rate=(1, 2), a quit before each message used to delete the source's bucket: 50 of
    50 messages were relayed from one address."""
    from adversary import flood_with_quits

    srv = ChatUdpServer(port=0, rate=(1, 2))
    srv.start()
    stopper(srv)
    started = time.monotonic()
    _, acks = flood_with_quits(srv.addr, 50)
    allowed = 2 + (time.monotonic() - started) * 1
    wait_for(lambda: srv.stats["relayed"] + srv.stats["dropped"]["rate"] == 50, what="50 messages handled")
    assert srv.stats["relayed"] <= allowed and acks == srv.stats["relayed"], (srv.stats, acks)
    record_figures(
        "test_security::test_quit_and_rejoin_never_refill_the_bucket",
        sent=50,
        relayed=srv.stats["relayed"],
        rate_dropped=srv.stats["dropped"]["rate"],
        joins=srv.stats["joins"],
    )


def test_a_replayed_cookie_echo_does_not_skip_the_rate_limit(stopper: Any, peers: Any) -> None:
    """With validate=True, the same cookie echo could be replayed for its whole slot to re-join
    with a fresh bucket."""
    srv = ChatUdpServer(port=0, rate=(1, 2), validate=True)
    srv.start()
    stopper(srv)
    a = peers()
    a.send(b"^hb^", srv.addr)
    cookie = a.recv()
    started = time.monotonic()
    for i in range(30):
        a.send(b"quit", srv.addr)
        a.send(cookie, srv.addr)
        a.send(b"again %d" % i, srv.addr)
    wait_for(lambda: srv.stats["relayed"] + srv.stats["dropped"]["rate"] == 30, what="30 messages handled")
    assert srv.stats["relayed"] <= 2 + (time.monotonic() - started), srv.stats
# -- validate=True: first messages kept, no protocol datagram relayed ---------------------------


def test_first_messages_are_held_until_validation_and_echoes_never_relayed(stopper: Any, peers: Any) -> None:
    """A client sending three messages right after start() used to lose the first two, and its
    extra cookie echoes reached every member as chat (Ack b'^CK^...')."""
    srv = ChatUdpServer(port=0, validate=True)
    srv.start()
    stopper(srv)
    member = peers()
    member.send(b"^hb^", srv.addr)
    member.send(member.recv(), srv.addr)
    wait_for(lambda: member.addr in srv.clients, what="the member joins")
    got: List[bytes] = []
    cli = ChatUdpClient(*srv.addr, on_message=lambda d, a: got.append(d))
    cli.start()
    stopper(cli)
    for word in ("one", "two", "three"):
        cli.send(word)
    expected = [ack(w, cli.addr[1]) for w in (b"ONE", b"TWO", b"THREE")]
    seen = [member.recv() for _ in expected]
    assert seen == expected
    wait_for(lambda: got == expected, what="the client's own Acks")
    assert member.recv_nothing(0.3)
    # A member's cookie echo (a duplicate, or sent by hand) is no chat message either.
    cli_cookie_like = b"^ck^" + b"\x00" * 8
    member.send(cli_cookie_like, srv.addr)
    assert member.recv_nothing(0.3)
    assert srv.stats["relayed"] == 3 and srv.stats["dropped"]["unvalidated"] == 0
    record_figures(
        "test_security::test_first_messages_are_held_until_validation_and_echoes_never_relayed",
        sent_before_validation=3,
        relayed=srv.stats["relayed"],
        challenges_answered=srv.stats["joins"] - 1,
    )


def test_messages_that_cannot_be_held_are_counted(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, validate=True)
    srv.start()
    stopper(srv)
    a = peers()
    for i in range(10):
        a.send(b"early %d" % i, srv.addr)
    # Eight are held, the other two refused and counted; the eight arrive once a answers.
    wait_for(lambda: srv.stats["dropped"]["unvalidated"] == 2, what="two refusals")
    cookie = a.recv()
    while len(cookie) != 12:
        cookie = a.recv()
    a.send(cookie, srv.addr)
    acks = []
    while len(acks) < 8:
        data = a.recv()
        if data.startswith(b"Ack"):
            acks.append(data)
    assert acks == [ack(b"EARLY %d" % i, a.port) for i in range(8)]
