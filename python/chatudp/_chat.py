"""ChatUdpServer and ChatUdpClient: the tutorial's classes on chatudp's Rust core.

The socket loops run in Rust threads that never take the GIL. What reaches Python (callbacks and
the tutorial's log lines) goes through one dispatcher thread per object, which takes events from
the core in batches, so a slow callback never slows the relay. Only the events somebody consumes
reach it: messages kept for ``recv_message()``, iteration and ``arecv()`` wait in the core's
backlog, read from Rust when Python asks.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import threading
from typing import Any, AsyncIterator, Callable, ClassVar, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

from . import _core
from ._base import (
    _ROUTE_REFRESH,
    Event,
    Network,
    SocketThreadObject,
    as_bytes,
    check_callback,
    check_timeout,
    resolve_future,
)
from ._dropin import ClientsView, SocketView
from .errors import ClosedError
from .types import Address, ChatStats, JoinCallback, LeaveCallback, MessageCallback, RejectCallback

__all__ = ["ChatUdpServer", "ChatUdpClient"]

Message = Tuple[bytes, Address]

_DEFAULT_QUEUE_SIZE: int = _core.DEFAULT_QUEUE_SIZE
_DEFAULT_BACKLOG: int = _core.DEFAULT_BACKLOG
DEFAULT_MAX_CLIENTS: int = _core.DEFAULT_MAX_CLIENTS

logger = logging.getLogger("chatudp")


class _Endpoint(SocketThreadObject):
    """What the server and the client share: the checks of the tutorial's arguments, logging of
    messages, and the pull and asyncio consumers."""

    # The tutorial's server logs the sender's address after each message; its client does not.
    _logs_address: ClassVar[bool] = False
    _route_refresh = _ROUTE_REFRESH

    def __init__(self, config: Any, interval: float, bufsize: int) -> None:
        super().__init__()
        # Every setting, checked once (in the core) when this object is made; used at start().
        self._config = config
        self.interval = interval
        self.bufsize = bufsize
        # Messages kept (in the core) for recv_message(), iteration and arecv() when no
        # on_message is set.
        self._backlog: int = config.backlog
        self._on_message: Optional[MessageCallback] = None
        self._route: Dict[str, Any] = {}
        self._async_lock = threading.Lock()
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []

    @property
    def on_message(self) -> Optional[MessageCallback]:
        """Called for each message on the dispatcher thread; may be changed at any time."""
        return self._on_message

    @on_message.setter
    def on_message(self, callback: Optional[MessageCallback]) -> None:
        check_callback("on_message", callback)
        self._on_message = callback
        self._refresh_route()

    @property
    def stats(self) -> ChatStats:
        """Counters: received, relayed, sent, truncated, expired, unreachable, joins, leaves,
        heartbeats, dropped by reason, and send errors by errno; ``{}`` before ``start()``."""
        stats: ChatStats = self._core_stats()
        if stats:
            stats["dropped"]["backlog_full"] = self._core.backlog_dropped()
        return stats

    @property
    def sock(self) -> SocketView:
        """A socket-like view of the object's socket, for scripts that call
        ``obj.sock.getsockname()`` or ``obj.sock.sendto(data, addr)``: see ``SocketView``."""
        return SocketView(self)

    def _sock_sendto(self, data: bytes, addr: Address) -> None:
        raise NotImplementedError

    # -- what the core hands to the dispatcher -----------------------------------------------------

    def _wanted(self) -> Dict[str, Any]:
        """The core's route: messages for the dispatcher only for a callback or the tutorial's
        INFO log lines; kept for the pull consumers only when there is no callback."""
        return {
            "messages": self.on_message is not None or logger.isEnabledFor(logging.INFO),
            "backlog": self._backlog if self.on_message is None else 0,
        }

    def _refresh_route(self) -> None:
        core = self._core
        route = self._wanted()
        if core is not None and route != self._route and not self._stopping:
            core.set_route(**self._full_route(route))
        self._route = route

    def _full_route(self, route: Dict[str, Any]) -> Dict[str, Any]:
        return route

    def _open_route(self) -> Dict[str, Any]:
        """The route given to the core's constructor, so no event precedes it."""
        self._route = self._wanted()
        return self._route

    def _require_core(self) -> Any:
        core = self._core
        if core is None:
            raise RuntimeError(f"this {self._kind} is not started; call start() first")
        return core

    def _pull_core(self) -> Any:
        core = self._core
        if core is None:
            if self._stopping:
                raise ClosedError(f"this {self._kind} is stopped and every message was read")
            raise RuntimeError(f"this {self._kind} is not started; call start() first")
        return core

    def _on_stopped(self) -> None:
        self._wake_async()

    def _deliver_batch(self, batch: List[Event]) -> int:
        handled = 0
        for kind, addr, detail in batch:
            if self._stopping:
                break
            if kind == "kept":
                self._wake_async()
            else:
                self._deliver(kind, addr, detail)
            handled += 1
        return handled

    def _log_message(self, data: bytes, addr: Address) -> None:
        if self.on_message is not None:
            self._call(self.on_message, data, addr)
        elif logger.isEnabledFor(logging.INFO):
            # The tutorial logs the data, then (the server) the address, at INFO.
            logger.info("%s", data, extra={"chatudp_addr": addr})
            if self._logs_address:
                logger.info("%s", addr, extra={"chatudp_addr": addr})

    # -- pull and asyncio consumers ------------------------------------------------------------

    def _wake_async(self) -> None:
        with self._async_lock:
            waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(resolve_future, future)
            except RuntimeError:  # that loop is closed; nobody is waiting there any more
                pass

    def recv_message(self, timeout: Optional[float] = None) -> Message:
        """Wait for the next message: ``(data, (ip, port))``. Raises ``TimeoutError`` after
        ``timeout`` seconds (``None`` or ``inf``: no limit; NaN or negative: ``ValueError``),
        ``ClosedError`` once stopped and every message was read. Messages are kept only when no
        ``on_message`` callback is set (at most ``backlog``, oldest dropped first). The wait
        runs with the GIL released; Ctrl-C and signal handlers (which may call ``stop()``) run."""
        limit = check_timeout(timeout)
        got: Optional[Message] = self._pull_core().pull(limit)
        if got is None:
            raise TimeoutError(f"no message within {timeout} s")
        return got

    def __iter__(self) -> Iterator[Message]:
        """``for data, addr in obj:`` — ends when the object is stopped."""
        while True:
            try:
                yield self.recv_message()
            except ClosedError:
                return

    async def arecv(self, timeout: Optional[float] = None) -> Message:
        """``await obj.arecv()``: the next message, delivered to the running event loop without
        polling. Same errors as ``recv_message``."""
        limit = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            core = self._pull_core()
            got: Optional[Message] = core.pull(0)
            if got is not None:
                return got
            future: "asyncio.Future[None]" = loop.create_future()
            with self._async_lock:
                self._async_waiters.append((loop, future))
            try:
                if not core.arm_async():
                    continue  # a message came meanwhile, or the object stopped
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(f"no message within {timeout} s")
                await asyncio.wait_for(future, remaining)
            except asyncio.TimeoutError:
                raise TimeoutError(f"no message within {timeout} s") from None
            finally:
                with self._async_lock:
                    if (loop, future) in self._async_waiters:
                        self._async_waiters.remove((loop, future))

    def __aiter__(self) -> AsyncIterator[Message]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Message]:
        while True:
            try:
                yield await self.arecv()
            except ClosedError:
                return


