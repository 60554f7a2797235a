"""What every chatudp object with a Rust socket thread shares: start, stop (also by ``with``,
``async with`` and at interpreter exit), the dispatcher thread that hands events to Python in
batches, and argument checks."""

from __future__ import annotations

import asyncio
import atexit
import ipaddress
import logging
import math
import os
import threading
import time
import weakref
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, TypeVar, Union

from .errors import PortError

Address = Tuple[Any, ...]
Event = Tuple[str, Address, Any]

MAX_DATAGRAM = 65507

_T = TypeVar("_T", bound="SocketThreadObject")

_live: "weakref.WeakSet[SocketThreadObject]" = weakref.WeakSet()

# How often an idle dispatcher looks again at what it must be told (a logging level that changed).
_ROUTE_REFRESH = 0.5
# At interpreter exit, how long each dispatcher may take to finish the callback it is running.
_EXIT_JOIN_TIMEOUT = 2.0

# Which dispatcher each thread is joining in stop(): a stop() never waits for a dispatcher that
# is, directly or through other stop() calls, waiting for the caller. Reentrant, since a signal
# handler may call stop() while the main thread is inside one.
_joins_lock = threading.RLock()
_joining: Dict[threading.Thread, threading.Thread] = {}


@atexit.register
def _stop_all_at_exit() -> None:
    for obj in list(_live):
        obj._stop(_EXIT_JOIN_TIMEOUT)


def _refresh_routes_after_level_change() -> None:
    """What reaches the dispatchers depends on logging levels (the tutorial's INFO lines, DEBUG
    records): follow a change at once. Every level change (``setLevel``, ``logging.disable``)
    clears the logging manager's cache, so hook that; the dispatchers also look again every
    ``_ROUTE_REFRESH`` seconds, should the hook be missing."""
    manager = logging.Logger.manager
    clear_cache = getattr(manager, "_clear_cache", None)
    if clear_cache is None:
        return

    def clear_cache_and_refresh() -> None:
        clear_cache()
        for obj in list(_live):
            obj._refresh_route()

    manager._clear_cache = clear_cache_and_refresh  # type: ignore[attr-defined]


_refresh_routes_after_level_change()


def _join_dispatcher(dispatcher: threading.Thread, timeout: Optional[float]) -> bool:
    """Join `dispatcher` unless that could deadlock; False when it was left to end by itself
    (it ends once its running callback returns, as the object is stopping)."""
    me = threading.current_thread()
    with _joins_lock:
        waited: Optional[threading.Thread] = dispatcher
        while waited is not None:
            if waited is me:
                return False
            waited = _joining.get(waited)
        _joining[me] = dispatcher
    try:
        dispatcher.join(timeout)
    finally:
        with _joins_lock:
            if _joining.get(me) is dispatcher:
                del _joining[me]
    return not dispatcher.is_alive()


