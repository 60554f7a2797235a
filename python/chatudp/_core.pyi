"""Type stubs of ``chatudp._core``, the Rust extension module (PyO3) under the Python package.

Everything here is private to chatudp: applications use ``chatudp.ChatUdpServer``,
``chatudp.ChatUdpClient`` and ``chatudp.services``, which wrap these classes. Each class starts
its socket thread in its constructor and stops it with ``stop()`` (``close()`` for ``Peer``);
every blocking call waits with the GIL released and wakes at least every 100 ms to let Ctrl-C
(``KeyboardInterrupt``) through.
"""

from typing import Final, Iterable, Literal, final, type_check_only

from typing_extensions import TypeAlias

from chatudp.types import ChatStats as _ChatStats
from chatudp.types import CollectorStats as _CollectorStats
from chatudp.types import LeaveReason as _LeaveReason
from chatudp.types import PeerInfo as _Peer
from chatudp.types import PeerStats as _PeerStats
from chatudp.types import RejectReason as _RejectReason
from chatudp.types import ServiceStats as _ServiceStats
from chatudp.types import SourceCounts as _SourceCounts

__all__ = [
    "BATCH_BUFFER",
    "Batch",
    "Client",
    "Collector",
    "EchoServer",
    "MAX_DATAGRAM",
    "MAX_QUEUE",
    "Peer",
    "PeerConfig",
    "Request",
    "REUSEPORT",
    "Server",
    "TRAILER_LEN",
    "TimeServer",
    "__version__",
    "ClientConfig",
    "DEFAULT_BACKLOG",
    "DEFAULT_BUFSIZE",
    "DEFAULT_CHAT_PORT",
    "DEFAULT_HOST",
    "DEFAULT_INTERVAL",
    "DEFAULT_MAX_CLIENTS",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SERVICE_PORT",
    "ServerConfig",
    "ServiceConfig",
    "_panic_for_test",
]

__version__: Final[str]
"""The version of the Rust crate, which is the version of the package."""

MAX_DATAGRAM: Final[int]
"""The largest UDP payload over IPv4, 65507 bytes: the upper bound of every ``bufsize``."""

MAX_QUEUE: Final[int]
"""The largest ``queue_size`` and ``backlog``, 2**24: the queues grow with what they hold, not
with their bound, and a larger bound could not be honoured."""

def _panic_for_test() -> None:
    """Test seam: a panic inside an entry point, which reaches Python as ``RuntimeError``."""

TRAILER_LEN: Final[int]
"""Bytes the authenticated mode (``secret=``) adds to every datagram: 40."""

_Address: TypeAlias = tuple[str, int]
"""``(host, port)`` for IPv4; ``(host, port, flowinfo, scope_id)`` for IPv6 at run time, as
``socket`` gives them, typed by their first two items (``chatudp.types.Address``)."""

_MessageEvent: TypeAlias = tuple[Literal["message"], _Address, bytes]
_JoinEvent: TypeAlias = tuple[Literal["join"], _Address, None]
_LeaveEvent: TypeAlias = tuple[Literal["leave"], _Address, _LeaveReason]
_RejectEvent: TypeAlias = tuple[Literal["reject"], _Address, _RejectReason]
_KeptEvent: TypeAlias = tuple[Literal["kept"], None, None]
_ChatEvent: TypeAlias = _MessageEvent | _JoinEvent | _LeaveEvent | _RejectEvent | _KeptEvent

DEFAULT_QUEUE_SIZE: Final[int]
DEFAULT_BACKLOG: Final[int]
DEFAULT_MAX_CLIENTS: Final[int]
DEFAULT_BUFSIZE: Final[int]
DEFAULT_HOST: Final[str]
DEFAULT_CHAT_PORT: Final[int]
DEFAULT_INTERVAL: Final[float]
DEFAULT_SERVICE_PORT: Final[int]

_Networks: TypeAlias = "str | Iterable[object]"