class ChatUdpServer(_Endpoint):
    """The tutorial's group-chat server, with its loops in a Rust thread.

    Same constructor and attributes as the original (``addr``, ``clients``, ``interval``,
    ``event``, ``sock``); everything else is keyword-only and defaults to the original's
    behaviour. ``clients`` is the live table (``del server.clients[addr]`` removes a client),
    ``event.set()`` stops the server, and ``sendto(data, addr)`` and ``broadcast(data)`` send
    from the server's socket (a bot).
    Bad arguments raise ``ValueError`` or ``TypeError`` here, naming the parameter (a port
    outside 0-65535: :class:`chatudp.PortError`, also an ``OverflowError``).

    Parameters
    ----------
    ip : str
        Address to bind (``'0.0.0.0'``, ``'::'`` for every address); resolved at ``start()``.
    port : int
        Port to bind; 0 picks a free one (see ``addr`` after ``start()``).
    interval : float
        Seconds a client may stay silent before it leaves the table (``"expired"``).
    bufsize : int
        Bytes read per datagram (1-65507); longer datagrams are cut and counted in
        ``stats['truncated']``, as ``recvfrom(1024)`` cuts them.
    on_message : callable, optional
        ``on_message(data, addr)`` for each chat message, on the dispatcher thread. Without it
        messages are logged at INFO (logger ``chatudp``) and kept for ``recv_message()``.
    on_join : callable, optional
        ``on_join(addr)`` when a source enters the clients table.
    on_leave : callable, optional
        ``on_leave(addr, reason)`` when a source leaves; ``reason`` is ``"quit"``,
        ``"expired"``, ``"unreachable"`` or ``"removed"`` (``del server.clients[addr]``).
    on_reject : callable, optional
        ``on_reject(addr, reason)`` when a datagram is refused; ``reason`` is ``"table_full"``
        or ``"not_allowed"``.
    expiry_grace : float, optional
        Extra seconds the expiry timer waits beyond ``interval`` (default ``interval / 2``).
    drop_unreachable : bool
        A client whose port is reported closed (ICMP) leaves at once; ``False`` keeps sending
        to it until it expires, as the original.
    max_clients : int
        Bound of the clients table; new sources beyond it are refused (``"table_full"``).
    rate : (float, float), optional
        ``(messages_per_second, burst)`` per source; chat messages over it are dropped and
        counted in ``stats['dropped']['rate']``.
    allow : str or iterable, optional
        Networks allowed to talk (``"10.0.0.0/8"``, ``ipaddress`` objects, or a list).
    validate : bool
        Reflection guard: a new source must echo a cookie before it joins.
    secret : bytes, optional
        Shared secret (16+ bytes) of the authenticated mode (``docs/SECURITY.md``).
    queue_size : int
        Events that may wait for the callbacks; beyond it they are dropped and counted.
    backlog : int
        Messages kept for ``recv_message()``, iteration and ``arecv()`` without
        ``on_message``; the oldest are dropped (``stats['dropped']['backlog_full']``).
    rcvbuf, sndbuf : int, optional
        Kernel socket buffers in bytes (default 4 MiB, capped by the kernel).
    workers : int
        Socket threads, each with its own ``SO_REUSEPORT`` socket on the port (1-256).
    bus : str or list of str, optional
        Broker URL (``nats://``, ``redis://``) or the URLs of one NATS cluster: relays of the
        same ``room`` on it form one chat (``docs/FEDERATION.md``).
    room : str
        The chat's name on the bus.

    Attributes
    ----------
    addr : tuple
        The address bound (after ``start()``, port 0 resolved).
    clients : ClientsView
        ``{(ip, port): last_seen}``, ``time.time()`` floats: this relay's table, live; deleting
        an entry (or ``clear()``) removes the client from the relay.
    stats : dict
        ``received``, ``relayed``, ``sent``, ``truncated``, ``expired``, ``unreachable``,
        ``joins``, ``leaves``, ``heartbeats``, ``dropped`` (by reason: ``rate``,
        ``table_full``, ``not_allowed``, ``auth``, ``callback_queue_full``, ``send_error``,
        ``unvalidated``, ``backlog_full``), ``send_errors`` (by errno), ``auth_refused`` (by
        reason), and ``bus`` with a bus.
    event : threading.Event
        Set by ``stop()``; ``event.set()`` stops the server.
    sock : SocketView
        The socket's safe subset: ``getsockname()``, ``family``, ``type``, ``sendto()``.
    """

    _kind = "ChatUdpServer"
    _logs_address = True
    _log = logging.getLogger("chatudp.server")

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 9999,
        interval: float = 10,
        *,
        bufsize: int = 1024,
        on_message: Optional[MessageCallback] = None,
        on_join: Optional[JoinCallback] = None,
        on_leave: Optional[LeaveCallback] = None,
        on_reject: Optional[RejectCallback] = None,
        expiry_grace: Optional[float] = None,
        drop_unreachable: bool = True,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        rate: Optional[Tuple[float, float]] = None,
        allow: Union[None, Network, Iterable[Network]] = None,
        validate: bool = False,
        secret: Optional[bytes] = None,
        queue_size: int = _DEFAULT_QUEUE_SIZE,
        backlog: int = _DEFAULT_BACKLOG,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
        workers: int = 1,
        bus: Union[None, str, Sequence[str]] = None,
        room: str = "chatudp",
    ) -> None:
        """Check every argument (parameters: see the class); ``start()`` binds and serves."""
        callbacks = (("on_message", on_message), ("on_join", on_join), ("on_leave", on_leave), ("on_reject", on_reject))
        for name, callback in callbacks:
            check_callback(name, callback)
        config = _core.ServerConfig(
            ip,
            port,
            interval,
            bufsize=bufsize,
            expiry_grace=expiry_grace,
            queue_size=queue_size,
            backlog=backlog,
            rcvbuf=rcvbuf,
            sndbuf=sndbuf,
            drop_unreachable=bool(drop_unreachable),
            max_clients=max_clients,
            rate=rate,
            allow=allow,
            validate=bool(validate),
            secret=secret,
            workers=workers,
            bus=bus,
            room=room,
        )
        super().__init__(config, interval, bufsize)
        self.addr: Address = (ip, port)
        self._peer_callbacks: Dict[str, Optional[Callable[..., object]]] = {
            "join": on_join,
            "leave": on_leave,
            "reject": on_reject,
        }
        self.on_message = on_message

    def _open(self) -> Any:
        return _core.Server(self._config, **self._full_route(self._open_route()))

    def _peer_callback(self, kind: str, callback: Optional[Callable[..., object]]) -> None:
        check_callback(f"on_{kind}", callback)
        self._peer_callbacks[kind] = callback
        self._refresh_route()

    @property
    def on_join(self) -> Optional[JoinCallback]:
        """``on_join(addr)``; may be changed at any time."""
        return self._peer_callbacks["join"]

    @on_join.setter
    def on_join(self, callback: Optional[JoinCallback]) -> None:
        self._peer_callback("join", callback)

    @property
    def on_leave(self) -> Optional[LeaveCallback]:
        """``on_leave(addr, reason)``; may be changed at any time."""
        return self._peer_callbacks["leave"]

    @on_leave.setter
    def on_leave(self, callback: Optional[LeaveCallback]) -> None:
        self._peer_callback("leave", callback)

    @property
    def on_reject(self) -> Optional[RejectCallback]:
        """``on_reject(addr, reason)``; may be changed at any time."""
        return self._peer_callbacks["reject"]

    @on_reject.setter
    def on_reject(self, callback: Optional[RejectCallback]) -> None:
        self._peer_callback("reject", callback)

    def _wanted(self) -> Dict[str, Any]:
        # Joins, leaves and refusals reach Python for their callback, or for a DEBUG record.
        debug = self._log.isEnabledFor(logging.DEBUG)
        route = super()._wanted()
        for kind, callback in self._peer_callbacks.items():
            route[kind + "s"] = callback is not None or debug
        return route

    @property
    def clients(self) -> ClientsView:
        """The clients table, live: ``{(ip, port): last_seen}`` (``time.time()`` floats).
        ``del server.clients[addr]`` and ``server.clients.clear()`` remove clients (reported to
        ``on_leave`` as ``"removed"``); ``server.clients.copy()`` is a snapshot dict. Empty
        before ``start()``."""
        return ClientsView(lambda: self._core)

    def sendto(self, data: Union[bytes, bytearray, memoryview], addr: Address) -> None:
        """Send ``data`` to ``addr`` from the server's socket (so it comes from the server's
        address, sealed with ``secret=``), counted in ``stats['sent']``. The socket thread sends
        it: this never blocks (``BlockingIOError`` when it has too much queued already).
        ``RuntimeError`` before ``start()``, ``ClosedError`` after ``stop()``, ``OSError``
        (EMSGSIZE) beyond one datagram."""
        self._require_core().send_to(as_bytes("data", data), addr)

    def broadcast(self, data: Union[bytes, bytearray, memoryview]) -> None:
        """Send ``data`` to every live client (heard from within ``interval``), as the relay
        sends an Ack; the rules of ``sendto``. Clients a chatudp client or the tutorial's one
        see it as any datagram from the server (``on_message``, the INFO log line)."""
        self._require_core().broadcast(as_bytes("data", data))

    def _sock_sendto(self, data: bytes, addr: Address) -> None:
        self.sendto(data, addr)

    @property
    def peers(self) -> List[Dict[str, Any]]:
        """The other relays of the room (``bus=``) alive now: ``{"id", "clients", "last_seen"}``
        dicts; ``[]`` without a bus or before ``start()``."""
        core = self._core
        if core is None:
            return []
        peers: List[Dict[str, Any]] = core.peers()
        return peers

    def _deliver(self, kind: str, addr: Address, detail: Any) -> None:
        if kind == "message":
            self._log_message(detail, addr)
            return
        # Joins, leaves and refusals: the callback if any, and a DEBUG record either way.
        callback = self._peer_callbacks.get(kind)
        if self._log.isEnabledFor(logging.DEBUG):
            self._log.debug(
                "%s %s%s",
                kind,
                addr,
                "" if detail is None else f" ({detail})",
                extra={"chatudp_event": kind, "chatudp_addr": addr, "chatudp_reason": detail},
            )
        if callback is not None:
            if kind == "join":
                self._call(callback, addr)
            else:
                self._call(callback, addr, detail)

    def __repr__(self) -> str:
        try:
            clients = len(self.clients)
        except Exception:
            clients = -1
        return f"ChatUdpServer(addr={self.addr!r}, interval={self.interval!r}, clients={clients}, running={self.running})"


