"""``chatudp demo``: a server and three clients chat for a few seconds on loopback, then exit."""

from __future__ import annotations

import argparse
import queue
import time
from typing import Any, Callable, Dict, List, Tuple

from ._args import EXIT_OK, Address, add_program, hostport, open_endpoint, seconds, started
from ._terminal import cleanup, out, stats_line

DEMO_NAMES = ("alice", "bob", "carol")
DEMO_SCRIPT = (
    ("alice", "Hello from alice"),
    ("bob", "hi alice, bob here"),
    ("carol", "hey all, carol too"),
    ("alice", "what's new?"),
    ("bob", "UDP: no connection, no guarantee"),
    ("carol", "你好"),
)

Event = Tuple[str, Any, Any]


class Demo:
    """The demo's server, clients and what they saw, printed step by step in a fixed order."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .. import ChatUdpServer

        self.events: "queue.Queue[Event]" = queue.Queue()
        self.names: Dict[Address, str] = {}
        self.clients: Dict[str, Any] = {}
        self.counts = {name: 0 for name in DEMO_NAMES}
        self.slot = args.seconds / (len(DEMO_SCRIPT) + 2)
        events = self.events
        self.server = open_endpoint(
            "bind",
            args.ip,
            args.port,
            lambda: started(
                ChatUdpServer(
                    args.ip,
                    args.port,
                    10,
                    on_message=lambda data, addr: None,  # the demo shows what the clients receive
                    on_join=lambda addr: events.put(("join", addr, None)),
                    on_leave=lambda addr, reason: events.put(("leave", addr, reason)),
                )
            ),
        )

    def _receiver(self, name: str) -> Callable[[bytes, Address], None]:
        return lambda data, addr: self.events.put(("got", name, data))

    def _gather(self, expected_messages: int, expected_server: int, timeout: float) -> List[Event]:
        got: List[Event] = []
        deadline = time.monotonic() + timeout
        while True:
            messages = sum(1 for kind, _, _ in got if kind == "got")
            if messages >= expected_messages and len(got) - messages >= expected_server:
                return got
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return got
            try:
                got.append(self.events.get(timeout=min(remaining, 0.2)))
            except queue.Empty:
                continue

    def collect(self, expected_messages: int, expected_server: int = 0, timeout: float = 2.0) -> None:
        """Waits for one step's events, then prints them in a fixed order: server first, then
        the clients by name, so the output does not depend on thread timing."""
        got = self._gather(expected_messages, expected_server, timeout)
        for kind, who, detail in got:
            if kind == "join":
                out(f"  server: {self.names.get(who, who)} joined from {hostport(*who[:2])}")
            elif kind == "leave":
                out(f"  server: {self.names.get(who, who)} left ({detail})")
        received = [(who, detail) for kind, who, detail in got if kind == "got"]
        for name in DEMO_NAMES:
            for who, data in received:
                if who == name:
                    out(f"  {name} got: {data.decode('utf-8', 'replace')}")
                    self.counts[name] += 1
        missing = expected_messages - len(received)
        if missing > 0:
            out(f"  ({missing} datagram(s) not seen within {timeout:g} s: UDP may lose them)")

    def join(self) -> None:
        from .. import ChatUdpClient

        host, port = self.server.addr[0], self.server.addr[1]
        out(f"chatudp demo: ChatUdpServer on {hostport(host, port)}, clients {', '.join(DEMO_NAMES)}")
        for name in DEMO_NAMES:
            client = ChatUdpClient(host, port, 1, on_message=self._receiver(name))
            self.clients[name] = client
            client.start()
            self.names[tuple(client.addr or ())] = name
        # A first heartbeat registers every client at once, as the heartbeat loop would.
        out("each client sends a heartbeat (^hb^) to join")
        for name in DEMO_NAMES:
            self.clients[name].send("^hb^")
        self.collect(0, expected_server=len(DEMO_NAMES))

    def say(self, name: str, text: str, expected: int, expected_server: int = 0) -> None:
        begun = time.monotonic()
        client = self.clients[name]
        client.send(text)
        if text == "quit":
            client.stop()  # the tutorial's client stops right after sending quit
            out(f"{name} says: quit, and stops")
        else:
            out(f"{name} says: {text}")
        self.collect(expected, expected_server)
        rest = self.slot - (time.monotonic() - begun)
        if rest > 0:
            time.sleep(rest)

    def chat(self) -> None:
        members = len(DEMO_NAMES)
        for name, text in DEMO_SCRIPT:
            self.say(name, text, members)
        self.say("carol", "quit", 0, expected_server=1)
        members -= 1
        self.say("alice", "bye, bob", members)
        out(f"server stops: Bye! to {members} clients")
        self.server.stop()
        self.collect(members)
        for client in self.clients.values():
            client.stop()
        counts = ", ".join(f"{name} got {self.counts[name]}" for name in DEMO_NAMES)
        out(f"summary: server {stats_line(self.server.stats)}; {counts}")

    def close(self) -> None:
        cleanup(*(client.stop for client in self.clients.values()), self.server.stop)


def cmd_demo(args: argparse.Namespace) -> int:
    demo = Demo(args)
    try:
        demo.join()
        demo.chat()
    finally:
        demo.close()
    return EXIT_OK


def register(sub: Any) -> None:
    parser = add_program(
        sub,
        "demo",
        "a server and three clients chat for a few seconds on loopback, then exit",
        "Shows the Acks each client receives and the server's counters.",
        cmd_demo,
        "127.0.0.1",
        0,
        "server",
    )
    parser.add_argument("--seconds", type=seconds, default=3.0, help="how long the chat lasts (default 3)")
