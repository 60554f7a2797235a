"""The tutorial's other UDP programs on chatudp's Rust core: the echo server (``data.upper()``),
the ``strftime`` time server, their clients, and the socket of the "QQ" one-to-one chat.

The servers answer in a Rust thread that never takes the GIL; the clients wait for a reply with a
timeout and a bounded number of resends (the tutorial's clients wait forever when a datagram is
lost). Every wait is cut in short slices, so Ctrl-C works while Python waits on chatudp.
"""

from __future__ import annotations

import atexit
import logging
import threading
import weakref
from typing import Any, Callable, ClassVar, Dict, Optional, Tuple, TypeVar, Union

from . import _core
from .errors import NoReplyError

__all__ = ["EchoServer", "TimeServer", "EchoClient", "TimeClient", "QQPeer"]

Address = Tuple[Any, ...]
RequestCallback = Callable[[bytes, Address], object]
BytesLike = Union[bytes, bytearray, memoryview]

MAX_DATAGRAM = 65507
_DEFAULT_QUEUE_SIZE = 65536

_log = logging.getLogger("chatudp.services")

_S = TypeVar("_S", bound="_Service")
_C = TypeVar("_C", bound="_RequestClient")

_live: "weakref.WeakSet[_Service]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for server in list(_live):
        server.stop()


def _check_bufsize(bufsize: int) -> int:
    if isinstance(bufsize, bool) or not isinstance(bufsize, int):
        raise TypeError(f"bufsize must be an int, not {type(bufsize).__name__}")
    if not 1 <= bufsize <= MAX_DATAGRAM:
        raise ValueError(f"bufsize must be between 1 and {MAX_DATAGRAM} bytes, not {bufsize}")
    return bufsize


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not value >= 0:
        raise ValueError(f"{name} must be >= 0 seconds, not {value!r}")
    return float(value)


def _check_retries(retries: int) -> int:
    if isinstance(retries, bool) or not isinstance(retries, int):
        raise TypeError(f"retries must be an int, not {type(retries).__name__}")
    if not 0 <= retries <= 1_000_000:
        raise ValueError(f"retries must be between 0 and 1000000, not {retries}")
    return retries


def _as_bytes(name: str, data: object) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"{name}: a bytes-like object is required, not {type(data).__name__!r}")


# -- servers ---------------------------------------------------------------------------------


