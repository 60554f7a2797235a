"""`workers=N`: N socket threads on one port (SO_REUSEPORT), one clients table, every Ack once."""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import Any, Dict, List, Tuple

import pytest

from chatudp import ChatUdpServer
from conftest import LOOPBACK, wait_for

CLIENTS = 64
SENDERS = 10
MESSAGES = 40


def chatudp_threads() -> List[str]:
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue
    return [n for n in names if n.startswith("chatudp-server")]


def bound(count: int) -> List[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind((LOOPBACK, 0))
        socks.append(sock)
    return socks


def drain(sock: socket.socket, want: int, timeout: float = 20.0) -> List[bytes]:
    """Datagrams until `want` have come, or the socket stays silent for a while."""
    got: List[bytes] = []
    deadline = time.monotonic() + timeout
    sock.settimeout(1.0)
    while len(got) < want and time.monotonic() < deadline:
        try:
            got.append(sock.recv(65535))
        except socket.timeout:
            continue
    return got


@pytest.mark.parametrize("workers", [0, -1])
def test_workers_must_be_at_least_one(workers: int) -> None:
    with pytest.raises(ValueError, match="workers"):
        ChatUdpServer(port=0, workers=workers)


@pytest.mark.parametrize("workers", ["2", 2.0, True])
def test_workers_must_be_an_int(workers: Any) -> None:
    with pytest.raises(TypeError, match="workers"):
        ChatUdpServer(port=0, workers=workers)


def test_every_member_gets_every_ack_once_in_order(stopper: Any) -> None:
    server = ChatUdpServer(LOOPBACK, 0, 30, workers=4)
    server.start()
    stopper(server)
    assert len(chatudp_threads()) >= 4
    members = bound(CLIENTS)
    try:
        for sock in members:
            sock.sendto(b"^hb^", server.addr)
        wait_for(lambda: len(server.clients) == CLIENTS, what="64 clients to join")
        senders = members[:SENDERS]

        def send(sock: socket.socket) -> None:
            for i in range(MESSAGES):
                sock.sendto(b"m%03d" % i, server.addr)
                if i % 8 == 7:
                    time.sleep(0.002)  # keep the receivers' buffers from overflowing

        threads = [threading.Thread(target=send, args=(s,)) for s in senders]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        want: Dict[int, List[bytes]] = {
            s.getsockname()[1]: [b"Ack b'M%03d'. from 127.0.0.1:%d" % (i, s.getsockname()[1]) for i in range(MESSAGES)]
            for s in senders
        }
        total = SENDERS * MESSAGES
        for sock in members:
            got = drain(sock, total)
            assert len(got) == total, f"{sock.getsockname()} got {len(got)} of {total}"
            by_sender: Dict[int, List[bytes]] = {}
            for ack in got:
                by_sender.setdefault(int(ack.rsplit(b":", 1)[1]), []).append(ack)
            assert by_sender == want
        stats = server.stats
        assert stats["relayed"] == total
        assert stats["received"] == CLIENTS + total
        assert stats["joins"] == CLIENTS

        for sock in members[:5]:
            sock.sendto(b"quit", server.addr)
            sock.sendto(b"quit", server.addr)
        wait_for(lambda: len(server.clients) == CLIENTS - 5, what="five quits")
        time.sleep(0.2)
        assert server.stats["leaves"] == 5

        server.stop()
        assert chatudp_threads() == []
        for sock in members[5:]:
            assert drain(sock, 1, timeout=3.0) == [b"Bye!"]
            sock.settimeout(0.2)
            with pytest.raises(socket.timeout):
                sock.recv(65535)
    finally:
        for sock in members:
            sock.close()
    # No socket of the group is left on the port.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(server.addr)
    finally:
        probe.close()


def test_expiry_and_leave_events_fire_once(stopper: Any) -> None:
    leaves: List[Tuple[Any, str]] = []
    server = ChatUdpServer(LOOPBACK, 0, 0.3, workers=4, expiry_grace=0.0,
                           on_leave=lambda addr, reason: leaves.append((addr, reason)))
    server.start()
    stopper(server)
    members = bound(16)
    try:
        for sock in members:
            sock.sendto(b"^hb^", server.addr)
        wait_for(lambda: len(server.clients) == 16, what="16 clients")
        wait_for(lambda: len(leaves) == 16, what="16 expiries")
        time.sleep(0.3)
        assert sorted(leaves) == sorted((s.getsockname(), "expired") for s in members)
        assert server.stats["expired"] == 16
    finally:
        for sock in members:
            sock.close()


def test_rate_limit_holds_across_workers(stopper: Any) -> None:
    # Many sources spread over the workers, each over its rate: each one is limited alike.
    server = ChatUdpServer(LOOPBACK, 0, 30, workers=4, rate=(1, 2))
    server.start()
    stopper(server)
    members = bound(12)
    try:
        for sock in members:
            for i in range(6):
                sock.sendto(b"x%d" % i, server.addr)
        # `received` is counted as a batch is read, before its datagrams are handled.
        handled = lambda: server.stats["relayed"] + server.stats["dropped"]["rate"]  # noqa: E731
        wait_for(lambda: handled() == 72, what="every datagram handled")
        assert server.stats["received"] == 72
        assert server.stats["relayed"] == 24
        assert server.stats["dropped"]["rate"] == 48
    finally:
        for sock in members:
            sock.close()


def test_busy_port_is_refused_before_joining_a_group(stopper: Any) -> None:
    first = ChatUdpServer(LOOPBACK, 0, 10, workers=2)
    first.start()
    stopper(first)
    second = ChatUdpServer(LOOPBACK, first.addr[1], 10, workers=2)
    with pytest.raises(OSError) as info:
        second.start()
    assert info.value.errno == 98  # EADDRINUSE


def test_ipv6_workers(stopper: Any) -> None:
    server = ChatUdpServer("::1", 0, 10, workers=2)
    server.start()
    stopper(server)
    socks = []
    try:
        for _ in range(4):
            sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            sock.bind(("::1", 0))
            socks.append(sock)
            sock.sendto(b"^hb^", server.addr)
        wait_for(lambda: len(server.clients) == 4, what="four IPv6 clients")
        socks[0].sendto(b"hi", server.addr)
        for sock in socks:
            assert drain(sock, 1, timeout=3.0)[0].startswith(b"Ack b'HI'. from ::1:")
    finally:
        for sock in socks:
            sock.close()


def test_a_sealed_datagram_is_accepted_once_whatever_worker_reads_it(stopper: Any) -> None:
    # A capture re-sent from many new ports lands on every worker: each one refuses it.
    from chatudp import ChatUdpClient

    secret = b"0123456789abcdef-workers"
    server = ChatUdpServer(LOOPBACK, 0, 30, workers=4, secret=secret)
    server.start()
    stopper(server)
    capture = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    capture.bind((LOOPBACK, 0))
    capture.settimeout(3.0)
    client = ChatUdpClient(LOOPBACK, capture.getsockname()[1], 30, secret=secret)
    client.start()
    stopper(client)
    client.send("once")
    sealed, _ = capture.recvfrom(65535)
    capture.close()
    replayers = bound(16)
    try:
        for sock in replayers:
            sock.sendto(sealed, server.addr)
        wait_for(lambda: server.stats["received"] == 16, what="16 replays read")
        wait_for(lambda: server.stats["auth_refused"].get("replayed", 0) == 15, what="15 replays refused")
        # The one accepted may be handled last, on another worker.
        wait_for(lambda: server.stats["relayed"] == 1, what="the first copy relayed")
        assert len(server.clients) == 1
    finally:
        for sock in replayers:
            sock.close()


def test_validation_works_on_every_worker(stopper: Any) -> None:
    from chatudp import ChatUdpClient

    server = ChatUdpServer(LOOPBACK, 0, 30, workers=4, validate=True)
    server.start()
    stopper(server)
    got: List[bytes] = []
    clients = []
    for _ in range(8):
        client = ChatUdpClient(LOOPBACK, server.addr[1], 30, on_message=lambda data, addr: got.append(data))
        client.start()
        stopper(client)
        clients.append(client)
        client.send("hello")
    wait_for(lambda: server.stats["relayed"] == 8, what="8 validated messages relayed")
    assert len(server.clients) == 8
    assert server.stats["dropped"].get("unvalidated", 0) == 0
