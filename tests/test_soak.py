"""Soak: many distinct client sockets, many datagrams, many start/stop cycles. No growth in open
file descriptors (/proc/self/fd), threads (/proc/self/task) or resident memory (VmRSS in
/proc/self/status) beyond the bounds stated below, and no datagram lost that a receive buffer
accepted.

By default each test runs for a short bounded time (the whole file in a few seconds):
500 client sockets, 20,000 datagrams, 50 start/stop cycles. With ``CHATUDP_SOAK=1``: 10,000
client sockets, 1,000,000 datagrams, 500 start/stop cycles (a few minutes).

How "no message lost that the receive buffer accepted" is counted: the kernel counts, per socket,
the datagrams it dropped because the receive buffer was full (the ``drops`` column of
/proc/net/udp). Every datagram sent on loopback is either queued in the server's receive buffer or
dropped and counted there, so ``stats["received"] == sent - drops`` says that chatudp read every
datagram the buffer accepted. The senders are paced (a burst, then wait until the server has read
it), so in practice ``drops`` stays 0 and the equality is ``received == sent``; the same holds for
the Acks, counted at the listeners that receive them.
"""

from __future__ import annotations

import gc
import os
import resource
import socket
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from chatudp import ChatUdpClient, ChatUdpServer
from conftest import LOOPBACK, thread_count, wait_for
from faultproxy import record_figures

LONG = os.environ.get("CHATUDP_SOAK") == "1"
SOCKETS = 10_000 if LONG else 500
DATAGRAMS = 1_000_000 if LONG else 20_000
CYCLES = 500 if LONG else 50
TIMEOUT = 1800 if LONG else 60

# Bounds. File descriptors and threads: back to exactly where they were once the objects are
# dropped. Resident memory: what the process gains between the end of a warm-up and the end of the
# run (the warm-up lets the allocators of Python and Rust reach their working size).
RSS_GROWTH_BOUND_KIB = 16 * 1024

pytestmark = pytest.mark.timeout(TIMEOUT)


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS in /proc/self/status")


def udp_drops(port: int) -> int:
    """Datagrams the kernel dropped at the 127.0.0.1:`port` socket (its receive buffer was full)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/udp", encoding="ascii") as table:
        next(table)
        for line in table:
            fields = line.split()
            if fields[1] == wanted:
                return int(fields[-1])
    raise AssertionError(f"no UDP socket on 127.0.0.1:{port}")


def settle() -> Tuple[int, int]:
    """Collects garbage and waits for exited threads to leave /proc; returns (fds, threads)."""
    gc.collect()
    time.sleep(0.05)
    return fd_count(), thread_count()


@pytest.fixture(scope="module", autouse=True)
def nofile() -> Iterator[int]:
    """Raises the soft RLIMIT_NOFILE to the hard limit for the many-sockets test; restores it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    yield target
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.setblocking(False)
    return sock


def _drain(sock: socket.socket, limit: int = 1 << 20) -> int:
    count = 0
    for _ in range(limit):
        try:
            sock.recv(65535)
        except BlockingIOError:
            break
        count += 1
    return count


