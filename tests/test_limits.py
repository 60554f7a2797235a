"""Limits: a bounded clients table, per-source rate, allowed networks, and their counters."""

from __future__ import annotations

import socket
import time
from typing import Any, List, Tuple

import pytest

from chatudp import ChatUdpServer
from conftest import wait_for


def ack(text: bytes, port: int, host: bytes = b"127.0.0.1") -> bytes:
    return b"Ack b'" + text + b"'. from " + host + b":" + str(port).encode()


def test_full_table_refuses_newcomers_and_keeps_live_clients(stopper: Any, peers: Any) -> None:
    rejected: List[Tuple[Any, str]] = []
    srv = ChatUdpServer(port=0, max_clients=2, on_reject=lambda a, r: rejected.append((a, r)))
    srv.start()
    stopper(srv)
    a, b, c = peers(), peers(), peers()
    for p in (a, b):
        p.send(b"^hb^", srv.addr)
    wait_for(lambda: len(srv.clients) == 2, what="two clients")
    c.send(b"let me in", srv.addr)
    c.send(b"^hb^", srv.addr)
    wait_for(lambda: len(rejected) == 2, what="two rejections")
    assert rejected == [(c.addr, "table_full")] * 2
    assert c.recv_nothing()
    assert set(srv.clients) == {a.addr, b.addr}
    a.send(b"still here", srv.addr)
    assert b.recv() == ack(b"STILL HERE", a.port)
    assert srv.stats["dropped"]["table_full"] == 2
    # A client that leaves makes room.
    a.send(b"quit", srv.addr)
    c.send(b"now?", srv.addr)
    assert c.recv() == ack(b"NOW?", c.port)


def test_full_table_under_validate_refuses_as_table_full_and_expired_clients_leave(
    stopper: Any, peers: Any
) -> None:
    rejected: List[Tuple[Any, str]] = []
    left: List[Tuple[Any, str]] = []
    srv = ChatUdpServer(
        port=0,
        interval=0.5,
        expiry_grace=30,  # no timer sweep during the test: only a newcomer makes room
        max_clients=1,
        validate=True,
        on_reject=lambda a, r: rejected.append((a, r)),
        on_leave=lambda a, r: left.append((a, r)),
    )
    srv.start()
    stopper(srv)
    a, b = peers(), peers()
    a.send(b"^hb^", srv.addr)
    a.send(a.recv(), srv.addr)
    wait_for(lambda: a.addr in srv.clients, what="a validated")
    # The table is full of live clients: the newcomer is refused as such, unchallenged.
    b.send(b"^hb^", srv.addr)
    wait_for(lambda: rejected == [(b.addr, "table_full")], what="table_full rejection")
    assert b.recv_nothing()
    assert (srv.stats["dropped"]["table_full"], srv.stats["dropped"]["auth"]) == (1, 1)
    # Once a is silent past `interval` it makes room for b, and it leaves with an event.
    time.sleep(0.6)
    b.send(b"^hb^", srv.addr)
    b.send(b.recv(), srv.addr)
    wait_for(lambda: b.addr in srv.clients, what="b validated")
    wait_for(lambda: left == [(a.addr, "expired")], what="a's leave event")
    assert list(srv.clients) == [b.addr] and srv.stats["expired"] == 1


def test_rate_limit_drops_chat_but_heartbeats_keep_the_source(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, rate=(1, 3), interval=10)
    srv.start()
    stopper(srv)
    a = peers()
    for i in range(10):
        a.send(b"m%d" % i, srv.addr)
    a.send(b"^hb^", srv.addr)
    got = [a.recv() for _ in range(3)]
    assert got == [ack(b"M%d" % i, a.port) for i in range(3)]
    assert a.recv_nothing()
    wait_for(lambda: srv.stats["dropped"]["rate"] == 7, what="7 rate drops")
    assert a.addr in srv.clients
    assert srv.stats["heartbeats"] == 1


def test_allow_list_drops_other_networks(stopper: Any, peers: Any) -> None:
    rejected: List[Tuple[Any, str]] = []
    srv = ChatUdpServer(ip="0.0.0.0", port=0, allow=["127.0.0.1/32"], on_reject=lambda a, r: rejected.append((a, r)))
    srv.start()
    stopper(srv)
    to = ("127.0.0.1", srv.addr[1])
    inside = peers()
    outside = peers(socket.AF_INET, "127.0.0.2")
    outside.send(b"hello", to)
    inside.send(b"hello", to)
    assert inside.recv() == ack(b"HELLO", inside.port)
    assert outside.recv_nothing()
    wait_for(lambda: rejected == [(outside.addr, "not_allowed")], what="rejection")
    assert list(srv.clients) == [inside.addr]
    assert srv.stats["dropped"]["not_allowed"] == 1


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_clients": 0}, ValueError),
        ({"rate": (0, 1)}, ValueError),
        ({"rate": (1, 0.5)}, ValueError),
        ({"rate": 5}, TypeError),
        ({"allow": ["not a network"]}, ValueError),
        ({"allow": ["10.0.0.0/33"]}, ValueError),
        ({"on_reject": 3}, TypeError),
    ],
)
def test_bad_limits_are_clear_errors(kwargs: Any, error: type) -> None:
    with pytest.raises(error):
        ChatUdpServer(port=0, **kwargs)


def test_stats_has_every_documented_counter(stopper: Any) -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    stopper(srv)
    stats = srv.stats
    for key in ("received", "relayed", "sent", "truncated", "expired", "joins", "leaves", "dropped", "send_errors"):
        assert key in stats
    for reason in ("rate", "table_full", "not_allowed", "auth", "callback_queue_full", "send_error"):
        assert stats["dropped"][reason] == 0


@pytest.mark.parametrize("network", ["::ffff:127.0.0.1", "::ffff:0:0/96", "::/0", "127.0.0.0/8", "127.0.0.1"])
def test_allow_on_a_dual_stack_server_accepts_both_spellings_of_ipv4(stopper: Any, peers: Any, network: str) -> None:
    """An IPv4 client of a '::' server is shown as ::ffff:127.0.0.1; its network used to be
    admitted only in the IPv4 spelling."""
    srv = ChatUdpServer(ip="::", port=0, allow=[network])
    srv.start()
    stopper(srv)
    inside = peers()
    inside.send(b"hello", ("127.0.0.1", srv.addr[1]))
    assert inside.recv() == ack(b"HELLO", inside.port, b"::ffff:127.0.0.1")
    assert list(srv.clients) == [("::ffff:127.0.0.1", inside.port, 0, 0)]
    assert srv.stats["dropped"]["not_allowed"] == 0


def test_allow_on_a_dual_stack_server_still_refuses_other_networks(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(ip="::", port=0, allow=["::ffff:10.0.0.0/104", "::1"])
    srv.start()
    stopper(srv)
    outside = peers()
    outside.send(b"hello", ("127.0.0.1", srv.addr[1]))
    assert outside.recv_nothing()
    wait_for(lambda: srv.stats["dropped"]["not_allowed"] == 1, what="refusal")