class _Service:
    """Life cycle shared by the echo and time servers: start, stop, context manager, stats."""

    _kind: ClassVar[str]
    _core_class: ClassVar[Any]

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
    ) -> None:
        self.bufsize = _check_bufsize(bufsize)
        if on_request is not None and not callable(on_request):
            raise TypeError(f"on_request must be callable or None, not {type(on_request).__name__}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise ValueError(f"queue_size must be an int >= 1, not {queue_size!r}")
        self.addr: Address = (ip, port)
        self.on_request = on_request
        self.event = threading.Event()
        self._queue_size = queue_size
        self._options = {"rcvbuf": rcvbuf, "sndbuf": sndbuf}
        self._lock = threading.Lock()
        self._core: Any = None
        self._dispatcher: Optional[threading.Thread] = None
        self._stopping = False

    def start(self) -> None:
        """Bind ``(ip, port)`` and start answering in a Rust thread. ``OSError`` when the port is
        in use or the address is bad; ``RuntimeError`` when already started or stopped."""
        with self._lock:
            if self._stopping:
                raise RuntimeError(f"this {self._kind} was stopped; create a new one to start again")
            if self._core is not None:
                raise RuntimeError(f"this {self._kind} is already started")
            ip, port = self.addr[0], self.addr[1]
            queue_size = self._queue_size if self.on_request is not None else None
            self._core = self._core_class(ip, port, bufsize=self.bufsize, queue_size=queue_size, **self._options)
            self.addr = self._core.local_addr()
            if self.on_request is not None:
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name=f"chatudp-{self._kind}-dispatch", daemon=True
                )
                self._dispatcher.start()
            _live.add(self)

    def stop(self) -> None:
        """Stop promptly: end the socket thread, close the socket, join every thread.
        Idempotent; safe to call from ``on_request``."""
        with self._lock:
            self._stopping = True
            core, dispatcher = self._core, self._dispatcher
        if core is not None:
            core.stop()
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join()
        _live.discard(self)
        self.event.set()

    def __enter__(self: _S) -> _S:
        with self._lock:
            started = self._core is not None
        if not started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()`` while the socket thread is alive."""
        core = self._core
        return core is not None and not self._stopping and core.is_running()

    @property
    def stats(self) -> Dict[str, Any]:
        """Counters: ``received``, ``answered``, ``bad_requests`` (answered with an error),
        ``sent``, ``truncated`` (requests longer than ``bufsize``), ``kernel_drops`` (datagrams
        the kernel dropped for a full receive buffer; Linux, else None), ``dropped`` by reason and
        ``send_errors`` by errno. ``{}`` before ``start()``."""
        core = self._core
        if core is None:
            return {}
        stats: Dict[str, Any] = core.stats()
        return stats

    def _dispatch(self) -> None:
        core = self._core
        callback = self.on_request
        assert callback is not None
        while True:
            batch = core.next_events()
            if batch is None:
                return
            for done, (_kind, addr, data) in enumerate(batch):
                if self._stopping:
                    core.discard_events(len(batch) - done)
                    return
                try:
                    callback(data, addr)
                except BaseException:  # SystemExit too: a callback must not end the dispatcher
                    _log.exception("%s on_request callback %r raised; the server goes on", self._kind, callback)

    def __repr__(self) -> str:
        return f"{self._kind}(addr={self.addr!r}, bufsize={self.bufsize}, running={self.running})"


class EchoServer(_Service):
    """The tutorial's echo server: answers every datagram with ``data.upper()`` (ASCII letters
    only, as ``bytes.upper()``) to its sender. Port 9000 and ``recvfrom(1024)`` as in the seed;
    a longer datagram is cut to ``bufsize`` bytes (and counted in ``stats['truncated']``).

    ``on_request(data, addr)``, when given, is called for each request on a Python thread
    (the seed prints them), without slowing the answers."""

    _kind = "EchoServer"
    _core_class = _core.EchoServer


class TimeServer(_Service):
    """The tutorial's time server: answers every datagram with ``time.strftime(fmt)`` of the
    local time, ``fmt`` being the datagram as UTF-8, or ``'%Y-%m-%d %X'`` for an empty datagram;
    byte for byte what CPython answers. A format that is not UTF-8, holds a NUL, or whose answer
    does not fit one datagram gets a short ``error: ...`` answer (``stats['bad_requests']``) and
    the server goes on (the original dies)."""

    _kind = "TimeServer"
    _core_class = _core.TimeServer


# -- clients ---------------------------------------------------------------------------------


class _RequestClient:
    """A socket on a free port that sends a request and waits for its reply."""

    _kind: ClassVar[str]

    def __init__(
        self,
        rip: str,
        rport: int,
        *,
        timeout: float,
        retries: int,
        bufsize: int,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
    ) -> None:
        self.timeout = _check_seconds("timeout", timeout)
        self.retries = _check_retries(retries)
        self.bufsize = _check_bufsize(bufsize)
        self.raddr: Address = (rip, rport)
        self._peer, self._remote = _core.Peer.for_remote(rip, rport, bufsize=bufsize, rcvbuf=rcvbuf, sndbuf=sndbuf)
        self.addr: Address = self._peer.local_addr()

    def _request(self, data: bytes) -> bytes:
        host, port = self._remote[0], self._remote[1]
        got = self._peer.request(data, host, port, self.timeout, self.retries)
        if got is None:
            tries = self.retries + 1
            raise NoReplyError(
                f"no reply from {self.raddr[0]}:{self.raddr[1]} after {tries} "
                f"{'try' if tries == 1 else 'tries'} of {self.timeout:g} s each"
            )
        reply: bytes = got[0]
        return reply

    def close(self) -> None:
        """Close the socket; idempotent."""
        self._peer.close()

    @property
    def closed(self) -> bool:
        return bool(self._peer.closed)

    @property
    def stats(self) -> Dict[str, Any]:
        """Counters: ``received``, ``sent``, ``retries``, ``truncated``, ``ignored`` (datagrams
        from other addresses and late replies), ``send_errors``."""
        stats: Dict[str, Any] = self._peer.stats()
        return stats

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{self._kind}(raddr={self.raddr!r}, addr={self.addr!r}, closed={self.closed})"


class EchoClient(_RequestClient):
    """A client of the echo server: ``request(data)`` sends one datagram and returns the reply,
    resending after ``timeout`` seconds up to ``retries`` more times; then it raises
    :class:`chatudp.errors.NoReplyError` (a ``TimeoutError``)."""

    _kind = "EchoClient"

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
        super().__init__(rip, rport, timeout=timeout, retries=retries, bufsize=bufsize, rcvbuf=rcvbuf, sndbuf=sndbuf)

    def request(self, data: Union[str, BytesLike]) -> bytes:
        """Send ``data`` (a ``str`` is UTF-8 encoded, as the tutorial's client does) and return
        the reply."""
        payload = data.encode() if isinstance(data, str) else _as_bytes("data", data)
        return self._request(payload)


class TimeClient(_RequestClient):
    """A client of the time server: ``request(fmt)`` returns the server's local time formatted
    with ``fmt`` (``''``: the server's default, ``%Y-%m-%d %X``), resending after ``timeout``
    seconds up to ``retries`` more times; then it raises :class:`chatudp.errors.NoReplyError`."""

    _kind = "TimeClient"

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
        super().__init__(rip, rport, timeout=timeout, retries=retries, bufsize=bufsize, rcvbuf=rcvbuf, sndbuf=sndbuf)

    def request(self, fmt: str = "") -> str:
        """Ask for the time in ``fmt``; the answer decoded as UTF-8."""
        if not isinstance(fmt, str):
            raise TypeError(f"fmt must be str, not {type(fmt).__name__}")
        return self._request(fmt.encode("utf-8")).decode("utf-8", "replace")


class QQPeer:
    """The socket of the tutorial's "QQ" programs: bound to ``bind`` (default ``('', 0)``, a free
    port on every IPv4 address), not connected, so it talks to any address.

    ``sendto(data, addr)`` and ``recvfrom(timeout=None)`` behave as the socket methods, except
    that ``recvfrom`` waits at most ``timeout`` seconds (``None``: no limit) and then raises
    ``TimeoutError``; ``close()`` from another thread wakes a waiting ``recvfrom``
    (:class:`chatudp.ClosedError`). Datagrams longer than ``bufsize`` are cut, as
    ``recvfrom(1024)`` cuts them."""

    def __init__(
        self,
        bind: Address = ("", 0),
        *,
        bufsize: int = 1024,
        rcvbuf: Optional[int] = None,
        sndbuf: Optional[int] = None,
    ) -> None:
        self.bufsize = _check_bufsize(bufsize)
        host, port = bind[0], bind[1]
        self._peer = _core.Peer(host, port, bufsize=bufsize, rcvbuf=rcvbuf, sndbuf=sndbuf)
        self.addr: Address = self._peer.local_addr()

    def sendto(self, data: BytesLike, addr: Address) -> None:
        """Send one datagram to ``addr`` (``(host, port)``)."""
        self._peer.send_to(_as_bytes("sendto()", data), addr[0], addr[1])

    def recvfrom(self, timeout: Optional[float] = None) -> Tuple[bytes, Address]:
        """The next datagram and its sender; ``TimeoutError`` after ``timeout`` seconds."""
        got = self._peer.recv_from(None if timeout is None else _check_seconds("timeout", timeout))
        if got is None:
            raise TimeoutError("timed out")
        data: bytes = got[0]
        return data, got[1]

    def close(self) -> None:
        """Close the socket (the port is free again); idempotent."""
        self._peer.close()

    @property
    def closed(self) -> bool:
        return bool(self._peer.closed)

    @property
    def stats(self) -> Dict[str, Any]:
        """Counters: ``received``, ``sent``, ``truncated``, ``send_errors``."""
        stats: Dict[str, Any] = self._peer.stats()
        return stats

    def __enter__(self) -> "QQPeer":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"QQPeer(addr={self.addr!r}, closed={self.closed})"
