"""A seeded, fault-injecting UDP proxy for the test suite (stdlib only, 127.0.0.1 only).

Clients send to ``proxy.addr`` instead of the server. For every client address the proxy opens
its own upstream socket, so the server sees one distinct source per client (and the proxy knows
where to send the server's answers back). Each datagram, in each direction, is then:

* lost with probability ``loss``;
* otherwise delivered after ``delay`` seconds (plus up to ``jitter``);
* held back for an extra ``reorder_delay`` with probability ``reorder``, so datagrams sent after
  it overtake it;
* delivered twice with probability ``duplicate`` (the copy ``dup_gap`` seconds after the first).

Every decision is drawn from one ``random.Random(seed)`` in the proxy's one thread, in the order
datagrams reach the proxy, so a run with the same seed and the same traffic order makes the same
decisions. The proxy's thread ends by itself after ``lifetime`` seconds or ``max_datagrams``
datagrams (whichever comes first), and ``close()`` ends it at once and closes every socket.

The kernel of this machine has no netem qdisc, which is why the faults are made here.
"""

from __future__ import annotations

import heapq
import itertools
import random
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

LOOPBACK = "127.0.0.1"
Address = Tuple[str, int]

UP = "up"  # client -> server
DOWN = "down"  # server -> client


# Kernel buffers asked for (capped by net.core.rmem_max / wmem_max): the proxy's one Python
# thread must not be the place where datagrams are lost by accident.
SOCKET_BUFFER = 4 << 20


def _big_buffers(sock: socket.socket) -> None:
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


