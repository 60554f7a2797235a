"""Group chat with callbacks: one ChatUdpServer, three ChatUdpClients, on 127.0.0.1.

The tutorial's centre piece (ChatUdpServer / ChatUdpClient with heartbeats). Every chat message
is answered to every live client as ``Ack b'TEXT'. from ip:port``. Here the server reports joins
and leaves through callbacks and each client prints what it receives. Runs about a second.

    python examples/group_chat.py
"""

from __future__ import annotations

import queue
import sys
from typing import Callable, Dict, List, Tuple

from chatudp import ChatUdpClient, ChatUdpServer

Address = Tuple[object, ...]


def main() -> int:
    # Everything the callbacks see goes through one queue; the main thread prints it, in order.
    events: "queue.Queue[str]" = queue.Queue()
    names: Dict[Address, str] = {}

    def on_message(data: bytes, addr: Address) -> None:
        events.put(f"server: {names.get(addr, addr)} says {data!r}")

    def on_join(addr: Address) -> None:
        events.put(f"server: {names.get(addr, addr)} joined")

    def on_leave(addr: Address, reason: str) -> None:
        events.put(f"server: {names.get(addr, addr)} left ({reason})")

    def receiver(name: str) -> Callable[[bytes, Address], None]:
        def on_client_message(data: bytes, addr: Address) -> None:
            events.put(f"{name} got: {data.decode('utf-8', 'replace')}")

        return on_client_message

    def drain(count: int, timeout: float = 2.0) -> List[str]:
        """Wait for `count` events (at most `timeout` s each: UDP may lose a datagram)."""
        got: List[str] = []
        for _ in range(count):
            try:
                got.append(events.get(timeout=timeout))
            except queue.Empty:
                break
        for line in sorted(got):  # threads deliver in any order: print in a stable one
            print("  " + line)
        return got

    # port=0: the system picks a free port; server.addr tells which, after start().
    server = ChatUdpServer("127.0.0.1", 0, interval=5, on_message=on_message, on_join=on_join, on_leave=on_leave)
    with server:
        host, port = server.addr[0], server.addr[1]
        print(f"server on {host}:{port}")
        clients: Dict[str, ChatUdpClient] = {}
        for name in ("alice", "bob", "carol"):
            client = ChatUdpClient(host, port, interval=5, on_message=receiver(name))
            client.start()
            assert client.addr is not None
            names[client.addr] = name
            clients[name] = client

        print("each client sends a heartbeat to join")
        for client in clients.values():
            client.send("^hb^")
        drain(3)

        print("alice says: hello everyone")
        clients["alice"].send("hello everyone")
        # the server's on_message, and one Ack for each of the three clients
        if len(drain(4)) != 4:
            print("some datagrams were lost", file=sys.stderr)
            return 1

        print("bob says: quit, and stops")
        clients["bob"].send("quit")
        clients["bob"].stop()
        drain(1)

        print("carol says: bye")
        clients["carol"].send("bye")
        drain(3)  # on_message, and the Acks of alice and carol: bob has left

        for client in clients.values():
            client.stop()
        print(f"server stats: received={server.stats['received']} sent={server.stats['sent']}")
    # leaving the with block stopped the server (it sent Bye! to the clients still in its table)
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
