"""What a tutorial script or a bot reaches into: the live ``clients`` table (removals reach the
relay), ``event.set()`` stopping the object, the socket-like ``sock``, ``parse_ack``, and the
server's own sends (``sendto``, ``broadcast``). Real sockets on loopback, real threads."""

from __future__ import annotations

import errno
import io
import re
import socket
import threading
import time
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple

import pytest
from conftest import LOOPBACK, Peer, wait_for

from chatudp import ChatUdpClient, ChatUdpServer, ClosedError, parse_ack

Peers = Callable[..., Peer]


def ack(data: bytes, sender: Tuple[Any, ...]) -> bytes:
    return f"Ack {data.upper()!r}. from {sender[0]}:{sender[1]}".encode()


def join(server: ChatUdpServer, *peers: Peer) -> None:
    for peer in peers:
        peer.send(b"^hb^", server.addr)
    wait_for(lambda: all(p.addr in server.clients for p in peers), what="the peers to join")


@pytest.fixture
def server(stopper: Callable[[object], object]) -> ChatUdpServer:
    srv = ChatUdpServer(LOOPBACK, 0)
    stopper(srv)
    srv.start()
    return srv


def leaves_of(server: ChatUdpServer) -> List[Tuple[Any, str]]:
    left: List[Tuple[Any, str]] = []
    server.on_leave = lambda addr, reason: left.append((addr, reason))
    return left


# -- clients: a live mapping ----------------------------------------------------------------------


def test_clients_reads_the_table_as_a_dict_does(server: ChatUdpServer, peers: Peers) -> None:
    a, b = peers(), peers()
    join(server, a, b)
    clients = server.clients
    assert isinstance(clients, MutableMapping)
    snapshot = clients.copy()
    assert type(snapshot) is dict and set(snapshot) == {a.addr, b.addr}
    assert clients == snapshot and snapshot == clients and repr(clients) == repr(snapshot)
    assert len(clients) == 2 and sorted(clients) == sorted(snapshot) and dict(clients) == snapshot
    assert all(isinstance(t, float) and abs(t - time.time()) < 60 for t in clients.values())
    assert clients[a.addr] == snapshot[a.addr] and clients.get(("127.0.0.1", 1)) is None
    # A key is what the table gives, as for a dict: no name resolution, no other spelling.
    assert ("localhost", a.port) not in clients and [a.addr[0], a.port] not in clients
    assert "x" not in clients and (a.addr[0], a.port, 0, 0) not in clients
    # Live: a new client shows up in the same view object.
    c = peers()
    join(server, c)
    assert c.addr in clients and len(clients) == 3


def test_clients_before_start_is_empty() -> None:
    server = ChatUdpServer(LOOPBACK, 0)
    assert server.clients == {} and len(server.clients) == 0 and repr(server.clients) == "{}"
    server.clients.clear()  # nothing to remove, nothing raised
    with pytest.raises(KeyError):
        del server.clients[("127.0.0.1", 1)]


def test_del_removes_a_client_from_the_relay_and_reports_it_once(server: ChatUdpServer, peers: Peers) -> None:
    left = leaves_of(server)
    joined: List[Any] = []
    server.on_join = joined.append
    a, b = peers(), peers()
    join(server, a, b)
    del server.clients[a.addr]
    assert a.addr not in server.clients and b.addr in server.clients
    b.send(b"after", server.addr)
    assert b.recv() == ack(b"after", b.addr)
    assert a.recv_nothing(), "a removed client still got an Ack"
    wait_for(lambda: left, what="the leave")
    with pytest.raises(KeyError):
        del server.clients[a.addr]
    # Its quit now finds nothing to leave: no second report.
    a.send(b"quit", server.addr)
    b.send(b"sync", server.addr)
    assert b.recv() == ack(b"sync", b.addr)
    assert server.clients.pop(b.addr) > 0
    wait_for(lambda: len(left) == 2, what="b's leave")
    assert left == [(a.addr, "removed"), (b.addr, "removed")]
    assert server.stats["leaves"] == 2 and server.stats["expired"] == 0
    # A removed client that sends again joins again, as after its own quit.
    join(server, a)
    wait_for(lambda: joined.count(a.addr) == 2, what="a to join again")


