"""``chatudp demo``: a server and three clients chat for a few seconds on loopback, then exit."""

from __future__ import annotations

import argparse
import queue
import time
from typing import Any, Callable, Dict, List, Tuple

from ._args import EXIT_OK, Address, Fatal, add_bus, add_program, bus_options, hostport, open_endpoint, seconds, shown_url, started
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
DEMO_ROOM = "chatudp-demo"
#: How long the relays of ``--bus`` may take to connect to the broker and see each other.
BUS_TIMEOUT = 10.0


class Demo:
    """The demo's server, clients and what they saw, printed step by step in a fixed order.

    With ``--bus`` there are two relays on one room of the broker: alice talks to relay A, bob
    and carol to relay B, and every client sees every message all the same."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.events: "queue.Queue[Event]" = queue.Queue()
        self.names: Dict[Address, str] = {}
        self.clients: Dict[str, Any] = {}
        self.counts = {name: 0 for name in DEMO_NAMES}
        self.slot = args.seconds / (len(DEMO_SCRIPT) + 2)
        self.bus = bus_options(args, room=DEMO_ROOM)
        self.servers: List[Tuple[str, Any]] = []
        labels = ("relay A", "relay B") if self.bus else ("server",)
        for index, label in enumerate(labels):
            port = args.port if index == 0 else 0
            self.servers.append((label, open_endpoint("bind", args.ip, port, self._server_factory(args.ip, port, label))))
        self.server = self.servers[0][1]

    def _server_factory(self, ip: str, port: int, label: str) -> Callable[[], Any]:
        from .. import ChatUdpServer

        events = self.events
        return lambda: started(
            ChatUdpServer(
                ip,
                port,
                10,
                on_message=lambda data, addr: None,  # the demo shows what the clients receive
                on_join=lambda addr: events.put(("join", addr, label)),
                on_leave=lambda addr, reason: events.put(("leave", addr, (label, reason))),
                **self.bus,
            )
        )

    def meet(self, timeout: float = BUS_TIMEOUT) -> None:
        """With a bus: waits until the relays see each other through the broker."""
        if not self.bus:
            return
        urls = ", ".join(map(shown_url, self.bus["bus"]))
        out(f"relays A and B meet on the bus {urls}, room {self.bus['room']}")
        deadline = time.monotonic() + timeout
        while not all(server.peers for _, server in self.servers):
            if time.monotonic() > deadline:
                raise Fatal(f"the relays did not meet on the bus {urls} within {timeout:g} s: is the broker running?")
            time.sleep(0.05)

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
                out(f"  {detail}: {self.names.get(who, who)} joined from {hostport(*who[:2])}")
            elif kind == "leave":
                out(f"  {detail[0]}: {self.names.get(who, who)} left ({detail[1]})")
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

        if self.bus:
            (_, first), (_, second) = self.servers
            out(
                f"chatudp demo: relay A on {hostport(*first.addr[:2])} (alice), relay B on "
                f"{hostport(*second.addr[:2])} (bob, carol)"
            )
        else:
            out(f"chatudp demo: ChatUdpServer on {hostport(*self.server.addr[:2])}, clients {', '.join(DEMO_NAMES)}")
        self.meet()
        for name in DEMO_NAMES:
            server = self.servers[0 if name == DEMO_NAMES[0] else -1][1]
            host, port = server.addr[0], server.addr[1]
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
        out(f"{'relays stop' if self.bus else 'server stops'}: Bye! to {members} clients")
        for _, server in self.servers:
            server.stop()
        self.collect(members)
        for client in self.clients.values():
            client.stop()
        counts = ", ".join(f"{name} got {self.counts[name]}" for name in DEMO_NAMES)
        servers = "; ".join(f"{label} {stats_line(server.stats)}" for label, server in self.servers)
        out(f"summary: {servers}; {counts}")

    def close(self) -> None:
        cleanup(*(client.stop for client in self.clients.values()), *(server.stop for _, server in self.servers))


def cmd_demo(args: argparse.Namespace) -> int:
    demo = Demo(args)  # binds (and checks --bus) before anything is printed
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
        "Shows the Acks each client receives and the server's counters. With --bus URL, two relays on one "
        "room of that broker: alice on relay A, bob and carol on relay B, and every client gets every message.",
        cmd_demo,
        "127.0.0.1",
        0,
        "server",
    )
    parser.add_argument("--seconds", type=seconds, default=3.0, help="how long the chat lasts (default 3)")
    add_bus(parser, room=False)
