"""Opt-in protections: address validation (reflection guard) and authenticated datagrams."""

from __future__ import annotations

import os
from typing import Any, List

import pytest

from chatudp import ChatUdpClient, ChatUdpServer
from conftest import wait_for

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
        assert recorded.startswith(b"^hb^") and len(recorded) == 4 + 32
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