def test_clear_empties_the_relay_table_so_nobody_gets_bye(server: ChatUdpServer, peers: Peers) -> None:
    left = leaves_of(server)
    group = [peers() for _ in range(4)]
    join(server, *group)
    server.clients.clear()
    assert server.clients == {}
    wait_for(lambda: len(left) == 4, what="four leaves")
    assert sorted(left) == sorted((p.addr, "removed") for p in group)
    server.stop()
    assert all(p.recv_nothing() for p in group)


def test_removal_works_with_workers(stopper: Callable[[object], object], peers: Peers) -> None:
    server = ChatUdpServer(LOOPBACK, 0, workers=3)
    stopper(server)
    left = leaves_of(server)
    server.start()
    group = [peers() for _ in range(9)]
    join(server, *group)
    for p in group[:3]:
        del server.clients[p.addr]
    server.clients.clear()
    wait_for(lambda: len(left) == 9, what="nine leaves")
    assert sorted(left) == sorted((p.addr, "removed") for p in group)
    time.sleep(0.1)
    assert len(left) == 9, "a leave was reported twice"


def test_clients_cannot_be_added_to(server: ChatUdpServer) -> None:
    with pytest.raises(TypeError, match="joins the table by sending"):
        server.clients[("127.0.0.1", 5000)] = time.time()
    with pytest.raises(TypeError):
        server.clients.update({("127.0.0.1", 5000): 1.0})
    assert server.clients == {}


# -- event.set() stops ------------------------------------------------------------------------------


def test_event_set_stops_the_server_as_the_tutorial_loops_expect(server: ChatUdpServer, peers: Peers) -> None:
    a = peers()
    join(server, a)
    loop_ended = threading.Event()

    def tutorial_loop() -> None:  # the shape of the tutorial's receive loop
        while not server.event.is_set():
            server.event.wait(0.05)
        loop_ended.set()

    threading.Thread(target=tutorial_loop, daemon=True).start()
    server.event.set()
    assert not server.running and server.event.is_set()
    assert a.recv() == b"Bye!"
    assert loop_ended.wait(5)
    server.stop()  # still idempotent
    server.event.set()
    assert a.recv_nothing()


def test_event_set_from_a_callback_does_not_deadlock(stopper: Callable[[object], object], peers: Peers) -> None:
    server = ChatUdpServer(LOOPBACK, 0, on_message=lambda data, addr: server.event.set())
    stopper(server)
    server.start()
    a = peers()
    a.send(b"stop please", server.addr)
    assert a.recv() == ack(b"stop please", a.addr)
    wait_for(lambda: not server.running and server.event.is_set(), what="the server to stop")
    assert a.recv() == b"Bye!"


def test_event_set_stops_a_client_and_a_service(server: ChatUdpServer) -> None:
    from chatudp import EchoServer

    client = ChatUdpClient(*server.addr[:2])
    client.start()
    client.event.set()
    assert not client.running and client.event.is_set()
    with pytest.raises(ClosedError):
        client.send("late")
    echo = EchoServer(LOOPBACK, 0)
    echo.start()
    echo.event.set()
    assert not echo.running


def test_event_set_before_start_means_stopped() -> None:
    server = ChatUdpServer(LOOPBACK, 0)
    server.event.set()
    assert server.event.is_set()
    with pytest.raises(RuntimeError, match="stopped"):
        server.start()


# -- sock: the safe subset ----------------------------------------------------------------------------


def test_server_sock_names_and_sends(server: ChatUdpServer, peers: Peers) -> None:
    sock = server.sock
    assert sock.getsockname() == server.addr
    assert (sock.family, sock.type) == (socket.AF_INET, socket.SOCK_DGRAM)
    a = peers()
    assert sock.sendto(b"from the sock", a.addr) == len(b"from the sock")
    data, source = a.sock.recvfrom(100)
    assert (data, source) == (b"from the sock", server.addr)
    with pytest.raises(io.UnsupportedOperation, match="recv_message"):
        sock.fileno()
    with pytest.raises(io.UnsupportedOperation, match="on_message"):
        sock.recv(1024)
    with pytest.raises(io.UnsupportedOperation, match="on_message"):
        sock.recvfrom(1024)
    with pytest.raises(OSError):
        sock.getpeername()
    assert "ChatUdpServer" in repr(sock)