def test_many_distinct_client_sockets(nofile: int) -> None:
    """SOCKETS distinct sources join (one heartbeat each, sent in paced batches of 500), every
    one of them gets the Ack of a chat message, then they all close. Every heartbeat was read,
    every Ack delivered; fds, threads and RSS return to their bounds."""
    fds0, threads0 = settle()
    count = min(SOCKETS, nofile - fds0 - 200)
    assert count >= min(SOCKETS, 500), f"RLIMIT_NOFILE {nofile} is too low for {SOCKETS} sockets"
    rss0 = rss_kib()
    started = time.monotonic()
    srv = ChatUdpServer(port=0, interval=600, on_join=lambda a: None)
    srv.start()
    port = srv.addr[1]
    socks: List[socket.socket] = []
    sent = 0
    try:
        for first in range(0, count, 500):
            batch = [_client_socket() for _ in range(min(500, count - first))]
            socks.extend(batch)
            for s in batch:
                s.sendto(b"^hb^", srv.addr)
                sent += 1
            wait_for(lambda: srv.stats["received"] + udp_drops(port) >= sent, timeout=10, what="the batch")
        wait_for(lambda: len(srv.clients) == count, timeout=10, what=f"{count} clients in the table")
        joined_at = time.monotonic() - started
        rss_full = rss_kib()
        acks = 0
        for n in range(2):
            socks[n].sendto(b"hello, all %d" % count, srv.addr)
            sent += 1
            wait_for(lambda: srv.stats["sent"] >= (n + 1) * count, timeout=10, what="the Ack fan-out")
            expected = ("Ack {}. from {}:{}".format(b"HELLO, ALL %d" % count, *socks[n].getsockname())).encode()
            for s in socks:
                try:
                    data = s.recv(65535)
                except BlockingIOError:
                    continue
                assert data == expected
                acks += 1
        stats = srv.stats
        drops = udp_drops(port)
    finally:
        for first in range(0, len(socks), 1000):  # close in batches
            for s in socks[first : first + 1000]:
                s.close()
        socks.clear()
        srv.stop()
    elapsed = time.monotonic() - started
    assert stats["received"] == sent - drops, (stats, sent, drops)
    assert drops == 0
    assert stats["joins"] == count and acks == 2 * count, (stats["joins"], acks)
    del srv
    fds1, threads1 = settle()
    wait_for(lambda: thread_count() <= threads0, timeout=3, what="threads back")
    rss1 = rss_kib()
    assert fds1 <= fds0, (fds0, fds1)
    record_figures(
        "test_soak::test_many_distinct_client_sockets",
        sockets=count,
        datagrams_sent=sent,
        received=stats["received"],
        kernel_drops=drops,
        acks_delivered=acks,
        joined_in_s=round(joined_at, 3),
        elapsed_s=round(elapsed, 3),
        fds=(fds0, fds1),
        threads=(threads0, threads1),
        rss_kib=(rss0, rss_full, rss1),
    )


def test_many_datagrams_none_lost(nofile: int) -> None:
    """DATAGRAMS datagrams from 4 sources (9 in 10 chat messages of 0 to 99 bytes, 1 in 10
    heartbeats) in paced bursts of 256; a listener in the table gets every Ack. The server read
    every datagram its buffer accepted, and every Ack reached every member; RSS stays within
    RSS_GROWTH_BOUND_KIB after a warm-up of 10%."""
    fds0, threads0 = settle()
    srv = ChatUdpServer(port=0, interval=600, on_message=lambda d, a: None)
    srv.start()
    port = srv.addr[1]
    listener = _client_socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    senders = [_client_socket() for _ in range(4)]
    for s in senders:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    listener.sendto(b"^hb^", srv.addr)
    for s in senders:
        s.sendto(b"^hb^", srv.addr)
    wait_for(lambda: len(srv.clients) == 5, what="5 members")
    members = 5
    sent, chats = 5, 0
    acks_listener = acks_senders = 0
    burst = 256
    payloads = [b"x" * (i % 100) for i in range(100)]
    rss_warm = 0
    started = time.monotonic()
    try:
        i = 0
        while i < DATAGRAMS:
            for _ in range(min(burst, DATAGRAMS - i)):
                s = senders[i % 4]
                if i % 10 == 9:
                    s.sendto(b"^hb^", srv.addr)
                else:
                    s.sendto(payloads[i % 100], srv.addr)
                    chats += 1
                i += 1
            sent = 5 + i
            # Paced: the next burst only once the server has read this one (bounded wait).
            deadline = time.monotonic() + 10
            while srv.stats["received"] + udp_drops(port) < sent:
                assert time.monotonic() < deadline, "the server stopped reading"
                acks_listener += _drain(listener)
                time.sleep(0.0002)
            acks_listener += _drain(listener)
            for s in senders:
                acks_senders += _drain(s)
            if not rss_warm and i >= DATAGRAMS // 10:
                rss_warm = rss_kib()
        wait_for(lambda: srv.stats["sent"] >= chats * members, timeout=10, what="every Ack sent")
        time.sleep(0.05)
        acks_listener += _drain(listener)
        for s in senders:
            acks_senders += _drain(s)
        elapsed = time.monotonic() - started
        stats = srv.stats
        drops = udp_drops(port)
        listener_drops = udp_drops(listener.getsockname()[1])
        rss_end = rss_kib()
    finally:
        srv.stop()
        listener.close()
        for s in senders:
            s.close()
    assert stats["received"] == sent - drops, (stats, sent, drops)
    assert drops == 0 and listener_drops == 0
    assert stats["relayed"] == chats and stats["sent"] == chats * members
    assert acks_listener == chats, (acks_listener, chats)
    assert acks_senders == chats * 4, (acks_senders, chats * 4)
    assert rss_end - rss_warm <= RSS_GROWTH_BOUND_KIB, (rss_warm, rss_end)
    del srv
    fds1, _ = settle()
    wait_for(lambda: thread_count() <= threads0, timeout=3, what="threads back")
    assert fds1 <= fds0, (fds0, fds1)
    record_figures(
        "test_soak::test_many_datagrams_none_lost",
        datagrams=sent,
        chat_messages=chats,
        received=stats["received"],
        acks_sent=stats["sent"],
        acks_at_listener=acks_listener,
        kernel_drops=(drops, listener_drops),
        elapsed_s=round(elapsed, 3),
        datagrams_per_s=round(sent / elapsed),
        rss_kib_warm_end=(rss_warm, rss_end),
        fds=(fds0, fds1),
        threads=(threads0, thread_count()),
    )


