"""Collector: UDP mass collection (sensors, statsd, InfluxDB lines) at the kernel's rate, handed
to Python in batches, with every loss counted.

The socket threads are Rust (``recvmmsg``, kernel timestamps, the kernel's drop counter) and
never take the GIL; Python sees one ``Batch`` object per ``batch`` datagrams (or per ``flush``
seconds), so its cost per datagram is a small fraction of a microsecond.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Tuple

from . import _core
from ._base import (
    Address,
    SocketThreadObject,
    check_bufsize,
    check_callback,
    check_count,
    check_host,
    check_port,
    check_socket_buffer,
)
from .errors import ClosedError

__all__ = ["Batch", "Collector"]

Batch = _core.Batch
BatchCallback = Callable[[Any], object]

_FORMATS = (None, "statsd", "influx")
_ORDERS = ("big", "little")
# Longest one wait of the asyncio consumer sleeps in its executor thread.
_ASYNC_SLICE = 0.25

log = logging.getLogger("chatudp.collector")


def _check_number(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not low < value <= high:
        raise ValueError(f"{name} must be > {low:g} and <= {high:g} seconds, not {value!r}")
    return float(value)


def _check_int(name: str, value: int, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be between {low} and {high}, not {value}")
    return value


def _check_seq(seq: Optional[Tuple[int, int, str]]) -> Optional[Tuple[int, int, str]]:
    if seq is None:
        return None
    try:
        offset, size, order = seq
    except (TypeError, ValueError):
        raise TypeError(f"seq must be None or (offset, size, byteorder), e.g. (0, 4, 'big'), not {seq!r}") from None
    _check_int("seq offset", offset, 0, _core.MAX_DATAGRAM - 1)
    if isinstance(size, bool) or size not in (1, 2, 4, 8):
        raise ValueError(f"seq size must be 1, 2, 4 or 8 bytes, not {size!r}")
    if order not in _ORDERS:
        raise ValueError(f"seq byteorder must be 'big' or 'little', not {order!r}")
    return (offset, size, order)


class Collector(SocketThreadObject):
    """Receives datagrams on ``(ip, port)`` and hands them to Python in batches.

    A batch is handed over when it holds ``batch`` datagrams, or ``flush`` seconds after its
    first datagram, whichever comes first. It goes to ``on_batch(batch)`` on a dispatcher thread
    when that is set; otherwise ``recv_batch()``, ``for batch in collector``, ``async for`` and
    ``await collector.arecv_batch()`` pull it (iteration ends at ``stop()``).

    Parameters
    ----------
    ip : str
        Address to bind; resolved at ``start()``.
    port : int
        Port to bind; 0 picks a free one.
    bufsize : int
        Bytes read per datagram (1-65507); longer ones are cut and counted.
    batch : int
        Datagrams per batch at most.
    flush : float
        Seconds after its first datagram that a batch is handed over at the latest.
    workers : int
        Socket threads, each with its own ``SO_REUSEPORT`` socket on the port.
    seq : (int, int, str), optional
        ``(offset, size, byteorder)`` of a per-source sequence number (size 1, 2, 4 or 8):
        loss, reordering and duplicates are counted in ``sources()``.
    format : str, optional
        ``'statsd'`` or ``'influx'``: the lines are parsed into ``batch.metrics``.
    on_batch : callable, optional
        ``on_batch(batch)`` for each batch, on a dispatcher thread.
    rcvbuf : int, optional
        Kernel receive buffer in bytes (default 4 MiB, capped by the kernel).
    queue_size : int
        Batches that may wait for Python; beyond it new batches are dropped and their
        datagrams counted in ``stats['dropped']``.
    max_sources : int
        Sources remembered by ``sources()``, the least recently heard forgotten first.

    Attributes
    ----------
    addr : tuple
        The address bound (after ``start()``).
    stats : dict
        ``received``, ``batches``, ``truncated``, ``kernel_drops``, ``dropped``,
        ``parse_errors``, ``short``, ``evicted_sources``.
    event : threading.Event
        Set by ``stop()``.
    """

    _kind = "Collector"
    _log = log

    def __init__(
        self,
        ip: str = "127.0.0.1",
        port: int = 9001,
        *,
        bufsize: int = 2048,
        batch: int = 1000,
        flush: float = 0.05,
        workers: int = 1,
        seq: Optional[Tuple[int, int, str]] = None,
        format: Optional[str] = None,
        on_batch: Optional[BatchCallback] = None,
        rcvbuf: Optional[int] = None,
        queue_size: int = 1024,
        max_sources: int = 65536,
    ) -> None:
        """Check every argument (parameters: see the class); ``start()`` binds and collects."""
        super().__init__()
        self.addr: Address = (check_host("ip", ip), check_port("port", port))
        self.bufsize = check_bufsize(bufsize)
        self.batch = _check_int("batch", batch, 1, 1_000_000)
        self.flush = _check_number("flush", flush, 0, 3600)
        self.workers = _check_int("workers", workers, 1, 1024)
        if self.workers > 1 and not _core.REUSEPORT:
            log.warning("workers=%d needs SO_REUSEPORT, which this platform lacks: using one worker", workers)
            self.workers = 1
        self.seq = _check_seq(seq)
        if format not in _FORMATS:
            raise ValueError(f"format must be None, 'statsd' or 'influx', not {format!r}")
        self.format = format
        check_callback("on_batch", on_batch)
        self.on_batch = on_batch
        self._rcvbuf = check_socket_buffer("rcvbuf", rcvbuf)
        self._queue_size = check_count("queue_size", queue_size)
        self._max_sources = check_count("max_sources", max_sources)

    def _open(self) -> Any:
        return _core.Collector(
            self.addr[0],
            self.addr[1],
            bufsize=self.bufsize,
            batch=self.batch,
            flush=self.flush,
            workers=self.workers,
            seq=self.seq,
            format=self.format,
            rcvbuf=self._rcvbuf,
            queue_size=self._queue_size,
            max_sources=self._max_sources,
        )

    def _wants_events(self) -> bool:
        return self.on_batch is not None

    def _deliver_batch(self, batch: List[Any]) -> int:
        on_batch = self.on_batch
        assert on_batch is not None
        for done, one in enumerate(batch):
            if self._stopping:
                return done
            self._call(on_batch, one)
        return len(batch)

    # -- counters ---------------------------------------------------------------------------

    @property
    def stats(self) -> Dict[str, Any]:
        """``received``, ``batches``, ``truncated``, ``kernel_drops`` (what the kernel dropped
        because the socket buffer was full; ``None`` where the platform does not tell),
        ``dropped`` (datagrams in batches Python did not take in time, or still queued at
        ``stop()`` with ``on_batch``), ``parse_errors``, ``short`` (too short for ``seq``) and
        ``evicted_sources``; ``{}`` before ``start()``."""
        return super().stats

    def sources(self) -> Dict[Address, Dict[str, int]]:
        """``{(ip, port): {'received', 'lost', 'reordered', 'duplicates'}}`` for the sources
        heard most recently (at most ``max_sources``); ``{}`` before ``start()``."""
        core = self._core
        if core is None:
            return {}
        sources: Dict[Address, Dict[str, int]] = core.sources()
        return sources

    # -- pull and asyncio consumers ---------------------------------------------------------

    def _pull_core(self) -> Any:
        core = self._core
        if core is None:
            raise RuntimeError("this Collector is not started; call start() first")
        if self.on_batch is not None:
            raise RuntimeError("batches go to on_batch; recv_batch() and iteration serve only without it")
        return core

    def recv_batch(self, timeout: Optional[float] = None) -> Any:
        """Wait for the next batch. ``TimeoutError`` after ``timeout`` seconds, ``ClosedError``
        once stopped and every batch was read. The GIL is released while waiting; Ctrl-C
        interrupts the wait."""
        return self._pull_core().recv_batch(timeout)

    def __iter__(self) -> Iterator[Any]:
        """``for batch in collector:`` — ends at ``stop()``, after the batches already queued."""
        core = self._pull_core()
        while True:
            try:
                yield core.recv_batch()
            except ClosedError:
                return

    async def arecv_batch(self, timeout: Optional[float] = None) -> Any:
        """``await collector.arecv_batch()``: the next batch, without blocking the event loop.
        Same errors as ``recv_batch``; a cancelled wait loses no batch."""
        core = self._pull_core()
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            batch = core.try_recv_batch()
            if batch is not None:
                return batch
            remaining = _ASYNC_SLICE if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no batch within {timeout} s")
            await loop.run_in_executor(None, core.wait_ready, min(remaining, _ASYNC_SLICE))

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._aiter()

    async def _aiter(self) -> AsyncIterator[Any]:
        while True:
            try:
                yield await self.arecv_batch()
            except ClosedError:
                return

    def __repr__(self) -> str:
        return f"Collector(addr={self.addr!r}, batch={self.batch}, flush={self.flush}, running={self.running})"