@dataclass
class Faults:
    """Fault probabilities and delays for one direction."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    reorder_delay: float = 0.05
    dup_gap: float = 0.001

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "reorder"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1], not {value!r}")
        for name in ("delay", "jitter", "reorder_delay", "dup_gap"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds")


@dataclass
class DirectionStats:
    received: int = 0
    delivered: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    send_errors: int = 0

    def as_dict(self) -> Dict[str, int]:
        return dict(self.__dict__)


@dataclass(order=True)
class _Pending:
    due: float
    seq: int
    sock: socket.socket = field(compare=False)
    data: bytes = field(compare=False)
    to: Address = field(compare=False)
    direction: str = field(compare=False)


class FaultProxy:
    """``FaultProxy(upstream, seed=1, loss=0.2, duplicate=0.05, reorder=0.1, delay=0.05)``.

    ``up`` / ``down`` override the faults of one direction (a :class:`Faults`); by default both
    directions get the same faults. ``set_faults()`` changes them while the proxy runs.
    """

    def __init__(
        self,
        upstream: Address,
        *,
        seed: int = 1,
        loss: float = 0.0,
        duplicate: float = 0.0,
        reorder: float = 0.0,
        delay: float = 0.0,
        jitter: float = 0.0,
        reorder_delay: float = 0.05,
        up: Optional[Faults] = None,
        down: Optional[Faults] = None,
        lifetime: float = 60.0,
        max_datagrams: int = 2_000_000,
        max_clients: int = 4096,
    ) -> None:
        if upstream[0] != LOOPBACK:
            raise ValueError("the fault proxy only forwards to 127.0.0.1")
        both = Faults(loss, duplicate, reorder, delay, jitter, reorder_delay)
        self.upstream: Address = (upstream[0], int(upstream[1]))
        self.faults: Dict[str, Faults] = {UP: up or both, DOWN: down or both}
        self.rng = random.Random(seed)
        self.lifetime = lifetime
        self.max_datagrams = max_datagrams
        self.max_clients = max_clients
        self.stats: Dict[str, DirectionStats] = {UP: DirectionStats(), DOWN: DirectionStats()}
        self.refused_clients = 0
        self._lock = threading.Lock()
        self._front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _big_buffers(self._front)
        self._front.bind((LOOPBACK, 0))
        self._front.setblocking(False)
        self.addr: Address = self._front.getsockname()
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._front, selectors.EVENT_READ, None)
        # client address -> its upstream socket, and back
        self._by_client: Dict[Address, socket.socket] = {}
        self._client_of: Dict[int, Address] = {}
        self._pending: List[_Pending] = []
        self._seq = itertools.count()
        self._closing = threading.Event()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._thread = threading.Thread(target=self._run, name="faultproxy", daemon=True)
        self._thread.start()

    # -- public ------------------------------------------------------------------------------

    def set_faults(self, direction: Optional[str] = None, **changes: float) -> None:
        """Changes fault settings; ``direction`` is ``"up"``, ``"down"`` or None for both."""
        with self._lock:
            for d in (UP, DOWN) if direction is None else (direction,):
                current = self.faults[d].__dict__.copy()
                current.update(changes)
                self.faults[d] = Faults(**current)

    def upstream_addr(self, client: Address) -> Optional[Address]:
        """The source address the server sees for ``client`` (None before its first datagram)."""
        with self._lock:
            sock = self._by_client.get((client[0], int(client[1])))
            return None if sock is None else sock.getsockname()

    def upstream_addrs(self) -> Dict[Address, Address]:
        """``{client address: address the server sees}`` for every client so far."""
        with self._lock:
            return {c: s.getsockname() for c, s in self._by_client.items()}

    def pending(self) -> int:
        """Datagrams held (delayed, reordered or duplicated) and not delivered yet."""
        with self._lock:
            return len(self._pending)

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """True once nothing is held any more (bounded by ``timeout``)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.pending() == 0:
                return True
            time.sleep(0.005)
        return False

    def counts(self) -> Dict[str, Dict[str, int]]:
        with self._lock:
            return {d: s.as_dict() for d, s in self.stats.items()}

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Ends the thread and closes every socket; idempotent."""
        self._closing.set()
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass
        self._thread.join(5)
        with self._lock:
            socks = [self._front, self._wake_r, self._wake_w, *self._by_client.values()]
            self._by_client.clear()
            self._client_of.clear()
            self._pending.clear()
        for sock in socks:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError, OSError):
                pass
            sock.close()
        self._selector.close()

    def __enter__(self) -> "FaultProxy":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the proxy thread ----------------------------------------------------------------------

    def _run(self) -> None:
        deadline = time.monotonic() + self.lifetime
        handled = 0
        while not self._closing.is_set() and time.monotonic() < deadline and handled < self.max_datagrams:
            timeout = self._flush_due()
            for key, _ in self._selector.select(min(timeout, 0.05)):
                if key.data == "wake":
                    try:
                        self._wake_r.recv(64)
                    except OSError:
                        pass
                    continue
                handled += self._drain(key.fileobj)  # type: ignore[arg-type]

    def _drain(self, sock: socket.socket) -> int:
        count = 0
        for _ in range(256):  # bounded: give the timer a look in
            try:
                data, source = sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP report about an earlier send (e.g. the server is down)
                continue
            count += 1
            if sock is self._front:
                up = self._upstream_for(source)
                if up is not None:
                    self._route(UP, up, data, self.upstream)
            else:
                with self._lock:
                    client = self._client_of.get(sock.fileno())
                if client is not None:
                    self._route(DOWN, self._front, data, client)
        return count

    def _upstream_for(self, client: Address) -> Optional[socket.socket]:
        with self._lock:
            sock = self._by_client.get(client)
            if sock is not None:
                return sock
            if len(self._by_client) >= self.max_clients:
                self.refused_clients += 1
                return None
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            _big_buffers(sock)
            sock.bind((LOOPBACK, 0))
            sock.setblocking(False)
            self._by_client[client] = sock
            self._client_of[sock.fileno()] = client
        self._selector.register(sock, selectors.EVENT_READ, None)
        return sock

    def _route(self, direction: str, out: socket.socket, data: bytes, to: Address) -> None:
        with self._lock:
            faults = self.faults[direction]
            stats = self.stats[direction]
            stats.received += 1
            rng = self.rng
            if rng.random() < faults.loss:
                stats.lost += 1
                return
            now = time.monotonic()
            due = now + faults.delay + (rng.random() * faults.jitter if faults.jitter else 0.0)
            if rng.random() < faults.reorder:
                stats.reordered += 1
                due += faults.reorder_delay
            copies = [due]
            if rng.random() < faults.duplicate:
                stats.duplicated += 1
                copies.append(due + faults.dup_gap)
            for when in copies:
                heapq.heappush(self._pending, _Pending(when, next(self._seq), out, data, to, direction))

    def _flush_due(self) -> float:
        """Sends every datagram that is due; returns seconds until the next one."""
        with self._lock:
            while self._pending:
                head = self._pending[0]
                wait = head.due - time.monotonic()
                if wait > 0:
                    return wait
                heapq.heappop(self._pending)
                try:
                    head.sock.sendto(head.data, head.to)
                    self.stats[head.direction].delivered += 1
                except OSError:  # the server's port is closed, a buffer is full: UDP promises nothing
                    self.stats[head.direction].send_errors += 1
            return 0.05


def record_figures(test: str, **figures: object) -> None:
    """Prints the figures a test measured; with ``CHATUDP_FIGURES=path`` also appends them to that
    file as one JSON line (how docs/RELIABILITY.md gets its numbers)."""
    import json
    import os

    line = json.dumps({"test": test, **figures}, sort_keys=True, default=str)
    print(f"FIGURES {line}")
    path = os.environ.get("CHATUDP_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(line + "\n")
