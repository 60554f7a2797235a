"""The tutorial's other UDP programs on chatudp's Rust core: the echo server (``data.upper()``),
the ``strftime`` time server, their clients, and the socket of the "QQ" one-to-one chat.

The servers answer in a Rust thread that never takes the GIL; the clients wait for a reply with a
timeout and a bounded number of resends (the tutorial's clients wait forever when a datagram is
lost). Every wait is cut in short slices, so Ctrl-C works while Python waits on chatudp.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import weakref
from typing import Any, ClassVar, List, Optional, Tuple, TypeVar, Union

from . import _core
from ._base import (
    MAX_DATAGRAM,
    SocketThreadObject,
    as_bytes,
    check_callback,
    check_timeout,
    resolve_future,
)
from .errors import NoReplyError
from .types import Address, PeerStats, RequestCallback, ServiceStats

__all__ = ["EchoServer", "TimeServer", "EchoClient", "TimeClient", "QQPeer"]

BytesLike = Union[bytes, bytearray, memoryview]

_DEFAULT_QUEUE_SIZE: int = _core.DEFAULT_QUEUE_SIZE

_log = logging.getLogger("chatudp.services")

_S = TypeVar("_S", bound="_PeerSocket")

# Without a descriptor to watch (an event loop that has no add_reader), an asynchronous wait
# looks again this often.
_ASYNC_POLL = 0.05


# -- servers ---------------------------------------------------------------------------------


class _Service(SocketThreadObject):
    """Life cycle shared by the echo and time servers: start, stop, context manager, stats."""

    _core_class: ClassVar[Any]
    _log = _log

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 9000,
        *,
        bufsize: int = 1024,
        on_request: Optional[RequestCallback] = None,
        queue_size: int = _DEFAULT_QUEUE_SIZE,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
        validate: bool = False,
    ) -> None:
        """Check every argument (parameters: see the class); ``start()`` binds and answers."""
        super().__init__()
        check_callback("on_request", on_request)
        self._config = _core.ServiceConfig(
            ip, port, bufsize=bufsize, queue_size=queue_size, rcvbuf=rcvbuf, sndbuf=sndbuf, validate=validate
        )
        self.bufsize = bufsize
        self.validate = validate
        self.addr: Address = (ip, port)
        self.on_request = on_request

    def _open(self) -> Any:
        return self._core_class(self._config, events=self.on_request is not None)

    def _wants_events(self) -> bool:
        return self.on_request is not None

    def _deliver(self, kind: str, addr: Address, detail: Any) -> None:
        if self.on_request is not None:
            self._call(self.on_request, detail, addr)

    @property
    def stats(self) -> ServiceStats:
        """Counters: ``received``, ``answered``, ``bad_requests`` (answered with an error),
        ``sent``, ``truncated`` (requests longer than ``bufsize``), ``kernel_drops`` (datagrams
        the kernel dropped for a full receive buffer; Linux, else None), ``dropped`` by reason and
        ``send_errors`` by errno. ``{}`` before ``start()``."""
        stats: ServiceStats = self._core_stats()
        return stats

    def __repr__(self) -> str:
        return f"{self._kind}(addr={self.addr!r}, bufsize={self.bufsize}, running={self.running})"


_SERVICE_PARAMETERS = """

    Parameters
    ----------
    ip : str
        Address to bind; resolved at ``start()``.
    port : int
        Port to bind (the tutorial's 9000); 0 picks a free one.
    bufsize : int
        Bytes read per request (1-65507); a longer datagram is cut and counted in
        ``stats['truncated']``.
    on_request : callable, optional
        ``on_request(data, addr)`` for each request, on a dispatcher thread (the tutorial
        prints them), without slowing the answers.
    queue_size : int
        Requests that may wait for ``on_request``; beyond it they are dropped and counted.
    rcvbuf, sndbuf : int, optional
        Kernel socket buffers in bytes (receive: 4 MiB by default, capped by the kernel).
    validate : bool
        The reflection guard: a source that has not echoed its cookie gets only a 12-byte
        challenge (never more than 3x the bytes it sent, headers included) and no answer, so a
        spoofed source address cannot turn the server against a victim. A validation lasts
        60 s. chatudp's ``EchoClient``/``TimeClient`` answer the challenge by themselves; the
        tutorial's clients cannot, hence off by default. Refused requests are counted in
        ``stats['dropped']['auth']``.

    Attributes
    ----------
    addr : tuple
        The address bound (after ``start()``, port 0 resolved).
    stats : dict
        ``received``, ``answered``, ``bad_requests``, ``sent``, ``truncated``, ``dropped`` by
        reason, ``send_errors`` by errno, ``kernel_drops``.
    event : threading.Event
        Set by ``stop()``.
    """


class EchoServer(_Service):
    """The tutorial's echo server: answers every datagram with ``data.upper()`` (ASCII letters
    only, as ``bytes.upper()``) to its sender. Port 9000 and ``recvfrom(1024)`` as in the seed;
    a longer datagram is cut to ``bufsize`` bytes (and counted in ``stats['truncated']``).

    ``on_request(data, addr)``, when given, is called for each request on a Python thread
    (the seed prints them), without slowing the answers."""

    __doc__ = (__doc__ or "") + _SERVICE_PARAMETERS

    _kind = "EchoServer"
    _core_class = _core.EchoServer


class TimeServer(_Service):
    """The tutorial's time server: answers every datagram with ``time.strftime(fmt)`` of the
    local time, ``fmt`` being the datagram as UTF-8, or ``'%Y-%m-%d %X'`` for an empty datagram;
    byte for byte what CPython answers. A format that is not UTF-8, holds a NUL, or whose answer
    does not fit one datagram gets a short ``error: ...`` answer (``stats['bad_requests']``) and
    the server goes on (the original dies).

    A public time server needs ``validate=True``: a 129-byte format can ask for a 65,122-byte
    answer (505x), which a spoofed source address would aim at a victim."""

    __doc__ = (__doc__ or "") + _SERVICE_PARAMETERS

    _kind = "TimeServer"
    _core_class = _core.TimeServer


# -- clients ---------------------------------------------------------------------------------


class _PeerSocket:
    """What the request clients and the QQ peer share: a socket on the Rust core, its counters,
    ``close()``, and waits for it to be readable that keep an event loop free."""

    _peer: Any

    def __init__(self) -> None:
        self._async_lock = threading.Lock()
        self._async_waiters: List[Tuple[asyncio.AbstractEventLoop, "asyncio.Future[None]"]] = []

    async def _wait_readable(self, timeout: Optional[float]) -> None:
        """Return once a datagram may be there, ``timeout`` seconds have passed, or the socket
        was closed; the event loop runs meanwhile, and a cancellation ends the wait at once.
        The loop watches a duplicate of the descriptor, so a ``close()`` from any thread never
        leaves it watching a number the system hands out again."""
        loop = asyncio.get_running_loop()
        future: "asyncio.Future[None]" = loop.create_future()
        try:
            fd = os.dup(self._peer.fileno())
        except NotImplementedError:
            fd = -1
        try:
            if fd >= 0:
                try:
                    loop.add_reader(fd, resolve_future, future)
                except NotImplementedError:  # an event loop without readiness callbacks
                    os.close(fd)
                    fd = -1
            with self._async_lock:
                self._async_waiters.append((loop, future))
            if self.closed:
                return
            wait = timeout if fd >= 0 else _ASYNC_POLL if timeout is None else min(timeout, _ASYNC_POLL)
            await asyncio.wait((future,), timeout=wait)
        finally:
            with self._async_lock:
                if (loop, future) in self._async_waiters:
                    self._async_waiters.remove((loop, future))
            if fd >= 0:
                loop.remove_reader(fd)
                os.close(fd)

    def close(self) -> None:
        """Close the socket (the port is free again); idempotent. A ``recvfrom`` or ``request``
        waiting in another thread, and an awaiting ``arecvfrom`` or ``arequest``, end with
        :class:`chatudp.ClosedError`."""
        self._peer.close()
        with self._async_lock:
            waiters, self._async_waiters = self._async_waiters, []
        for loop, future in waiters:
            try:
                loop.call_soon_threadsafe(resolve_future, future)
            except RuntimeError:  # that loop is closed; nobody waits there any more
                pass

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return bool(self._peer.closed)

    @property
    def stats(self) -> PeerStats:
        """Counters: ``received``, ``sent``, ``retries``, ``truncated``, ``ignored`` (datagrams
        from other addresses and late replies), ``send_errors``, ``challenges`` (cookie
        challenges of a ``validate=True`` server, answered by themselves), ``refused`` (the
        network reported the destination's port closed)."""
        stats: PeerStats = self._peer.stats()
        return stats

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _RequestClient(_PeerSocket):
    """A socket on a free port that sends a request and waits for its reply."""

    _kind: ClassVar[str]

    def __init__(
        self,
        rip: str = "127.0.0.1",
        rport: int = 9000,
        *,
        timeout: float = 2.0,
        retries: int = 2,
        bufsize: int = MAX_DATAGRAM,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
    ) -> None:
        """Check every argument (parameters: see the class) and open the socket."""
        super().__init__()
        config = _core.PeerConfig(
            rip, rport, timeout=timeout, retries=retries, bufsize=bufsize, rcvbuf=rcvbuf, sndbuf=sndbuf
        )
        self.timeout, self.retries, self.bufsize = float(timeout), retries, bufsize
        self.raddr: Address = (rip, rport)
        self._peer, self._remote = _core.Peer.for_remote(config)
        self.addr: Address = self._peer.local_addr()
        # One request at a time on the socket (replies carry no request id), per event loop.
        self._turns: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock]" = weakref.WeakKeyDictionary()

    def _no_reply(self, refused_before: int) -> NoReplyError:
        tries = self.retries + 1
        detail = f"after {tries} {'try' if tries == 1 else 'tries'} of {self.timeout:g} s each"
        if self._peer.stats()["refused"] > refused_before:
            return NoReplyError(
                f"no reply from {self.raddr[0]}:{self.raddr[1]} {detail}: refused, the network reports its "
                "port closed (is the server running?)",
                refused=True,
            )
        return NoReplyError(f"no reply from {self.raddr[0]}:{self.raddr[1]} {detail}")

    def _request(self, data: bytes) -> bytes:
        host, port = self._remote[0], self._remote[1]
        refused = self._peer.stats()["refused"]
        got = self._peer.request(data, host, port, self.timeout, self.retries)
        if got is None:
            raise self._no_reply(refused)
        reply: bytes = got[0]
        return reply

    async def _arequest(self, data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        turn = self._turns.get(loop)
        if turn is None:
            turn = self._turns[loop] = asyncio.Lock()
        async with turn:
            return await self._arequest_now(data)

    async def _arequest_now(self, data: bytes) -> bytes:
        host, port = self._remote[0], self._remote[1]
        refused = self._peer.stats()["refused"]
        request = self._peer.start_request(data, host, port, self.timeout, self.retries)
        while True:
            got = request.poll()
            if got is None:
                raise self._no_reply(refused)
            if isinstance(got, tuple):
                reply: bytes = got[0]
                return reply
            await self._wait_readable(got)

    def __repr__(self) -> str:
        return f"{self._kind}(raddr={self.raddr!r}, addr={self.addr!r}, closed={self.closed})"


_CLIENT_PARAMETERS = """

    Parameters
    ----------
    rip : str
        The server's address, resolved here.
    rport : int
        The server's port (the tutorial's 9000).
    timeout : float
        Seconds to wait for each reply (``inf``: no limit; Ctrl-C still interrupts).
    retries : int
        Resends after the first try, before ``NoReplyError``.
    bufsize : int
        Bytes read per reply (1-65507; default: a whole datagram).
    rcvbuf, sndbuf : int, optional
        Kernel socket buffers in bytes (default: the system's).

    Attributes
    ----------
    addr : tuple
        The client's own address; ``raddr`` is the server's as given.
    stats : dict
        ``received``, ``sent``, ``retries``, ``truncated``, ``ignored`` (datagrams from others),
        ``send_errors``, ``challenges`` (cookie challenges answered).
    """


class EchoClient(_RequestClient):
    """A client of the echo server: ``request(data)`` sends one datagram and returns the reply,
    resending after ``timeout`` seconds up to ``retries`` more times; then it raises
    :class:`chatudp.errors.NoReplyError` (a ``TimeoutError``). ``await arequest(data)`` is the
    same for asyncio: the event loop runs while it waits, cancelling it ends the wait, and
    concurrent ``arequest`` calls on one client take turns (a reply carries no request id)."""

    __doc__ = (__doc__ or "") + _CLIENT_PARAMETERS

    _kind = "EchoClient"

    def request(self, data: Union[str, BytesLike]) -> bytes:
        """Send ``data`` (a ``str`` is UTF-8 encoded, as the tutorial's client does) and return
        the reply."""
        return self._request(_echo_payload(data))

    async def arequest(self, data: Union[str, BytesLike]) -> bytes:
        """``request(data)`` for asyncio: never blocks the event loop; cancellable."""
        return await self._arequest(_echo_payload(data))


def _echo_payload(data: Union[str, BytesLike]) -> bytes:
    return data.encode() if isinstance(data, str) else as_bytes("data", data)


def _time_format(fmt: str) -> bytes:
    if not isinstance(fmt, str):
        raise TypeError(f"fmt must be str, not {type(fmt).__name__}")
    return fmt.encode("utf-8")


class TimeClient(_RequestClient):
    """A client of the time server: ``request(fmt)`` returns the server's local time formatted
    with ``fmt`` (``''``: the server's default, ``%Y-%m-%d %X``), resending after ``timeout``
    seconds up to ``retries`` more times; then it raises :class:`chatudp.errors.NoReplyError`.
    ``await arequest(fmt)`` is the same for asyncio."""

    __doc__ = (__doc__ or "") + _CLIENT_PARAMETERS

    _kind = "TimeClient"

    def request(self, fmt: str = "") -> str:
        """Ask for the time in ``fmt``; the answer decoded as UTF-8."""
        return self._request(_time_format(fmt)).decode("utf-8", "replace")

    async def arequest(self, fmt: str = "") -> str:
        """``request(fmt)`` for asyncio: never blocks the event loop; cancellable."""
        return (await self._arequest(_time_format(fmt))).decode("utf-8", "replace")


class QQPeer(_PeerSocket):
    """The socket of the tutorial's "QQ" programs: bound to ``bind`` (default ``('', 0)``, a free
    port on every IPv4 address), not connected, so it talks to any address.

    ``sendto(data, addr)`` and ``recvfrom(timeout=None)`` behave as the socket methods, except
    that ``recvfrom`` waits at most ``timeout`` seconds (``None``: no limit) and then raises
    ``TimeoutError``; ``close()`` from another thread wakes a waiting ``recvfrom``
    (:class:`chatudp.ClosedError`). ``await arecvfrom(timeout=None)`` is ``recvfrom`` for
    asyncio. Datagrams longer than ``bufsize`` are cut, as ``recvfrom(1024)`` cuts them.

    Parameters
    ----------
    bind : tuple
        ``(host, port)`` to bind, as ``socket.bind`` takes it; port 0 picks a free one.
    bufsize : int
        Bytes read per datagram (1-65507).
    rcvbuf, sndbuf : int, optional
        Kernel socket buffers in bytes (default: the system's).

    Attributes
    ----------
    addr : tuple
        The address bound.
    stats : dict
        ``received``, ``sent``, ``truncated``, ``send_errors`` and the request counters.
    """

    def __init__(
        self,
        bind: Address = ("", 0),
        *,
        bufsize: int = 1024,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
    ) -> None:
        """Check every argument (parameters: see the class) and bind the socket."""
        super().__init__()
        self._peer = _core.Peer(_core.PeerConfig.bound(bind, bufsize=bufsize, rcvbuf=rcvbuf, sndbuf=sndbuf))
        self.bufsize = bufsize
        self.addr: Address = self._peer.local_addr()

    def sendto(self, data: BytesLike, addr: Address) -> None:
        """Send one datagram to ``addr`` (``(host, port)``)."""
        self._peer.send_to(as_bytes("sendto()", data), addr)

    def recvfrom(self, timeout: Optional[float] = None) -> Tuple[bytes, Address]:
        """The next datagram and its sender; ``TimeoutError`` after ``timeout`` seconds."""
        got = self._peer.recv_from(timeout)
        if got is None:
            raise TimeoutError("timed out")
        data: bytes = got[0]
        return data, got[1]

    async def arecvfrom(self, timeout: Optional[float] = None) -> Tuple[bytes, Address]:
        """``recvfrom(timeout)`` for asyncio: the event loop runs while it waits (no thread, no
        polling: the loop watches the socket), and cancelling it ends the wait."""
        limit = check_timeout(timeout)
        loop = asyncio.get_running_loop()
        deadline = None if limit is None else loop.time() + limit
        while True:
            got = self._peer.recv_from(0)
            if got is not None:
                data: bytes = got[0]
                return data, got[1]
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError("timed out")
            await self._wait_readable(remaining)

    def __repr__(self) -> str:
        return f"QQPeer(addr={self.addr!r}, closed={self.closed})"