def test_client_sock_sends_to_its_server_only(server: ChatUdpServer, stopper: Callable[[object], object]) -> None:
    client = ChatUdpClient(*server.addr[:2])
    stopper(client)
    with pytest.raises(OSError):
        client.sock.getsockname()
    client.start()
    assert client.sock.getsockname() == client.addr and client.sock.getpeername() == server.addr
    client.sock.sendto(b"hi", server.addr)
    data, _ = client.recv_message(timeout=5)
    assert data == ack(b"hi", client.addr)
    with pytest.raises(OSError) as caught:
        client.sock.sendto(b"elsewhere", ("127.0.0.1", 9))
    assert caught.value.errno == errno.EISCONN


def test_sock_family_over_ipv6(stopper: Callable[[object], object]) -> None:
    try:
        server = ChatUdpServer("::1", 0)
        stopper(server)
        assert server.sock.family == socket.AF_INET6
        server.start()
    except OSError:
        pytest.skip("no IPv6 loopback here")
    assert server.sock.family == socket.AF_INET6 and len(server.sock.getsockname()) == 4


# -- parse_ack ----------------------------------------------------------------------------------


ODD_MESSAGES = [
    b"",
    b"hello",
    b"it's",
    b'say "hi"',
    b"both ' and \"",
    b"back\\slash",
    b"\t\n\r\x00\x1f\x7f",
    bytes(range(256)),
    b". from 1.2.3.4:5",
    "你好".encode(),
]


def test_parse_ack_reads_back_what_the_relay_sends(server: ChatUdpServer, peers: Peers) -> None:
    a = peers()
    for message in ODD_MESSAGES:
        a.send(message, server.addr)
        got = a.recv()
        assert parse_ack(got) == (message.upper(), a.addr), got
    assert parse_ack(bytearray(ack(b"x", a.addr))) == (b"X", a.addr)


