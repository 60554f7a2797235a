"""An adversary on the path, for the security tests (stdlib only, 127.0.0.1 only).

:class:`CapturingProxy` is :class:`faultproxy.FaultProxy` (one upstream socket per client, so
the server sees one source per client) that also records every datagram it forwards, in both
directions, and can inject datagrams of its own on either side: as the attacker who sits on
the path and can read, keep and send again whatever goes by, but does not hold the secret.

:func:`replay_from_new_ports` plays captured datagrams again from fresh sockets (new source
ports), and :func:`flood_with_quits` sends chat messages with a ``quit`` before each, the
pattern that used to reset a source's token bucket.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from faultproxy import DOWN, LOOPBACK, UP, Address, FaultProxy


@dataclass(frozen=True)
class Captured:
    direction: str  # "up" (client -> server) or "down" (server -> client)
    data: bytes
    client: Address  # the client's own address (not the proxy's upstream socket)


class CapturingProxy(FaultProxy):
    """A :class:`FaultProxy` that keeps a copy of every datagram it is given (at most
    ``max_captured``; later ones are forwarded but not kept)."""

    def __init__(self, upstream: Address, *, max_captured: int = 10_000, **faults: object) -> None:
        self.captured: List[Captured] = []
        self.max_captured = max_captured
        self._capture_lock = threading.Lock()
        super().__init__(upstream, **faults)  # type: ignore[arg-type]

    def _route(self, direction: str, out: socket.socket, data: bytes, to: Address) -> None:
        client = to if direction == DOWN else self._client_of_socket(out)
        if client is not None:
            with self._capture_lock:
                if len(self.captured) < self.max_captured:
                    self.captured.append(Captured(direction, data, client))
        super()._route(direction, out, data, to)

    def _client_of_socket(self, sock: socket.socket) -> Optional[Address]:
        with self._lock:
            return self._client_of.get(sock.fileno())

    def taken(self, direction: str, startswith: bytes = b"") -> List[bytes]:
        """Every captured datagram of one direction whose payload starts with ``startswith``."""
        with self._capture_lock:
            return [c.data for c in self.captured if c.direction == direction and c.data.startswith(startswith)]

    def inject_up(self, data: bytes, client: Address) -> None:
        """Sends ``data`` to the server from the upstream socket of ``client``: the server
        sees it come from that client's address."""
        with self._lock:
            sock = self._by_client[(client[0], int(client[1]))]
        sock.sendto(data, self.upstream)

    def inject_down(self, data: bytes, client: Address) -> None:
        """Sends ``data`` to ``client`` from the address it is connected to (the proxy)."""
        self._front.sendto(data, (client[0], int(client[1])))


class Replayer:
    """Fresh sockets on new ports, each sending one captured datagram, then listening."""

    def __init__(self, count: int) -> None:
        self.sockets = []
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((LOOPBACK, 0))
            sock.settimeout(0.3)
            self.sockets.append(sock)

    @property
    def addrs(self) -> List[Address]:
        return [s.getsockname() for s in self.sockets]

    def send(self, data: bytes, to: Address) -> None:
        for sock in self.sockets:
            sock.sendto(data, to)

    def received(self) -> Dict[Address, List[bytes]]:
        """What each socket got so far (waits up to 0.3 s on each)."""
        got: Dict[Address, List[bytes]] = {}
        for sock in self.sockets:
            box = got.setdefault(sock.getsockname(), [])
            while True:
                try:
                    box.append(sock.recv(65535))
                except (socket.timeout, BlockingIOError):
                    break
        return got

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()

    def __enter__(self) -> "Replayer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def replay_from_new_ports(data: bytes, to: Address, count: int) -> Replayer:
    """Sends ``data`` to ``to`` once from each of ``count`` new sockets; close the result."""
    replayer = Replayer(count)
    replayer.send(data, to)
    return replayer


def flood_with_quits(to: Address, messages: int, *, sock: Optional[socket.socket] = None) -> Tuple[Address, int]:
    """From one socket, sends ``quit`` then a chat message, ``messages`` times; returns the
    socket's address and how many Acks of its own messages came back (counted after a short
    wait, by the prefix ``Ack b'FLOOD``)."""
    own = sock is None
    sock = sock or socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if own:
            sock.bind((LOOPBACK, 0))
        for i in range(messages):
            sock.sendto(b"quit", to)
            sock.sendto(b"flood %d" % i, to)
        sock.settimeout(0.5)
        acks = 0
        while True:
            try:
                if sock.recv(65535).startswith(b"Ack b'FLOOD"):
                    acks += 1
            except socket.timeout:
                break
        return sock.getsockname(), acks
    finally:
        if own:
            sock.close()


__all__ = ["UP", "DOWN", "Captured", "CapturingProxy", "Replayer", "replay_from_new_ports", "flood_with_quits"]