@final
class ServerConfig:
    """Every setting of ``chatudp.ChatUdpServer``, checked when it is made: ``ValueError`` (a
    ``PortError`` for the port) or ``TypeError`` naming the parameter. ``Server`` starts from it.
    ``None`` stands for the default (the ``DEFAULT_*`` constants)."""

    def __new__(
        cls,
        ip: str = ...,
        port: int | None = None,
        interval: float | None = None,
        *,
        bufsize: int | None = None,
        expiry_grace: float | None = None,
        drop_unreachable: bool = True,
        max_clients: int | None = None,
        rate: tuple[float, float] | None = None,
        allow: _Networks | None = None,
        validate: bool = False,
        secret: bytes | bytearray | memoryview | None = None,
        queue_size: int | None = None,
        backlog: int | None = None,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
        workers: int | None = None,
        bus: str | Iterable[str] | None = None,
        room: str = ...,
    ) -> ServerConfig: ...
    @property
    def backlog(self) -> int:
        """Messages kept for the pull consumers."""

@final
class ClientConfig:
    """Every setting of ``chatudp.ChatUdpClient``, checked when it is made (see ``ServerConfig``)."""

    def __new__(
        cls,
        rip: str = ...,
        rport: int | None = None,
        interval: float | None = None,
        *,
        bufsize: int | None = None,
        queue_size: int | None = None,
        backlog: int | None = None,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
        secret: bytes | bytearray | memoryview | None = None,
        announce: bool = False,
    ) -> ClientConfig: ...
    @property
    def backlog(self) -> int:
        """Messages kept for the pull consumers."""

@final
class ServiceConfig:
    """Every setting of ``chatudp.EchoServer`` and ``TimeServer``, checked when it is made."""

    def __new__(
        cls,
        ip: str = ...,
        port: int | None = None,
        *,
        bufsize: int | None = None,
        queue_size: int | None = None,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
        validate: bool = False,
    ) -> ServiceConfig: ...

@final
class PeerConfig:
    """The socket of ``chatudp.EchoClient``/``TimeClient`` (toward ``rip:rport``) or of
    ``QQPeer`` (``PeerConfig.bound(bind)``), checked when it is made."""

    def __new__(
        cls,
        rip: str = ...,
        rport: int | None = None,
        *,
        timeout: float | None = None,
        retries: int | None = None,
        bufsize: int | None = None,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
    ) -> PeerConfig: ...
    @staticmethod
    def bound(
        bind: tuple[str, int] | tuple[str, int, int, int],
        *,
        bufsize: int | None = None,
        rcvbuf: int | None = None,
        sndbuf: int | None = None,
    ) -> PeerConfig: ...

@type_check_only
class _Endpoint:
    """What every socket-thread object of the core shares."""

    def discard_events(self, unprocessed: int = 0) -> int:
        """Empty the event queue and count it, with ``unprocessed`` events already taken, as
        dropped; return how many were dropped in all."""

    def set_route(self, *, messages: bool, joins: bool, leaves: bool, rejects: bool, backlog: int) -> None:
        """Which events ``next_events`` gets, by kind, and how many messages are kept for
        ``pull`` (0: none, else 1..``MAX_QUEUE``). Events nobody asked for are never built."""

    def pull(self, timeout: float | None = None) -> tuple[bytes, _Address] | None:
        """The oldest kept message, waiting at most ``timeout`` seconds (``None`` or ``inf``: no
        limit; NaN or negative: ``ValueError``); ``None`` after the timeout; ``ClosedError``
        once stopped and every kept message was read."""

    def arm_async(self) -> bool:
        """For an asynchronous consumer that found nothing: ``True`` when ``next_events`` will
        hold a ``("kept", None, None)`` event once the next message is kept; ``False`` when a
        message is there already or the object is stopped."""

    def backlog_dropped(self) -> int:
        """Kept messages dropped to make room for newer ones."""

    def is_forked_copy(self) -> bool:
        """True in a child made by ``os.fork()``, where the object is inert."""

    def is_running(self) -> bool:
        """True while the socket thread is alive."""

    def failure(self) -> str | None:
        """Why the socket thread ended on its own (an I/O error or a panic), else ``None``."""


