"""A slow relay must not stall the others: a relay whose process is frozen (SIGSTOP) stops
reading from nats-server, which cuts it as a slow consumer; the other relays go on without a
gap, and the frozen one, once it runs again, counts the cut as a disconnect, reconnects by itself
and is federated again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator

import pytest
from brokers import NatsServer
from conftest import LOOPBACK, wait_for

from chatudp import ChatUdpServer

MESSAGES = 20000
SIZE = 1200  # 24 MB in all: far more than the kernel buffers plus the server's pending limit

# A relay in a process of its own, so that it can be frozen: prints its bus stats as one JSON
# line for each line it reads.
RELAY = """
import json, sys
from chatudp import ChatUdpServer
server = ChatUdpServer("127.0.0.1", 0, 30, bus=sys.argv[1], room="slow")
server.start()
print(json.dumps({"id": server.stats["bus"]["id"]}), flush=True)
for _ in sys.stdin:
    print(json.dumps(server.stats["bus"]), flush=True)
server.stop()
"""


@pytest.fixture
def strict_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server that cuts a subscriber as soon as 256 KiB wait for it for half a second."""
    config = tmp_path / "nats.conf"
    config.write_text('max_pending: 262144\nmax_payload: 65536\nwrite_deadline: "500ms"\n', encoding="utf-8")
    server = NatsServer()
    server.args = [*server.args, "-c", str(config)]
    server.start()
    try:
        yield server
    finally:
        server.kill()


def bus(server: ChatUdpServer) -> Dict[str, Any]:
    stats: Dict[str, Any] = server.stats["bus"]
    return stats


def test_a_frozen_relay_is_cut_and_the_others_do_not_stall(strict_nats: NatsServer, stopper: Callable[[Any], Any]) -> None:
    frozen = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(RELAY), strict_nats.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert frozen.stdin is not None and frozen.stdout is not None
        frozen_id = json.loads(frozen.stdout.readline())["id"]

        def frozen_stats() -> Dict[str, Any]:
            assert frozen.stdin is not None and frozen.stdout is not None
            frozen.stdin.write("stats\n")
            frozen.stdin.flush()
            stats: Dict[str, Any] = json.loads(frozen.stdout.readline())
            return stats

        sender_relay = stopper(ChatUdpServer(LOOPBACK, 0, 30, bus=strict_nats.url, room="slow"))
        listener_relay = stopper(ChatUdpServer(LOOPBACK, 0, 30, bus=strict_nats.url, room="slow"))
        sender_relay.start()
        listener_relay.start()
        for relay in (sender_relay, listener_relay):
            wait_for(lambda: frozen_id in {p["id"] for p in relay.peers}, 15, "the relays to see each other")
        wait_for(lambda: frozen_stats()["connected"], 15, "the relay to connect")

        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 20)
        listener.bind((LOOPBACK, 0))
        listener.sendto(b"^hb^", listener_relay.addr)
        wait_for(lambda: len(listener_relay.clients) == 1, 5, "the listener to join its relay")

        os.kill(frozen.pid, signal.SIGSTOP)
        try:
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            payload = b"x" * SIZE
            got = 0
            listener.setblocking(False)  # drained between sends, without waiting
            for index in range(MESSAGES):
                sender.sendto(b"%06d" % index + payload, sender_relay.addr)
                if index % 64 == 63:
                    time.sleep(0.002)  # a steady flow the relays and the broker can carry here
                    while True:
                        try:
                            listener.recv(65536)
                            got += 1
                        except BlockingIOError:
                            break
            published = bus(sender_relay)["published"]
            listener.settimeout(5)
            deadline = time.monotonic() + 20
            while got < published and time.monotonic() < deadline:
                try:
                    listener.recv(65536)
                    got += 1
                except socket.timeout:
                    break
            sender.close()
            listener.close()
        finally:
            os.kill(frozen.pid, signal.SIGCONT)

        # The others went on without a gap and were never cut.
        assert published > MESSAGES * 0.9, bus(sender_relay)
        # (received also counts the relays' announcements; lost counts every gap in the sequence)
        heard = bus(listener_relay)["received"]
        assert heard >= published, f"the listener's relay got {heard} of {published} messages from the bus"
        # The last hop is plain UDP into a Python socket: it may lose some, but delivery flowed.
        assert got >= published // 2, f"the listener got {got} of {published} Acks"
        for relay in (sender_relay, listener_relay):
            stats = bus(relay)
            assert stats["connected"] and stats["disconnects"] == 0 and stats["lost"] == 0, stats
        # The frozen relay was cut for being slow, counted it, and came back by itself.
        def was_cut() -> bool:
            stats = frozen_stats()
            return bool(stats["disconnects"] + stats["slow_consumer"] >= 1 and stats["connected"])

        wait_for(was_cut, 20, "the frozen relay to count the cut and reconnect")
        wait_for(lambda: frozen_id in {p["id"] for p in listener_relay.peers}, 15, "the relay to be a peer again")
    finally:
        if frozen.poll() is None:
            os.kill(frozen.pid, signal.SIGCONT)
            frozen.kill()
        frozen.communicate(timeout=10)  # waits, and closes the pipes