def test_parse_ack_over_ipv6(stopper: Callable[[object], object]) -> None:
    try:
        server = ChatUdpServer("::1", 0)
        stopper(server)
        server.start()
        peer = Peer(socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        peer.send(b"six", server.addr)
        got = peer.recv()
        assert parse_ack(got) == (b"SIX", peer.addr)
        assert peer.addr in server.clients  # the same tuple the table holds
    finally:
        peer.close()


@pytest.mark.parametrize(
    "datagram",
    [
        b"Bye!",
        b"^hb^",
        b"hello",
        b"",
        b"Ack b'hello'. from 127.0.0.1:5000",  # lower case never comes from a relay
        b"Ack b'HI'. from 127.0.0.1:70000",
        b"Ack b'HI'. from 127.0.0.1:0500",
        b"Ack b'HI'. from 127.0.0.1:",
        b"Ack b'HI'. from localhost:5000",
        b"Ack b'HI'. from 127.000.0.1:5000",
        b"Ack b'HI'.from 127.0.0.1:5000",
        b"Ack b'A' b'B'. from 127.0.0.1:5000",
        b"Ack 'HI'. from 127.0.0.1:5000",
        b"Ack b\"HI\". from 127.0.0.1:5000",  # not repr's choice of quotes
        b"Ack b'\\x41'. from 127.0.0.1:5000",  # not repr's spelling of A
        b"Ack __import__('os'). from 127.0.0.1:5000",
        b"Ack b'HI'. from 127.0.0.1:5000\n",
        "Ack b'\u00e9'. from 127.0.0.1:5000".encode(),
    ],
)
def test_parse_ack_refuses_what_is_not_an_ack(datagram: bytes) -> None:
    assert parse_ack(datagram) is None


# -- the server's own sends ----------------------------------------------------------------------------


def test_broadcast_reaches_every_live_client_and_sendto_anyone(server: ChatUdpServer, peers: Peers) -> None:
    a, b, outsider = peers(), peers(), peers()
    join(server, a, b)
    sent = server.stats["sent"]
    server.broadcast(b"news")
    assert a.recv() == b"news" and b.recv() == b"news"
    assert outsider.recv_nothing()
    server.sendto(bytearray(b"direct"), outsider.addr)
    data, source = outsider.sock.recvfrom(100)
    assert (data, source) == (b"direct", server.addr)
    wait_for(lambda: server.stats["sent"] == sent + 3, what="the sends to be counted")
    assert server.stats["relayed"] == 0
    assert server.clients.keys() == {a.addr, b.addr}  # sending makes nobody a client


def test_broadcast_skips_clients_past_interval(stopper: Callable[[object], object], peers: Peers) -> None:
    server = ChatUdpServer(LOOPBACK, 0, interval=0.3, expiry_grace=60)
    stopper(server)
    server.start()
    stale, fresh = peers(), peers()
    join(server, stale)
    time.sleep(0.5)
    join(server, fresh)
    server.broadcast(b"to the living")
    assert fresh.recv() == b"to the living"
    assert stale.recv_nothing()


def test_sends_from_a_callback_a_bot(stopper: Callable[[object], object], peers: Peers) -> None:
    def bot(data: bytes, addr: Any) -> None:
        if data.startswith(b"!echo "):
            server.sendto(data[6:], addr)
        elif data == b"!all":
            server.broadcast(b"bot: hello everyone")

    server = ChatUdpServer(LOOPBACK, 0, on_message=bot)
    stopper(server)
    server.start()
    a, b = peers(), peers()
    join(server, a, b)
    a.send(b"!echo ping", server.addr)
    assert a.recv() == ack(b"!echo ping", a.addr) and b.recv() == ack(b"!echo ping", a.addr)
    assert a.recv() == b"ping"
    b.send(b"!all", server.addr)
    for p in (a, b):
        assert p.recv() == ack(b"!all", b.addr)
        assert p.recv() == b"bot: hello everyone"


def test_broadcast_with_workers_reaches_each_client_once(stopper: Callable[[object], object], peers: Peers) -> None:
    server = ChatUdpServer(LOOPBACK, 0, workers=3)
    stopper(server)
    server.start()
    group = [peers() for _ in range(12)]
    join(server, *group)
    for n in range(5):
        server.broadcast(b"round %d" % n)
    for p in group:
        assert [p.recv() for _ in range(5)] == [b"round %d" % n for n in range(5)]
        assert p.recv_nothing(0.1)


def test_sends_are_sealed_in_authenticated_mode(stopper: Callable[[object], object]) -> None:
    secret = b"0123456789abcdef0123"
    server = ChatUdpServer(LOOPBACK, 0, secret=secret)
    stopper(server)
    server.start()
    client = ChatUdpClient(*server.addr[:2], secret=secret)
    stopper(client)
    client.start()
    client.send("^hb^")
    wait_for(lambda: len(server.clients) == 1, what="the client to join")
    server.broadcast(b"sealed")
    server.sendto(b"sealed too", client.addr)
    assert client.recv_message(timeout=5)[0] == b"sealed"
    assert client.recv_message(timeout=5)[0] == b"sealed too"
    assert client.stats["auth_refused"]["bad_tag"] == 0


def test_sendto_and_broadcast_errors(peers: Peers) -> None:
    server = ChatUdpServer(LOOPBACK, 0)
    with pytest.raises(RuntimeError, match="start"):
        server.broadcast(b"early")
    server.start()
    try:
        with pytest.raises(TypeError, match="bytes"):
            server.broadcast("text")  # type: ignore[arg-type]
        with pytest.raises(OSError) as caught:
            server.sendto(b"x" * 70000, peers().addr)
        assert caught.value.errno == errno.EMSGSIZE
        with pytest.raises(ValueError, match="IPv6"):
            server.sendto(b"x", ("::1", 5000, 0, 0))  # type: ignore[arg-type]
    finally:
        server.stop()
    with pytest.raises(ClosedError):
        server.broadcast(b"late")
    with pytest.raises(ClosedError):
        server.sendto(b"late", ("127.0.0.1", 9))


def test_many_sends_never_wait_for_the_socket(server: ChatUdpServer, peers: Peers) -> None:
    """The calls queue for the socket thread: a burst returns at once (each send is a queue
    push), and whatever the queue could not take is refused with BlockingIOError, never
    waited for."""
    a = peers()
    join(server, a)
    refused = 0
    for n in range(5000):
        try:
            server.sendto(b"%d" % n, a.addr)
        except BlockingIOError:
            refused += 1
    wait_for(lambda: server.stats["sent"] + refused >= 5000, what="the burst to be sent")


# -- the README's bot recipes, run as they are shown ----------------------------------------------------


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks(heading: str) -> List[str]:
    """The ```python blocks of the README section under `heading`."""
    text = README.read_text(encoding="utf-8")
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def run_snippet(code: str) -> Tuple[Dict[str, Any], threading.Thread]:
    """Runs `code` on a thread of its own (its last line waits on an event), as a script would."""
    namespace: Dict[str, Any] = {"__name__": "__readme__"}
    thread = threading.Thread(target=exec, args=(compile(code, "README.md", "exec"), namespace), daemon=True)
    thread.start()
    return namespace, thread


def test_readme_client_side_echo_bot(server: ChatUdpServer, peers: Peers) -> None:
    code = readme_blocks("Writing a bot")[0]
    assert len(code.strip().splitlines()) <= 12 and "9999" in code
    namespace, thread = run_snippet(code.replace("9999", str(server.addr[1])))
    wait_for(lambda: "bot" in namespace and namespace["bot"].addr in server.clients, what="the bot to join")
    bot = namespace["bot"]
    human = peers()
    human.send(b"Hello bot", server.addr)
    assert human.recv() == ack(b"Hello bot", human.addr)
    assert human.recv() == ack(b"echo: hello bot", bot.addr)
    assert human.recv_nothing(), "the bot answered its own echo"
    bot.event.set()
    thread.join(5)
    assert not thread.is_alive() and not bot.running


def test_readme_server_side_echo_bot(peers: Peers) -> None:
    code = readme_blocks("Writing a bot")[1]
    assert len(code.strip().splitlines()) <= 12 and '"127.0.0.1", 9999' in code
    namespace, thread = run_snippet(code.replace('"127.0.0.1", 9999', '"127.0.0.1", 0'))
    wait_for(lambda: "server" in namespace and namespace["server"].running, what="the bot's server")
    server = namespace["server"]
    try:
        human = peers()
        human.send(b"!echo ping", server.addr)
        assert human.recv() == ack(b"!echo ping", human.addr)
        assert human.recv() == b"ping"
        human.send(b"!who", server.addr)
        assert human.recv() == ack(b"!who", human.addr)
        assert human.recv() == b"1 clients here"
    finally:
        server.event.set()
    thread.join(5)
    assert not thread.is_alive() and human.recv() == b"Bye!"


def test_sendto_checks_the_address(server: ChatUdpServer) -> None:
    with pytest.raises(TypeError, match="addr"):
        server.sendto(b"x", "127.0.0.1:5000")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"addr\[1\]"):
        server.sendto(b"x", ("127.0.0.1", "5000"))  # type: ignore[arg-type]
    with pytest.raises(OverflowError, match=r"addr\[1\]"):
        server.sendto(b"x", ("127.0.0.1", 70000))


def test_a_copy_made_while_clients_leave_is_whole(server: ChatUdpServer, peers: Peers) -> None:
    """dict(view) looks each key up after listing them: a client leaving in between must not
    make the copy fail (the walk's snapshot answers for it)."""
    a, b = peers(), peers()
    join(server, a, b)
    view = server.clients
    keys = list(view.keys())
    del server.clients[a.addr]
    assert {k: view[k] for k in keys} == {a.addr: view[a.addr], b.addr: view[b.addr]}
    assert a.addr not in view and a.addr not in server.clients
    with pytest.raises(KeyError):
        server.clients[a.addr]
    for _ in range(50):  # quits racing with copies
        a.send(b"^hb^", server.addr)
        a.send(b"quit", server.addr)
        assert set(dict(server.clients)) <= {a.addr, b.addr}
