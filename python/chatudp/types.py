"""Types for annotating programs that use chatudp: addresses, callbacks, the reasons a client
leaves or is refused, and the ``stats`` dictionaries. Each is exported from ``chatudp`` too::

    from chatudp import Address, ChatStats, LeaveReason, ChatUdpServer

    def left(addr: Address, reason: LeaveReason) -> None:
        host, port = addr[:2]
        print(f"{host}:{port} left ({reason})")

    server = ChatUdpServer(port=0, on_leave=left)
    stats: ChatStats = server.stats

``Address`` is ``(host, port)``, as the socket module gives an IPv4 address. An IPv6 address is
the socket module's 4-tuple ``(host, port, flowinfo, scope_id)`` at run time: its first two
items are the same, so ``addr[0]``, ``addr[1]`` and ``host, port = addr[:2]`` hold for both
families (a plain ``host, port = addr`` only for IPv4).
"""

from __future__ import annotations

from typing import Callable, Dict, Literal, Optional, Tuple, TypedDict, Union

__all__ = [
    "Address",
    "BusStats",
    "ChatStats",
    "CollectorStats",
    "JoinCallback",
    "LeaveCallback",
    "LeaveReason",
    "MessageCallback",
    "PeerInfo",
    "PeerStats",
    "RejectCallback",
    "RejectReason",
    "RequestCallback",
    "ServiceStats",
    "SourceCounts",
]

Address = Tuple[str, int]
"""``(host, port)``; see the module's docstring for IPv6."""

# Spelled as a Union of one-value Literals, which is what a type checker makes of
# Literal["quit", "expired", ...], so that the run-time object is that Union too.
LeaveReason = Union[Literal["quit"], Literal["expired"], Literal["unreachable"], Literal["removed"]]
"""Why a client left the server's table: it sent ``quit``; it was silent past ``interval`` (and
``expiry_grace``); its port was reported unreachable; the program removed it
(``del server.clients[addr]``, ``server.clients.clear()``)."""

RejectReason = Union[Literal["table_full"], Literal["not_allowed"]]
"""Why a datagram was refused: a new source while ``max_clients`` live clients are in the table;
a source outside ``allow``."""

MessageCallback = Callable[[bytes, Address], object]
"""``on_message(data, addr)``."""

JoinCallback = Callable[[Address], object]
"""``on_join(addr)``."""

LeaveCallback = Callable[[Address, LeaveReason], object]
"""``on_leave(addr, reason)``."""

RejectCallback = Callable[[Address, RejectReason], object]
"""``on_reject(addr, reason)``."""

RequestCallback = Callable[[bytes, Address], object]
"""``on_request(data, addr)`` of the echo and time servers."""


class BusStats(TypedDict):
    """``stats['bus']`` of a server started with ``bus=``."""

    backend: Literal["nats", "redis"]
    id: str
    connected: bool
    published: int
    received: int
    lost: int
    duplicates: int
    foreign: int
    malformed: int
    reconnects: int
    disconnects: int
    slow_consumer: int
    dropped: Dict[str, int]


class PeerInfo(TypedDict):
    """One entry of ``server.peers``: another relay of the room."""

    id: str
    clients: int
    last_seen: float


class _ChatCounters(TypedDict):
    received: int
    relayed: int
    sent: int
    truncated: int
    expired: int
    unreachable: int
    joins: int
    leaves: int
    heartbeats: int
    dropped: Dict[str, int]
    auth_refused: Dict[str, int]
    send_errors: Dict[int, int]


class ChatStats(_ChatCounters, total=False):
    """``ChatUdpServer.stats`` and ``ChatUdpClient.stats``; ``bus`` only with ``bus=``."""

    bus: BusStats


class ServiceStats(TypedDict):
    """``EchoServer.stats`` and ``TimeServer.stats``."""

    received: int
    answered: int
    bad_requests: int
    sent: int
    truncated: int
    kernel_drops: Optional[int]
    dropped: Dict[str, int]
    send_errors: Dict[int, int]


class PeerStats(TypedDict):
    """``QQPeer.stats``, ``EchoClient.stats`` and ``TimeClient.stats``."""

    received: int
    sent: int
    retries: int
    truncated: int
    ignored: int
    send_errors: int
    challenges: int
    refused: int


class CollectorStats(TypedDict):
    """``Collector.stats``."""

    received: int
    batches: int
    truncated: int
    kernel_drops: Optional[int]
    dropped: int
    parse_errors: int
    short: int
    evicted_sources: int


class SourceCounts(TypedDict):
    """One value of ``Collector.sources()``."""

    received: int
    lost: int
    reordered: int
    duplicates: int