class ChatUdpClient(_Endpoint):
    """The tutorial's chat client: heartbeat every ``interval`` seconds, receive loop in Rust.

    Bad arguments raise ``ValueError`` or ``TypeError`` here, naming the parameter.

    Parameters
    ----------
    rip : str
        The server's address; resolved at ``start()``.
    rport : int
        The server's port.
    interval : float
        Seconds between heartbeats (``^hb^``); the first goes out ``interval`` seconds after
        ``start()``, as in the original (at once with ``announce``).
    bufsize : int
        Bytes read per datagram (1-65507); longer ones are cut and counted.
    on_message : callable, optional
        ``on_message(data, addr)`` for each datagram received, on the dispatcher thread.
        Without it datagrams are logged at INFO and kept for ``recv_message()``.
    queue_size : int
        Events that may wait for ``on_message``; beyond it they are dropped and counted.
    backlog : int
        Messages kept for the pull consumers without ``on_message``; the oldest are dropped.
    rcvbuf, sndbuf : int, optional
        Kernel socket buffers in bytes (default: the system's).
    secret : bytes, optional
        The server's shared secret (16+ bytes), for its authenticated mode.
    announce : bool
        Send the first heartbeat at once at ``start()``, so the client is in the server's table
        (and hears the others and the server's ``Bye!``) from the start. Default False: the
        first goes out ``interval`` seconds after ``start()``, the tutorial's timing.

    Attributes
    ----------
    raddr : tuple
        The server's address as given; ``addr`` is the client's own, after ``start()``.
    stats : dict
        The keys of ``ChatUdpServer.stats``; a client counts ``received``, ``sent``,
        ``truncated``, ``unreachable``, ``dropped`` by reason, ``send_errors`` by errno and
        ``auth_refused``.
    event : threading.Event
        Set by ``stop()``.
    """

    _kind = "ChatUdpClient"
    _log = logging.getLogger("chatudp.client")

    def __init__(
        self,
        rip: str = "127.0.0.1",
        rport: int = 9999,
        interval: float = 10,
        *,
        bufsize: int = 1024,
        on_message: Optional[MessageCallback] = None,
        queue_size: int = _DEFAULT_QUEUE_SIZE,
        backlog: int = _DEFAULT_BACKLOG,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
        secret: Optional[bytes] = None,
        announce: bool = False,
    ) -> None:
        """Check every argument (parameters: see the class); ``start()`` connects and heartbeats."""
        check_callback("on_message", on_message)
        config = _core.ClientConfig(
            rip,
            rport,
            interval,
            bufsize=bufsize,
            queue_size=queue_size,
            backlog=backlog,
            rcvbuf=rcvbuf,
            sndbuf=sndbuf,
            secret=secret,
            announce=announce,
        )
        super().__init__(config, interval, bufsize)
        self.raddr: Address = (rip, rport)
        self.on_message = on_message
        self.addr: Optional[Address] = None

    def _open(self) -> Any:
        return _core.Client(self._config, **self._open_route())

    def send(self, msg: Union[str, bytes, bytearray, memoryview]) -> None:
        """Send ``msg`` to the server (a ``str`` is encoded as UTF-8, as the original does)."""
        data = msg.encode() if isinstance(msg, str) else as_bytes("msg", msg)
        core = self._require_core()
        if self._stopping:
            raise ClosedError(f"this {self._kind} is stopped; create a new one to talk again")
        core.send(data)

    def _deliver(self, kind: str, addr: Address, detail: Any) -> None:
        self._log_message(detail, addr)

    def _sock_sendto(self, data: bytes, addr: Address) -> None:
        # The client's socket is connected to its server, as the tutorial's: it sends there only.
        core = self._require_core()
        if tuple(addr[:2]) not in (tuple(self.raddr[:2]), tuple(core.remote_addr()[:2])):
            raise OSError(
                errno.EISCONN,
                f"the client's socket is connected to {self.raddr[0]}:{self.raddr[1]} and sends only there, "
                f"not to {addr!r}",
            )
        self.send(data)

    def __repr__(self) -> str:
        return f"ChatUdpClient(raddr={self.raddr!r}, addr={self.addr!r}, interval={self.interval!r}, running={self.running})"

