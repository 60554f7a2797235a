"""ChatUdpServer / ChatUdpClient behaviour on real loopback sockets."""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, List, Tuple

import pytest

from chatudp import ChatUdpClient, ChatUdpServer, ClosedError
from conftest import LOOPBACK, wait_for


def ack(text: bytes, port: int) -> bytes:
    return b"Ack " + text + b". from 127.0.0.1:" + str(port).encode()


@pytest.fixture
def server(stopper: Any) -> ChatUdpServer:
    srv = ChatUdpServer(port=0, interval=10)
    srv.start()
    stopper(srv)
    return srv


def test_defaults_match_the_tutorial() -> None:
    srv = ChatUdpServer()
    assert (srv.addr, srv.interval, srv.clients) == (("127.0.0.1", 9999), 10, {})
    cli = ChatUdpClient()
    assert (cli.raddr, cli.interval) == (("127.0.0.1", 9999), 10)
    assert not srv.event.is_set() and not cli.event.is_set()


def test_port_zero_gives_the_bound_address(server: ChatUdpServer) -> None:
    ip, port = server.addr
    assert ip == LOOPBACK and port > 0


def test_heartbeat_registers_and_quit_removes(server: ChatUdpServer, peers: Any) -> None:
    a = peers()
    a.send(b"^hb^", server.addr)
    wait_for(lambda: a.addr in server.clients, what="heartbeat to register")
    before = time.time()
    assert abs(server.clients[a.addr] - before) < 5
    a.send(b" quit\n", server.addr)
    wait_for(lambda: a.addr not in server.clients, what="quit to remove")
    assert a.recv_nothing()


def test_chat_message_is_acked_to_every_client(server: ChatUdpServer, peers: Any) -> None:
    a, b, c = peers(), peers(), peers()
    for p in (a, b):
        p.send(b"^hb^", server.addr)
    wait_for(lambda: len(server.clients) == 2, what="two clients")
    c.send(b"hello", server.addr)
    expected = ack(b"b'HELLO'", c.port)
    assert [a.recv(), b.recv(), c.recv()] == [expected] * 3