def check_timeout(timeout: Optional[float]) -> Optional[float]:
    """A ``timeout`` argument: None or ``inf`` mean no limit (None is returned); NaN and negative
    values are a ValueError."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be None or a number of seconds, not {type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
    return None if math.isinf(timeout) else float(timeout)


def check_host(name: str, host: str) -> str:
    """A host argument: an IP address or a name, as a str (resolved at ``start()``)."""
    if not isinstance(host, str):
        raise TypeError(f"{name} must be a str (an IP address or a host name), not {type(host).__name__}")
    return host


def check_port(name: str, port: int) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name} must be an int (0-65535; 0 picks a free port), not {type(port).__name__}")
    if not 0 <= port <= 65535:
        raise PortError(f"{name} must be 0-65535 (0 picks a free port), not {port}")
    return port


def check_socket_buffer(name: str, size: Optional[int]) -> Optional[int]:
    """``rcvbuf``/``sndbuf``: None (the default) or a size in bytes the kernel may cap."""
    if size is None:
        return None
    if isinstance(size, bool) or not isinstance(size, int):
        raise TypeError(f"{name} must be None or a size in bytes, not {type(size).__name__}")
    if not 1 <= size <= 2**31 - 1:
        raise ValueError(f"{name} must be None or between 1 and {2**31 - 1} bytes, not {size}")
    return size


Network = Union[str, "ipaddress.IPv4Network", "ipaddress.IPv6Network"]


def check_bufsize(bufsize: int) -> int:
    if isinstance(bufsize, bool) or not isinstance(bufsize, int):
        raise TypeError(f"bufsize must be an int, not {type(bufsize).__name__}")
    if not 1 <= bufsize <= MAX_DATAGRAM:
        raise ValueError(f"bufsize must be between 1 and {MAX_DATAGRAM} bytes, not {bufsize}")
    return bufsize


def check_count(name: str, value: int, maximum: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, not {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be between 1 and {maximum}, not {value}")
    return value


def check_callback(name: str, callback: Optional[Callable[..., object]]) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"{name} must be callable or None, not {type(callback).__name__}")


class SocketThreadObject:
    """Life cycle of an object whose socket loop runs in a Rust thread (``self._core``)."""

    _kind: ClassVar[str]
    _log: ClassVar[logging.Logger]
    # How often an idle dispatcher refreshes its route; None: it has none to refresh.
    _route_refresh: ClassVar[Optional[float]] = None
    addr: Optional[Address]

    def __init__(self) -> None:
        self.event = threading.Event()
        # Reentrant: a signal handler may call stop() while this thread is inside start()/stop().
        self._lock = threading.RLock()
        self._core: Any = None
        self._dispatcher: Optional[threading.Thread] = None
        self._stopping = False
        # The process that started the threads: in a fork() child the object is inert.
        self._pid: Optional[int] = None

    # -- hooks for subclasses -------------------------------------------------------------------

    def _open(self) -> Any:
        """Create and start the Rust half."""
        raise NotImplementedError

    def _wants_events(self) -> bool:
        return True

    def _deliver(self, kind: str, addr: Address, detail: Any) -> None:
        """Hand one event to Python; runs on the dispatcher thread."""

    def _deliver_batch(self, batch: List[Event]) -> int:
        """Hand a batch over; returns how many events were handled before a stop began."""
        for done, (kind, addr, detail) in enumerate(batch):
            if self._stopping:
                return done
            self._deliver(kind, addr, detail)
        return len(batch)

    def _on_stopped(self) -> None:
        """Called once the socket thread has ended."""

    def _refresh_route(self) -> None:
        """Tell the core again which events are wanted (a logging level may have changed)."""

    # -- life cycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Bind (or connect) and start the socket thread, and the dispatcher thread when there
        are events to hand to Python. ``OSError`` for a busy port or a bad address;
        ``RuntimeError`` when already started or stopped."""
        with self._lock:
            if self._stopping:
                raise RuntimeError(f"this {self._kind} was stopped; create a new one to start again")
            if self._core is not None:
                raise RuntimeError(f"this {self._kind} is already started")
            self._core = self._open()
            self._pid = os.getpid()
            self.addr = self._core.local_addr()
            if self._wants_events():
                self._dispatcher = threading.Thread(
                    target=self._dispatch, name=f"chatudp-{self._kind}-dispatch", daemon=True
                )
                self._dispatcher.start()
            _live.add(self)

    def stop(self) -> None:
        """Stop promptly: end the socket thread (a chat server first sends ``Bye!`` to its
        clients), close the socket, drop the events not yet delivered (they are counted, after the
        callback that is running returns), and join every thread. Idempotent; safe to call from
        any callback of any object, and from a signal handler. From a callback, it does not wait
        for a dispatcher that is itself waiting for that callback (directly or through another
        object's ``stop()``): that dispatcher ends by itself once its callback returns. In a child
        made by ``os.fork()`` the inherited object is inert: ``stop()`` does nothing."""
        self._stop(None)

    def _stop(self, join_timeout: Optional[float]) -> None:
        if self._forked():
            return
        with self._lock:
            self._stopping = True
            core, dispatcher = self._core, self._dispatcher
        if core is not None:
            core.stop()
        _live.discard(self)
        self._on_stopped()
        if dispatcher is not None and dispatcher is not threading.current_thread():
            if not _join_dispatcher(dispatcher, join_timeout) and join_timeout is not None:
                self._log.warning("%s: a callback still runs at exit; not waiting for it", self._kind)
        self.event.set()

    def _forked(self) -> bool:
        return self._pid is not None and self._pid != os.getpid()

    def __enter__(self: _T) -> _T:
        with self._lock:
            started = self._core is not None
        if not started:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    async def __aenter__(self: _T) -> _T:
        return self.__enter__()

    async def __aexit__(self, *exc_info: object) -> None:
        # stop() waits for a running callback: keep the event loop free meanwhile.
        await asyncio.get_running_loop().run_in_executor(None, self.stop)

    @property
    def running(self) -> bool:
        """True between ``start()`` and ``stop()`` while the socket thread is alive."""
        core = self._core
        return core is not None and not self._stopping and not self._forked() and bool(core.is_running())

    @property
    def stats(self) -> Dict[str, Any]:
        """The counters of the socket thread (see the class); ``{}`` before ``start()``."""
        core = self._core
        if core is None:
            return {}
        stats: Dict[str, Any] = core.stats()
        return stats

    # -- dispatcher ---------------------------------------------------------------------------

    def _dispatch(self) -> None:
        core = self._core
        refreshed = time.monotonic()
        while True:
            period = self._route_refresh
            batch = core.next_events() if period is None else core.next_events(timeout=period)
            if batch is None:
                self._report_failure(core)
                self._on_stopped()
                return
            handled = self._deliver_batch(batch) if batch else 0
            if self._stopping:
                core.discard_events(len(batch) - handled)
                return
            if period is not None and time.monotonic() - refreshed >= period:
                self._refresh_route()
                refreshed = time.monotonic()

    def _report_failure(self, core: Any) -> None:
        # The event channel closes while a panicking thread unwinds, just before its failure is
        # recorded: give it a moment to finish.
        deadline = time.monotonic() + 2
        while not self._stopping and core.is_running() and time.monotonic() < deadline:
            time.sleep(0.01)
        failure = core.failure()
        if failure is not None:
            self._log.error(
                "%s socket thread failed: %s; call stop() and create a new one",
                self._kind,
                failure,
                extra={"chatudp_failure": failure},
            )

    def _call(self, callback: Callable[..., object], *args: Any) -> None:
        try:
            callback(*args)
        except BaseException:  # SystemExit too: a callback must not end the dispatcher
            self._log.exception("%s callback %r raised; the %s goes on", self._kind, callback, self._kind)