@final
class Server(_Endpoint):
    """A running group-chat server (the Rust half of ``chatudp.ChatUdpServer``).

    The constructor binds the config's address and starts the socket thread; ``OSError`` when
    the port is busy or the address bad (``socket.gaierror`` for a host that does not resolve).
    """

    def __new__(
        cls,
        config: ServerConfig,
        *,
        messages: bool = True,
        joins: bool = True,
        leaves: bool = True,
        rejects: bool = True,
        backlog: int = 0,
    ) -> Server:
        """Bind and start with ``config``; ``messages`` ... ``backlog``: the first route (see
        ``set_route``)."""

    def local_addr(self) -> _Address:
        """The address actually bound (port 0 resolved)."""

    def clients(self) -> dict[_Address, float]:
        """A snapshot of the clients table: ``{address: last_seen}`` (``time.time()`` floats)."""

    def last_seen(self, addr: object) -> float | None:
        """When ``addr`` (a key of ``clients()``) was last heard from; ``None`` when it is not in
        the table."""

    def remove_client(self, addr: object) -> bool:
        """Remove ``addr`` from the table, as its ``quit`` would; its leave is reported with
        the reason ``"removed"``. ``False`` when it was not in the table."""

    def clear_clients(self) -> int:
        """Remove every client (see ``remove_client``); return how many."""

    def send_to(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """Queue ``data`` for ``addr``, a ``(host, port)`` tuple, sent by the socket thread
        (sealed with ``secret=``); never blocks. ``ClosedError`` once stopped, ``OSError``
        (EMSGSIZE) beyond one datagram, ``BlockingIOError`` when too much is queued,
        ``ValueError`` for an address of the other family."""

    def broadcast(self, data: bytes) -> None:
        """Queue ``data`` for every live client (heard from within ``interval``), as an Ack is
        sent; the errors of ``send_to``."""

    def stats(self) -> _ChatStats:
        """The counters, as ``ChatUdpServer.stats`` shows them."""

    def peers(self) -> list[_Peer]:
        """The other relays of the room alive now, by id; ``[]`` without a bus."""

    def next_events(self, max_events: int = 1024, timeout: float | None = None) -> list[_ChatEvent] | None:
        """Up to ``max_events`` queued events; ``[]`` after ``timeout`` seconds (``None``: wait
        until one comes); ``None`` once the server is stopped and the queue is empty."""

    def stop(self) -> None:
        """Send ``Bye!`` to every client in the table, end the socket thread, join it.
        Idempotent."""
@final
class Client(_Endpoint):
    """A running chat client (the Rust half of ``chatudp.ChatUdpClient``): a socket connected to
    ``(host, port)``, a heartbeat every ``interval`` seconds and a receive thread."""

    def __new__(cls, config: ClientConfig, *, messages: bool = True, backlog: int = 0) -> Client:
        """Connect with ``config`` and start the heartbeat and receive threads."""

    def send(self, data: bytes) -> None:
        """Send one datagram to the server; ``ClosedError`` once stopped, ``OSError`` (EMSGSIZE)
        when ``data`` does not fit one datagram."""

    def local_addr(self) -> _Address:
        """The client's own address."""

    def remote_addr(self) -> _Address:
        """The server's address, resolved."""

    def stats(self) -> _ChatStats:
        """The counters, as ``ChatUdpClient.stats`` shows them."""

    def next_events(self, max_events: int = 1024, timeout: float | None = None) -> list[_MessageEvent | _KeptEvent] | None:
        """Up to ``max_events`` received datagrams as ``("message", addr, data)``; ``[]`` after
        ``timeout`` seconds; ``None`` once the client is stopped and the queue is empty."""

    def stop(self) -> None:
        """End the heartbeat and receive threads and close the socket; idempotent."""
@type_check_only
class _ServiceServer(_Endpoint):
    """What the echo and time servers share: the life cycle, events and counters."""

    def next_events(self, max_events: int = 1024, timeout: float | None = None) -> list[_MessageEvent | _KeptEvent] | None:
        """The next requests as ``("message", addr, data)``; ``[]`` after ``timeout``; ``None``
        once stopped and the queue is empty (or when no queue was asked for)."""

    def local_addr(self) -> _Address:
        """The address actually bound."""

    def stats(self) -> _ServiceStats:
        """The counters, as ``chatudp.EchoServer.stats`` and ``TimeServer.stats`` show them."""

    def stop(self) -> None:
        """End the socket thread and close the socket; idempotent."""
@final
class EchoServer(_ServiceServer):
    """A running echo server: answers each datagram with ``data.upper()``."""

    def __new__(cls, config: ServiceConfig, *, events: bool = False) -> EchoServer:
        """Bind and start answering with ``config``; with ``events``, every request is also
        queued for ``next_events``."""

@final
class TimeServer(_ServiceServer):
    """A running time server: answers each datagram with ``time.strftime(fmt)``, ``fmt`` being
    the datagram (``'%Y-%m-%d %X'`` when empty)."""

    def __new__(cls, config: ServiceConfig, *, events: bool = False) -> TimeServer:
        """Bind and start answering with ``config``; the keywords as for ``EchoServer``."""

@final
class Peer:
    """A non-connected UDP socket for request/response clients (the Rust half of
    ``chatudp.services.QQPeer``, ``EchoClient`` and ``TimeClient``)."""

    def __new__(cls, config: PeerConfig) -> Peer:
        """Bind to the config's ``(host, port)`` (``PeerConfig.bound``); port 0 picks a free port."""

    @staticmethod
    def for_remote(config: PeerConfig) -> tuple[Peer, _Address]:
        """A peer on a free port of the family of the config's remote address, and that address
        resolved."""

    def local_addr(self) -> _Address:
        """The address actually bound."""

    def send_to(self, data: bytes, addr: tuple[str, int] | tuple[str, int, int, int]) -> None:
        """Send one datagram to ``addr``, a ``(host, port)`` tuple."""

    def recv_from(self, timeout: float | None = None) -> tuple[bytes, _Address] | None:
        """One datagram from anyone and its sender, or ``None`` after ``timeout`` seconds
        (``None``: no limit); ``ClosedError`` when the peer is closed."""

    def request(self, data: bytes, host: str, port: int, timeout: float, retries: int) -> tuple[bytes, _Address] | None:
        """Send ``data`` to ``(host, port)`` and wait for its reply, resending after each
        ``timeout`` seconds up to ``retries`` more times; ``None`` when no reply came."""

    def start_request(self, data: bytes, host: str, port: int, timeout: float, retries: int) -> Request:
        """Send the first try of a request and return it, to be polled by an event loop; the
        rules of ``request``."""

    def fileno(self) -> int:
        """The socket's descriptor, for an event loop to watch for readability (reading from it
        would take datagrams from the peer); ``ClosedError`` once closed,
        ``NotImplementedError`` where there is none to watch."""

    def close(self) -> None:
        """Close the socket and wake a thread waiting in ``recv_from``; idempotent."""

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""

    def stats(self) -> _PeerStats:
        """Counters: ``received``, ``sent``, ``retries``, ``truncated``, ``ignored``,
        ``send_errors``, ``challenges`` (address-validation challenges answered), ``refused``
        (reports that the remote port is closed; request clients only)."""

@final
class Request:
    """A request in flight on a ``Peer`` (``Peer.start_request``)."""

    def poll(self, timeout: float = 0.0) -> tuple[bytes, _Address] | float | None:
        """Wait at most ``timeout`` seconds (0: just look) with the GIL released: the reply
        ``(data, addr)``; while none came, the seconds until the current try times out (the
        poll after that resends); ``None`` once every try timed out."""

BATCH_BUFFER: Final[bool]
"""True when ``Batch`` objects offer the buffer protocol (``memoryview(batch)``)."""

REUSEPORT: Final[bool]
"""True where ``workers > 1`` can bind several ``SO_REUSEPORT`` sockets on one port."""

_Metric: TypeAlias = (
    tuple[str, float | str, str, float, dict[str, str]]
    | tuple[str, dict[str, str], dict[str, float | int | bool | str], int | None]
)

@final
class Batch:
    """Datagrams received together. ``memoryview(batch)`` is every payload back to back
    (read-only, format ``B``); datagram ``i`` is ``buf[batch.offsets[i]:batch.offsets[i + 1]]``."""

    def __len__(self) -> int:
        """The number of datagrams."""

    def __getitem__(self, index: int, /) -> bytes:
        """The payload of datagram ``index`` (negative counts from the end)."""

    def __buffer__(self, flags: int, /) -> memoryview:
        """The payloads back to back, without a copy."""

    @property
    def offsets(self) -> list[int]:
        """``len(batch) + 1`` offsets into the buffer."""

    @property
    def payloads(self) -> list[bytes]:
        """Each payload as ``bytes``."""

    @property
    def addrs(self) -> list[_Address]:
        """The source of each datagram."""

    @property
    def times(self) -> list[float]:
        """Receive time of each datagram, wall-clock seconds (the kernel's stamp on Linux)."""

    @property
    def metrics(self) -> list[_Metric]:
        """Parsed lines under ``format``: statsd ``(name, value, type, sample_rate, tags)``,
        influx ``(measurement, tags, fields, timestamp)``; ``[]`` without a format."""

    @property
    def nbytes(self) -> int:
        """Bytes in the buffer."""

@final
class Collector:
    """A running collector (the Rust half of ``chatudp.Collector``): ``workers`` socket threads
    on ``(host, port)`` handing batches to one bounded queue."""

    def __new__(
        cls,
        host: str,
        port: int,
        *,
        bufsize: int = 2048,
        batch: int = 1000,
        flush: float = 0.05,
        workers: int = 1,
        seq: tuple[int, int, str] | None = None,
        format: str | None = None,
        rcvbuf: int | None = None,
        queue_size: int = ...,
        max_sources: int = ...,
    ) -> Collector:
        """Bind and start; ``OSError`` for a busy port, ``ValueError`` for a bad argument.
        ``queue_size`` defaults to 1024 batches, ``max_sources`` to 65536."""

    def local_addr(self) -> _Address:
        """The address actually bound (port 0 resolved)."""

    def next_events(self) -> list[Batch] | None:
        """For the dispatcher: the next batches; ``None`` once stopped and drained."""

    def discard_events(self, unprocessed: int = 0) -> int:
        """Drop what is queued and the last ``unprocessed`` batches taken, counting their
        datagrams as dropped; return how many datagrams that was."""

    def recv_batch(self, timeout: float | None = None) -> Batch:
        """The next batch; ``TimeoutError`` after ``timeout``, ``ClosedError`` once stopped and
        drained."""

    def try_recv_batch(self) -> Batch | None:
        """A queued batch or ``None``; ``ClosedError`` once stopped and drained."""

    def wait_ready(self, timeout: float) -> None:
        """Wait until a batch is queued or the collector ends, taking nothing."""

    def stop(self) -> None:
        """End every socket thread (each hands over its last batch) and join them. Idempotent."""

    def is_running(self) -> bool:
        """True while every socket thread is alive."""

    def failure(self) -> str | None:
        """Why a socket thread ended on its own (a panic), else ``None``."""

    def stats(self) -> _CollectorStats:
        """The counters, as ``chatudp.Collector.stats`` shows them."""

    def sources(self) -> dict[_Address, _SourceCounts]:
        """Counts per source, for the sources heard most recently."""
