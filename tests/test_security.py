"""Opt-in protections: address validation (reflection guard) and authenticated datagrams."""

from __future__ import annotations

import errno
import os
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
    # Nothing at all for a datagram too short to pay for a challenge.
    a.send(b"", srv.addr)
    assert a.recv_nothing()
    a.send(challenge, srv.addr)
    wait_for(lambda: a.addr in srv.clients, what="validated join")
    a.send(b"hi", srv.addr)
    assert a.recv() == ack(b"HI", a.port)
    assert srv.stats["dropped"]["auth"] == 2


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