def test_stop_says_bye_to_every_client(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    stopper(srv)
    a, b = peers(), peers()
    for p in (a, b):
        p.send(b"^hb^", srv.addr)
    wait_for(lambda: len(srv.clients) == 2, what="two clients")
    srv.stop()
    assert (a.recv(), b.recv()) == (b"Bye!", b"Bye!")
    assert srv.event.is_set()


def test_long_datagram_is_cut_to_bufsize_and_counted(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, bufsize=8)
    srv.start()
    stopper(srv)
    a = peers()
    a.send(b"abcdefghijkl", srv.addr)
    assert a.recv() == ack(b"b'ABCDEFGH'", a.port)
    assert srv.stats["truncated"] == 1


def test_bufsize_up_to_the_largest_datagram(stopper: Any, peers: Any) -> None:
    srv = ChatUdpServer(port=0, bufsize=65507)
    srv.start()
    stopper(srv)
    a = peers()
    a.send(b"x" * 10000, srv.addr)
    assert a.recv() == ack(b"b'" + b"X" * 10000 + b"'", a.port)
    assert srv.stats["truncated"] == 0


def test_timer_expires_silent_clients_with_on_leave(stopper: Any, peers: Any) -> None:
    events: List[Tuple[str, Any]] = []
    srv = ChatUdpServer(
        port=0,
        interval=0.2,
        on_join=lambda addr: events.append(("join", addr)),
        on_leave=lambda addr, reason: events.append((reason, addr)),
    )
    srv.start()
    stopper(srv)
    a = peers()
    a.send(b"^hb^", srv.addr)
    wait_for(lambda: a.addr in srv.clients, what="join")
    # Nothing else arrives: only the timer can expire the client.
    wait_for(lambda: ("expired", a.addr) in events, what="timer-driven expiry")
    assert events == [("join", a.addr), ("expired", a.addr)]
    assert srv.clients == {}
    assert srv.stats["expired"] == 1


def test_heartbeats_keep_a_chatudp_client_alive(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, interval=0.3)
    left: List[Any] = []
    srv.on_leave = lambda addr, reason: left.append((addr, reason))
    srv.start()
    stopper(srv)
    cli = ChatUdpClient(*srv.addr, interval=0.1, on_message=lambda d, a: None)
    cli.start()
    stopper(cli)
    wait_for(lambda: cli.addr in srv.clients, what="first heartbeat")
    time.sleep(1.0)  # several intervals: the client must stay
    assert cli.addr in srv.clients and left == []
    cli.stop()
    wait_for(lambda: left == [(cli.addr, "expired")], what="expiry after the client stops")


def test_announce_joins_at_start_and_the_default_waits_one_interval(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, interval=600)
    srv.start()
    stopper(srv)
    quiet = ChatUdpClient(*srv.addr, interval=600, on_message=lambda d, a: None)
    loud = ChatUdpClient(*srv.addr, interval=600, on_message=lambda d, a: None, announce=True)
    for cli in (quiet, loud):
        cli.start()
        stopper(cli)
    # The announcing client is in the table at once; the other only after its first heartbeat,
    # 600 s away (the tutorial's timing): it hears nothing until then.
    wait_for(lambda: loud.addr in srv.clients, what="the first heartbeat, sent at start")
    assert quiet.addr not in srv.clients
    assert srv.stats["heartbeats"] == 1
    with pytest.raises(TypeError, match="announce"):
        ChatUdpClient(announce="yes")  # type: ignore[arg-type]


def test_expiry_at_chat_time_follows_the_original_rule(stopper: Any, peers: Any) -> None:
    # A long grace keeps the timer out of the way: only the tutorial's check runs.
    srv = ChatUdpServer(port=0, interval=0.2, expiry_grace=30)
    srv.start()
    stopper(srv)
    a, b = peers(), peers()
    a.send(b"^hb^", srv.addr)
    wait_for(lambda: a.addr in srv.clients, what="a joins")
    time.sleep(0.35)
    assert a.addr in srv.clients  # silent too long, but nothing has been said yet
    b.send(b"hi", srv.addr)
    assert b.recv() == ack(b"b'HI'", b.port)
    assert a.recv_nothing()
    assert a.addr not in srv.clients


def test_callbacks_get_arguments_in_order(stopper: Any, peers: Any) -> None:
    seen: List[Tuple[Any, ...]] = []
    done = threading.Event()

    def on_leave(addr: Any, reason: str) -> None:
        seen.append(("leave", addr, reason))
        done.set()

    srv = ChatUdpServer(
        port=0,
        on_message=lambda data, addr: seen.append(("message", data, addr)),
        on_join=lambda addr: seen.append(("join", addr)),
        on_leave=on_leave,
    )
    srv.start()
    stopper(srv)
    a = peers()
    for payload in (b"^hb^", b"one", b"^hb^", b"two", b"three", b"quit"):
        a.send(payload, srv.addr)
    assert done.wait(5)
    assert seen == [
        ("join", a.addr),
        ("message", b"one", a.addr),
        ("message", b"two", a.addr),
        ("message", b"three", a.addr),
        ("leave", a.addr, "quit"),
    ]


def test_join_fires_again_after_leaving_and_quit_from_strangers_is_silent(stopper: Any, peers: Any) -> None:
    joins: List[Any] = []
    leaves: List[Any] = []
    srv = ChatUdpServer(port=0, on_join=joins.append, on_leave=lambda a, r: leaves.append((a, r)))
    srv.start()
    stopper(srv)
    a, stranger = peers(), peers()
    stranger.send(b"quit", srv.addr)
    a.send(b"^hb^", srv.addr)
    a.send(b"quit", srv.addr)
    a.send(b"back", srv.addr)
    assert a.recv() == ack(b"b'BACK'", a.port)
    wait_for(lambda: len(joins) == 2, what="second join")
    assert joins == [a.addr, a.addr]
    assert leaves == [(a.addr, "quit")]


def test_raising_callback_is_reported_and_the_relay_goes_on(
    stopper: Any, peers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    calls: List[bytes] = []

    def flaky(data: bytes, addr: Any) -> None:
        calls.append(data)
        raise ValueError("boom")

    srv = ChatUdpServer(port=0, on_message=flaky)
    srv.start()
    stopper(srv)
    a = peers()
    with caplog.at_level(logging.ERROR, logger="chatudp"):
        for text in (b"first", b"second"):
            a.send(text, srv.addr)
            assert a.recv() == ack(b"b'" + text.upper() + b"'", a.port)
        wait_for(lambda: len(calls) == 2, what="both callbacks")
        wait_for(lambda: sum("boom" in r.getMessage() or r.exc_info is not None for r in caplog.records) >= 2)
    assert srv.running


def test_slow_callback_does_not_slow_the_relay(stopper: Any, peers: Any) -> None:
    release = threading.Event()
    srv = ChatUdpServer(port=0, on_message=lambda d, a: release.wait(5))
    srv.start()
    stopper(srv)
    a = peers()
    for i in range(50):
        a.send(b"m%d" % i, srv.addr)
    # Every Ack arrives while the first callback is still blocked.
    for i in range(50):
        assert a.recv() == ack(b"b'M%d'" % i, a.port)
    release.set()


def test_full_callback_queue_drops_and_counts(stopper: Any, peers: Any) -> None:
    release = threading.Event()
    srv = ChatUdpServer(port=0, queue_size=4, on_message=lambda d, a: release.wait(5))
    srv.start()
    stopper(srv)
    a = peers()
    for i in range(40):
        a.send(b"m%d" % i, srv.addr)
    for i in range(40):
        a.recv()
    release.set()
    assert srv.stats["dropped"]["callback_queue_full"] > 0


def test_messages_are_logged_without_on_message(stopper: Any, peers: Any, caplog: pytest.LogCaptureFixture) -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    stopper(srv)
    a = peers()
    with caplog.at_level(logging.INFO, logger="chatudp"):
        a.send(b"log me", srv.addr)
        a.recv()
        wait_for(lambda: len([r for r in caplog.records if r.name == "chatudp"]) >= 2, what="two log records")
    records = [r for r in caplog.records if r.name == "chatudp"]
    assert [r.getMessage() for r in records[:2]] == ["b'log me'", str(a.addr)]
    assert records[0].threadName != "MainThread"


def test_stop_from_inside_a_callback_does_not_deadlock(stopper: Any, peers: Any) -> None:
    holder: List[ChatUdpServer] = []
    srv = ChatUdpServer(port=0, on_message=lambda d, a: holder[0].stop())
    holder.append(srv)
    srv.start()
    stopper(srv)
    a = peers()
    a.send(b"stop please", srv.addr)
    assert srv.event.wait(5)
    assert a.recv() == ack(b"b'STOP PLEASE'", a.port)
    assert a.recv() == b"Bye!"
    wait_for(lambda: not srv.running, what="server to stop")


def test_events_queued_at_stop_are_dropped_and_counted(stopper: Any, peers: Any) -> None:
    entered = threading.Event()
    release = threading.Event()
    delivered: List[bytes] = []

    def slow(data: bytes, addr: Any) -> None:
        delivered.append(data)
        entered.set()
        release.wait(5)

    srv = ChatUdpServer(port=0, on_message=slow)
    srv.start()
    stopper(srv)
    a = peers()
    for i in range(10):
        a.send(b"m%d" % i, srv.addr)
    for _ in range(10):
        a.recv()
    assert entered.wait(5)
    threading.Timer(0.2, release.set).start()
    srv.stop()  # waits for the running callback, then drops the rest
    assert delivered == [b"m0"]
    assert srv.stats["dropped"]["callback_queue_full"] == 9


def test_client_receives_through_on_message(server: ChatUdpServer, stopper: Any) -> None:
    got: List[Tuple[bytes, Any]] = []
    cli = ChatUdpClient(*server.addr, on_message=lambda d, a: got.append((d, a)))
    cli.start()
    stopper(cli)
    cli.send("héllo")
    wait_for(lambda: len(got) == 1, what="Ack")
    assert got == [(ack(b"b'H\\xc3\\xa9LLO'", cli.addr[1]), server.addr)]
    cli.send(b"raw")
    wait_for(lambda: len(got) == 2, what="second Ack")


def test_client_survives_a_closed_server_port(stopper: Any, peers: Any) -> None:
    gone = peers()
    port = gone.port
    gone.close()
    cli = ChatUdpClient(LOOPBACK, port, interval=0.05)
    cli.start()
    stopper(cli)
    for _ in range(20):
        cli.send("is anyone there?")
        time.sleep(0.01)
    assert cli.running
    assert cli.stats["unreachable"] > 0


def test_client_heartbeats_every_interval(stopper: Any, peers: Any) -> None:
    srv = peers()
    cli = ChatUdpClient(*srv.addr, interval=0.1)
    started = time.monotonic()
    cli.start()
    stopper(cli)
    assert srv.recv() == b"^hb^"
    first = time.monotonic() - started
    assert srv.recv() == b"^hb^"
    assert 0.05 < first < 2.0


def test_misuse_raises_clear_errors(stopper: Any, peers: Any) -> None:
    with pytest.raises(ValueError, match="interval"):
        ChatUdpServer(interval=0)
    with pytest.raises(ValueError, match="interval"):
        ChatUdpClient(interval=-1)
    with pytest.raises(ValueError, match="bufsize"):
        ChatUdpServer(bufsize=65508)
    with pytest.raises(ValueError, match="bufsize"):
        ChatUdpClient(bufsize=0)
    with pytest.raises(TypeError, match="on_message"):
        ChatUdpServer(on_message="not callable")  # type: ignore[arg-type]
    srv = ChatUdpServer(port=0)
    srv.start()
    stopper(srv)
    with pytest.raises(RuntimeError, match="already started"):
        srv.start()
    with pytest.raises(OSError):
        ChatUdpServer(port=srv.addr[1]).start()
    with pytest.raises(OSError):
        ChatUdpServer(ip="256.1.1.1", port=0).start()
    cli = ChatUdpClient(*srv.addr)
    with pytest.raises(RuntimeError, match="start"):
        cli.send("too early")
    cli.start()
    cli.stop()
    with pytest.raises(ClosedError):
        cli.send("too late")
    with pytest.raises(OSError):
        cli.send("too late")
    with pytest.raises(RuntimeError, match="stopped"):
        cli.start()
    with pytest.raises(TypeError):
        cli.send(42)  # type: ignore[arg-type]


def test_oversized_send_is_a_clear_oserror(server: ChatUdpServer, stopper: Any) -> None:
    cli = ChatUdpClient(*server.addr)
    cli.start()
    stopper(cli)
    with pytest.raises(OSError, match="does not fit"):
        cli.send(b"x" * 65508)


def test_ipv6_server_and_client(stopper: Any, peers: Any) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    srv = ChatUdpServer("::1", 0)
    try:
        srv.start()
    except OSError:
        pytest.skip("::1 is not available here")
    stopper(srv)
    got: List[bytes] = []
    cli = ChatUdpClient("::1", srv.addr[1], on_message=lambda d, a: got.append(d))
    cli.start()
    stopper(cli)
    cli.send("v6")
    wait_for(lambda: got, what="Ack over IPv6")
    assert got == [b"Ack b'V6'. from ::1:" + str(cli.addr[1]).encode()]
    assert list(srv.clients) == [cli.addr]
    assert len(cli.addr) == 4  # Python's IPv6 address tuple


@pytest.mark.parametrize("drop", [True, False], ids=["drop_unreachable", "original"])
def test_unreachable_clients(stopper: Any, peers: Any, drop: bool) -> None:
    left: List[Any] = []
    srv = ChatUdpServer(port=0, drop_unreachable=drop, on_leave=lambda a, r: left.append((a, r)))
    srv.start()
    stopper(srv)
    dead, alive = peers(), peers()
    dead.send(b"^hb^", srv.addr)
    wait_for(lambda: dead.addr in srv.clients, what="dead client joins")
    dead.close()
    for text in (b"one", b"two"):
        alive.send(text, srv.addr)
        assert alive.recv() == ack(b"b'" + text.upper() + b"'", alive.port)
    if drop:
        wait_for(lambda: left == [(dead.addr, "unreachable")], what="unreachable leave")
        assert dead.addr not in srv.clients
        assert srv.stats["unreachable"] == 1
    else:
        assert dead.addr in srv.clients and left == []


@pytest.mark.parametrize("workers", [1, 2])
def test_one_broadcast_drops_thousands_of_unreachable_clients(stopper: Any, workers: int) -> None:
    """3,000 clients whose ports are closed, and a small receive buffer (where the socket's error
    queue lives): the port-unreachable errors of one broadcast are read while it is sent, so
    every dead client leaves at once instead of staying when the error queue overflows."""
    dead_count = 3000
    srv = ChatUdpServer(LOOPBACK, 0, 300, rcvbuf=65536, workers=workers)
    srv.start()
    stopper(srv)
    alive = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dead: List[socket.socket] = []
    try:
        alive.bind((LOOPBACK, 0))
        alive.settimeout(5)
        alive.sendto(b"^hb^", srv.addr)
        # All open at once, so every one has a port of its own; joined in small steps, so the
        # heartbeats fit the small buffer.
        for start in range(0, dead_count, 100):
            for _ in range(100):
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                dead.append(sock)
                sock.bind((LOOPBACK, 0))
                sock.sendto(b"^hb^", srv.addr)
            wait_for(lambda: len(srv.clients) == start + 101, 10, f"{start + 100} dead clients to join")
        for sock in dead:
            sock.close()
        alive.sendto(b"one broadcast", srv.addr)
        assert alive.recv(65535).startswith(b"Ack b'ONE BROADCAST'")
        deadline = time.monotonic() + 10
        while len(srv.clients) > 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        stayed = len(srv.clients) - 1
        assert stayed == 0, f"{stayed} of {dead_count} dead clients stayed after one broadcast"
        assert list(srv.clients) == [alive.getsockname()]
        assert srv.stats["unreachable"] == dead_count
    finally:
        alive.close()
        for sock in dead:
            sock.close()


def test_port_out_of_range_is_an_overflow_error_as_in_socket() -> None:
    with pytest.raises(OverflowError, match="0-65535"):
        ChatUdpServer(port=70000)
    with pytest.raises(OverflowError, match="0-65535"):
        ChatUdpClient(rport=-1)
    with pytest.raises(TypeError):
        ChatUdpServer(port="9999")  # type: ignore[arg-type]


def test_joins_and_leaves_are_debug_records_with_extra_fields(
    stopper: Any, peers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    stopper(srv)
    a = peers()
    with caplog.at_level(logging.DEBUG, logger="chatudp.server"):
        a.send(b"^hb^", srv.addr)
        a.send(b"quit", srv.addr)
        wait_for(lambda: len([r for r in caplog.records if r.name == "chatudp.server"]) >= 2, what="records")
    records = [r for r in caplog.records if r.name == "chatudp.server"]
    assert [(r.chatudp_event, r.chatudp_addr, r.chatudp_reason) for r in records[:2]] == [  # type: ignore[attr-defined]
        ("join", a.addr, None),
        ("leave", a.addr, "quit"),
    ]
    assert records[1].getMessage() == f"leave {a.addr} (quit)"