def _cycle() -> None:
    got: List[bytes] = []
    srv = ChatUdpServer(port=0, interval=600, on_message=lambda d, a: None)
    srv.start()
    a = ChatUdpClient(*srv.addr, interval=600, on_message=lambda d, addr: got.append(d))
    b = ChatUdpClient(*srv.addr, interval=600, on_message=lambda d, addr: got.append(d))
    a.start()
    b.start()
    a.send("^hb^")
    b.send("ping")
    wait_for(lambda: len(got) >= 2, timeout=5, what="Acks at both clients")
    srv.stop()
    wait_for(lambda: got.count(b"Bye!") == 2, timeout=5, what="Bye! at both clients")
    a.stop()
    b.stop()


def test_start_stop_cycles_leak_nothing() -> None:
    """CYCLES times: a server and two clients start, exchange an Ack and Bye!, and stop. After a
    warm-up of 5 cycles, fds and threads are back to where they were after each cycle, and RSS
    grows by at most RSS_GROWTH_BOUND_KIB over the rest."""
    fds0, threads0 = settle()
    rss0 = rss_kib()
    started = time.monotonic()
    samples: Dict[int, Tuple[int, int, int]] = {}
    for n in range(CYCLES):
        _cycle()
        if n == 4 or n == CYCLES - 1 or n % 100 == 99:
            fds, threads = settle()
            wait_for(lambda: thread_count() <= threads0, timeout=3, what="threads back")
            samples[n + 1] = (fds, thread_count(), rss_kib())
    elapsed = time.monotonic() - started
    warm = samples[5]
    end = samples[CYCLES]
    assert end[0] <= fds0 and end[1] <= threads0, (fds0, threads0, samples)
    assert end[2] - warm[2] <= RSS_GROWTH_BOUND_KIB, samples
    record_figures(
        "test_soak::test_start_stop_cycles_leak_nothing",
        cycles=CYCLES,
        elapsed_s=round(elapsed, 3),
        ms_per_cycle=round(elapsed / CYCLES * 1000, 2),
        fds_threads_before=(fds0, threads0),
        rss_kib_before=rss0,
        after_cycle={k: {"fds": v[0], "threads": v[1], "rss_kib": v[2]} for k, v in samples.items()},
    )


def test_stop_releases_every_fd() -> None:
    fds0, _ = settle()
    srv = ChatUdpServer(port=0)
    srv.start()
    cli = ChatUdpClient(*srv.addr)
    cli.start()
    client_port = cli.addr[1]
    cli.stop()
    srv.stop()
    # The objects are still referenced (as a program that keeps them in a list would).
    fds_after_stop = fd_count()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((LOOPBACK, client_port))  # free again once the client's socket is closed
    finally:
        probe.close()
    assert fds_after_stop == fds0, (fds0, fds_after_stop)
    _keep: Any = (srv, cli)
