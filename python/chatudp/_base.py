"""What every chatudp object with a Rust socket thread shares: start, stop (also by ``with``,
``async with`` and at interpreter exit), the dispatcher thread that hands events to Python in
batches, and argument checks."""

from __future__ import annotations

import asyncio
import atexit
import logging
import threading
import time
import weakref
from typing import Any, Callable, ClassVar, Dict, List, Optional, Tuple, TypeVar

Address = Tuple[Any, ...]
Event = Tuple[str, Address, Any]

MAX_DATAGRAM = 65507

_T = TypeVar("_T", bound="SocketThreadObject")

_live: "weakref.WeakSet[SocketThreadObject]" = weakref.WeakSet()


@atexit.register
def _stop_all_at_exit() -> None:
    for obj in list(_live):
        obj.stop()


def check_bufsize(bufsize: int) -> int:
    if isinstance(bufsize, bool) or not isinstance(bufsize, int):
        raise TypeError(f"bufsize must be an int, not {type(bufsize).__name__}")
    if not 1 <= bufsize <= MAX_DATAGRAM:
        raise ValueError(f"bufsize must be between 1 and {MAX_DATAGRAM} bytes, not {bufsize}")
    return bufsize


def check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, not {value!r}")
    return value


def check_callback(name: str, callback: Optional[Callable[..., object]]) -> None:
    if callback is not None and not callable(callback):
        raise TypeError(f"{name} must be callable or None, not {type(callback).__name__}")


class SocketThreadObject:
    """Life cycle of an object whose socket loop runs in a Rust thread (``self._core``)."""

    _kind: ClassVar[str]
    _log: ClassVar[logging.Logger]
    addr: Optional[Address]

    def __init__(self) -> None:
        self.event = threading.Event()
        self._lock = threading.Lock()
        self._core: Any = None
        self._dispatcher: Optional[threading.Thread] = None
        self._stopping = False

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
        """Called once every thread has ended."""

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
        callback that is running returns), and join every thread. Idempotent; safe to call from a
        callback."""
        with self._lock:
            self._stopping = True
            core, dispatcher = self._core, self._dispatcher
        if core is not None:
            core.stop()
        if dispatcher is not None and dispatcher is not threading.current_thread():
            dispatcher.join()
        _live.discard(self)
        self._on_stopped()
        self.event.set()

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
        return core is not None and not self._stopping and bool(core.is_running())

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
        while True:
            batch = core.next_events()
            if batch is None:
                self._report_failure(core)
                return
            handled = self._deliver_batch(batch)
            if self._stopping:
                core.discard_events(len(batch) - handled)
                return

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
