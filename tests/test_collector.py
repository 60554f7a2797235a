"""Collector on real loopback sockets: delivery, batching, loss accounting, kernel drops,
parsers, bad input, the pull and asyncio consumers."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import chatudp
from chatudp import ClosedError, Collector

from conftest import wait_for

CORPUS = Path(__file__).with_name("collector_corpus.json")


_open_sockets: List[socket.socket] = []


@pytest.fixture(autouse=True)
def _close_senders() -> Iterator[None]:
    yield
    while _open_sockets:
        _open_sockets.pop().close()


def senders(count: int, family: int = socket.AF_INET, host: str = "127.0.0.1") -> List[socket.socket]:
    """Bound UDP sockets, closed after the test whatever happens."""
    made = []
    for _ in range(count):
        s = socket.socket(family, socket.SOCK_DGRAM)
        _open_sockets.append(s)
        s.bind((host, 0))
        made.append(s)
    return made


def pull_all(collector: Collector, datagrams: int, timeout: float = 20.0) -> List[chatudp.Batch]:
    batches = []
    seen = 0
    deadline = time.monotonic() + timeout
    while seen < datagrams:
        batch = collector.recv_batch(timeout=max(0.01, deadline - time.monotonic()))
        batches.append(batch)
        seen += len(batch)
    return batches


# -- delivery and batching ---------------------------------------------------------------------


def test_exact_delivery_from_four_sources_byte_identical_in_order() -> None:
    per_source = 2500
    with Collector(port=0, batch=256, flush=0.02, seq=(0, 4, "big")) as collector:
        socks = senders(4)
        sent: Dict[Tuple[str, int], List[bytes]] = {s.getsockname(): [] for s in socks}
        for i in range(per_source):
            for n, s in enumerate(socks):
                payload = struct.pack(">I", i) + bytes([n]) * (i % 50)
                s.sendto(payload, collector.addr)
                sent[s.getsockname()].append(payload)
            if i % 64 == 63:
                # Paced: on a loaded machine a burst could overflow the kernel buffer.
                wait_for(lambda: collector.stats["received"] >= 4 * (i + 1) - 256, what="the collector to keep up")
        batches = pull_all(collector, 4 * per_source)
        got: Dict[Tuple[str, int], List[bytes]] = {addr: [] for addr in sent}
        for batch in batches:
            buf = memoryview(batch)
            offsets = batch.offsets
            assert len(offsets) == len(batch) + 1 and offsets[-1] == buf.nbytes
            for k, (payload, addr) in enumerate(zip(batch.payloads, batch.addrs)):
                assert bytes(buf[offsets[k] : offsets[k + 1]]) == payload
                got[addr].append(payload)
        assert got == sent
        stats = collector.stats
        assert (stats["received"], stats["dropped"], stats["kernel_drops"]) == (10_000, 0, 0)
        sources = collector.sources()
        assert sources == {addr: {"received": per_source, "lost": 0, "reordered": 0, "duplicates": 0} for addr in sent}
        assert sum(s["received"] for s in sources.values()) == stats["received"]
        for s in socks:
            s.close()


def test_a_batch_is_handed_over_at_batch_datagrams_or_flush_after_its_first() -> None:
    flush = 0.3
    with Collector(port=0, batch=5, flush=flush) as collector:
        (s,) = senders(1)
        for i in range(12):
            s.sendto(b"%d" % i, collector.addr)
        first, second = collector.recv_batch(timeout=5), collector.recv_batch(timeout=5)
        assert (len(first), len(second)) == (5, 5)
        sent_last = time.time()
        third = collector.recv_batch(timeout=5)
        handed = time.time()
        assert third.payloads == [b"10", b"11"]
        # Flushed `flush` after its first datagram arrived (kernel time), not before.
        assert handed >= third.times[0] + flush - 0.005
        assert handed - sent_last < flush + 1.0
        # A lone datagram waits for the flush, no longer.
        s.sendto(b"alone", collector.addr)
        started = time.monotonic()
        assert collector.recv_batch(timeout=5).payloads == [b"alone"]
        waited = time.monotonic() - started
        assert flush - 0.02 <= waited < flush + 1.0
        with pytest.raises(TimeoutError):
            collector.recv_batch(timeout=0.05)
        s.close()


def test_times_are_wall_clock_receive_times() -> None:
    with Collector(port=0, batch=3, flush=0.05) as collector:
        (s,) = senders(1)
        before = time.time()
        for _ in range(3):
            s.sendto(b"t", collector.addr)
        batch = collector.recv_batch(timeout=5)
        after = time.time()
        assert all(before - 0.01 <= t <= after + 0.01 for t in batch.times)
        assert batch.times == sorted(batch.times)
        s.close()


def test_numpy_style_view_of_fixed_size_records_without_copy() -> None:
    record = struct.Struct(">If")
    with Collector(port=0, batch=100, flush=0.05) as collector:
        (s,) = senders(1)
        for i in range(100):
            s.sendto(record.pack(i, i / 4), collector.addr)
        batch = collector.recv_batch(timeout=5)
        view = memoryview(batch)
        assert view.readonly and view.format == "B" and view.nbytes == 100 * record.size
        # Fixed-size records: one cast, no copy (numpy.frombuffer reads the same buffer).
        words = view.cast("B", (100, record.size))
        assert words.shape == (100, 8)
        seqs = [int.from_bytes(bytes(row[:4]), "big") for row in words.tolist()]
        assert seqs == list(range(100))
        with pytest.raises(TypeError, match="read-only"):
            view[0:1] = b"x"
        assert batch[0] == record.pack(0, 0.0) and batch[-1] == record.pack(99, 99 / 4)
        with pytest.raises(IndexError):
            batch[100]
        np = pytest.importorskip("numpy")
        readings = np.frombuffer(batch, dtype=np.dtype([("seq", ">u4"), ("value", ">f4")]))
        assert readings["seq"].tolist() == list(range(100))
        assert not readings.flags.writeable
        s.close()


# -- loss accounting -------------------------------------------------------------------------


class Rfc3550Reference:
    """RFC 3550 A.1 ``update_seq`` with MAX_DROPOUT = M/2 and MAX_MISORDER = the window, and A.3's
    ``lost = expected - received`` counted over unique datagrams: the numbers seen within the
    window tell a duplicate from a late arrival. A confirmed very large jump starts a new run."""

    def __init__(self, bits: int, seq: int) -> None:
        self.mod = 1 << bits
        self.window = 64 if bits == 8 else 1024
        self.max_seq, self.ext_max, self.base, self.seen = seq, 0, 0, {0}
        self.bad_seq: Optional[int] = None
        self.unique, self.lost_before = 1, 0
        self.received, self.reordered, self.duplicates = 1, 0, 0

    def update(self, seq: int) -> None:
        self.received += 1
        udelta = (seq - self.max_seq) % self.mod
        if udelta == 0:
            self.duplicates += 1
        elif udelta < self.mod // 2:  # in order, perhaps after a gap
            self.ext_max += udelta
            self.max_seq = seq
            self.seen.add(self.ext_max)
            self.unique += 1
        elif self.mod - udelta < self.window:  # behind, within the window
            ext = self.ext_max - (self.mod - udelta)
            if ext in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(ext)
                self.base = min(self.base, ext)
                self.unique += 1
                self.reordered += 1
        elif seq == self.bad_seq:  # two in a row after a very large jump: a restart
            self.lost_before += self.run_lost()
            self.max_seq, self.ext_max, self.base, self.seen = seq, 0, -1, {0, -1}
            self.unique, self.bad_seq = 2, None
        else:
            self.bad_seq = (seq + 1) % self.mod

    def run_lost(self) -> int:
        return (self.ext_max - self.base + 1) - self.unique

    @property
    def counts(self) -> Dict[str, int]:
        lost = self.lost_before + self.run_lost()
        return {"received": self.received, "lost": lost, "reordered": self.reordered, "duplicates": self.duplicates}


def expected_counts(bits: int, numbers: List[int]) -> Dict[str, int]:
    ref = Rfc3550Reference(bits, numbers[0])
    for n in numbers[1:]:
        ref.update(n)
    return ref.counts


def deliver(numbers: List[int], size: int) -> Dict[str, int]:
    """Sends `numbers` in this order from one socket; returns the collector's counts for it."""
    fmt = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}[size]
    with Collector(port=0, batch=64, flush=0.01, seq=(2, size, "big")) as collector:
        (s,) = senders(1)
        for k, n in enumerate(numbers):
            s.sendto(b"hd" + struct.pack(fmt, n) + b"tail", collector.addr)
            if k % 200 == 199:
                wait_for(lambda: collector.stats["received"] >= k + 1 - 64, what="the collector")
        wait_for(lambda: collector.stats["received"] == len(numbers), what="every datagram")
        counts = collector.sources()[s.getsockname()]
        s.close()
        return counts


@pytest.mark.parametrize(
    "size,numbers,expected",
    [
        (2, [0, 1, 2, 5, 3, 3, 7], {"received": 7, "lost": 2, "reordered": 1, "duplicates": 1}),
        (1, list(range(250, 256)) + list(range(0, 10)), {"received": 16, "lost": 0, "reordered": 0, "duplicates": 0}),
        (2, [65534, 65535, 1, 0, 2], {"received": 5, "lost": 0, "reordered": 1, "duplicates": 0}),
        (4, [7, 8, 12, 9, 8, 10], {"received": 6, "lost": 1, "reordered": 2, "duplicates": 1}),
        (8, [2**64 - 1, 0, 3], {"received": 3, "lost": 2, "reordered": 0, "duplicates": 0}),
        # A sensor reboot: counting from 0 again after a very large jump is a new run.
        (4, list(range(10**6, 10**6 + 20)) + list(range(0, 20)), {"received": 40, "lost": 0, "reordered": 0, "duplicates": 0}),
    ],
)
def test_gaps_duplicates_reordering_and_wrap_around(size: int, numbers: List[int], expected: Dict[str, int]) -> None:
    assert deliver(numbers, size) == expected


@st.composite
def network(draw: st.DrawFn) -> Tuple[int, List[int]]:
    """A sender counting up (wrapping), then a network that loses, duplicates and reorders."""
    size = draw(st.sampled_from([1, 2, 4]))
    mod = 1 << (8 * size)
    start = draw(st.integers(0, mod - 1))
    count = draw(st.integers(2, 300))
    sent = [(start + i) % mod for i in range(count)]
    out: List[int] = []
    for n in sent:
        fate = draw(st.sampled_from(["ok"] * 6 + ["lost", "dup"]))
        if fate != "lost":
            out.append(n)
        if fate == "dup":
            out.append(n)
    # Local reordering: swap a few neighbours (a displacement far below the window).
    for _ in range(draw(st.integers(0, 10))):
        if len(out) > 2:
            i = draw(st.integers(0, len(out) - 2))
            out[i], out[i + 1] = out[i + 1], out[i]
    if not out:
        out = [start]
    return size, out


@settings(max_examples=int(os.environ.get("CHATUDP_FUZZ_EXAMPLES", "12")), deadline=None)
@given(network())
def test_loss_accounting_matches_the_rfc3550_reference(case: Tuple[int, List[int]]) -> None:
    size, numbers = case
    assert deliver(numbers, size) == expected_counts(8 * size, numbers)


def test_kernel_drops_are_counted_when_python_is_slow() -> None:
    sent = 20_000
    with Collector(port=0, batch=100, flush=0.01, rcvbuf=8192, queue_size=2, seq=(0, 4, "big")) as collector:
        (s,) = senders(1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        # Nobody takes the batches: the queue fills (dropped) and the socket buffer overflows.
        for i in range(sent):
            s.sendto(struct.pack(">I", i) + b"x" * 200, collector.addr)
        time.sleep(0.3)
        collector.stop()
        stats = collector.stats
        left = sum(len(b) for b in collector)
        assert stats["kernel_drops"] is not None and stats["kernel_drops"] > 0
        assert stats["dropped"] > 0
        assert stats["received"] + stats["kernel_drops"] == sent
        assert left + stats["dropped"] + stats["kernel_drops"] == sent
        lost = collector.sources()[s.getsockname()]["lost"]
        # What the kernel dropped between received datagrams is seen as lost by the sequence.
        assert lost <= stats["kernel_drops"]
        s.close()


# -- parsers -----------------------------------------------------------------------------------


def corpus() -> Dict[str, List[dict]]:
    return json.loads(CORPUS.read_text())


def as_json(metric: tuple) -> list:
    return [list(x.items()) if isinstance(x, dict) else x for x in metric]


@pytest.mark.parametrize("fmt", ["statsd", "influx"])
def test_parsers_on_a_corpus_of_real_world_lines(fmt: str) -> None:
    cases = corpus()[fmt]
    with Collector(port=0, batch=len(cases), flush=0.05, format=fmt) as collector:
        (s,) = senders(1)
        for case in cases:
            s.sendto(case["line"].encode(), collector.addr)
        batches = pull_all(collector, len(cases))
        metrics = [m for b in batches for m in b.metrics]
        expected = [m for case in cases for m in case["metrics"]]
        assert [json.loads(json.dumps(as_json(m))) for m in metrics] == [json.loads(json.dumps(m)) for m in expected]
        assert all(isinstance(m[-1 if fmt == "statsd" else 1], dict) for m in metrics)
        assert collector.stats["parse_errors"] == sum(case.get("errors", 0) for case in cases)
        s.close()


def test_metric_types_in_python() -> None:
    with Collector(port=0, batch=2, flush=0.05, format="influx") as collector:
        (s,) = senders(1)
        s.sendto(b'm,host=a f=1.5,i=-3i,u=7u,b=true,s="x" 1700000000000000000', collector.addr)
        s.sendto(b"m v=1", collector.addr)
        batch = collector.recv_batch(timeout=5)
        (m1, tags, fields, stamp), (_, tags2, _, stamp2) = batch.metrics
        assert (m1, tags, stamp, tags2, stamp2) == ("m", {"host": "a"}, 1700000000000000000, {}, None)
        assert fields == {"f": 1.5, "i": -3, "u": 7, "b": True, "s": "x"}
        assert [type(v) for v in fields.values()] == [float, int, int, bool, str]
        s.close()
    with Collector(port=0, batch=1, flush=0.05, format="statsd") as collector:
        (s,) = senders(1)
        s.sendto(b"users:alice|s|#env:prod", collector.addr)
        assert collector.recv_batch(timeout=5).metrics == [("users", "alice", "s", 1.0, {"env": "prod"})]
        s.close()


# -- bad input ---------------------------------------------------------------------------------


def test_short_empty_and_oversized_datagrams_are_delivered_and_counted() -> None:
    with Collector(port=0, batch=4, flush=0.05, bufsize=16, seq=(0, 4, "big")) as collector:
        (s,) = senders(1)
        for payload in [b"", b"ab", struct.pack(">I", 1) + b"x" * 40, struct.pack(">I", 2)]:
            s.sendto(payload, collector.addr)
        batch = collector.recv_batch(timeout=5)
        assert batch.payloads == [b"", b"ab", struct.pack(">I", 1) + b"x" * 12, struct.pack(">I", 2)]
        stats = collector.stats
        assert (stats["received"], stats["truncated"], stats["short"]) == (4, 1, 2)
        # Per source, `received` counts the datagrams that carried a number.
        assert collector.sources()[s.getsockname()] == {"received": 2, "lost": 0, "reordered": 0, "duplicates": 0}
        s.close()


@pytest.mark.parametrize("fmt", ["statsd", "influx"])
def test_garbage_under_a_format_is_counted_never_a_crash(fmt: str) -> None:
    rng = __import__("random").Random(13)
    garbage = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300))) for _ in range(300)]
    garbage += [b"\n" * 50, b"|" * 100, b":" * 100, b"#" * 10, b"=,\\ " * 30, b"\xff\xfe\x00", b'm s="\\']
    with Collector(port=0, batch=len(garbage), flush=0.05, format=fmt) as collector:
        (s,) = senders(1)
        for g in garbage:
            s.sendto(g, collector.addr)
        batches = pull_all(collector, len(garbage))
        assert sum(len(b) for b in batches) == len(garbage)
        for b in batches:
            b.metrics  # converting them must not fail either
        assert collector.stats["parse_errors"] > 200
        assert collector.running
        s.close()


def test_many_distinct_sources_keep_the_sources_table_bounded() -> None:
    count = int(os.environ.get("CHATUDP_COLLECTOR_SOURCES", "100000"))
    bound = 1000
    with Collector(port=0, batch=1000, flush=0.01, seq=(0, 4, "big"), max_sources=bound) as collector:
        # Distinct sources from 127.x addresses and ports: 200 sockets re-bound over and over
        # would be slow; instead many loopback addresses with one socket each, ports reused.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sent = 0
        hosts = 0
        distinct = set()
        while sent < count:
            hosts += 1
            host = f"127.{(hosts >> 16) & 255}.{(hosts >> 8) & 255}.{hosts & 255 or 1}"
            socks = []
            for _ in range(min(100, count - sent)):
                t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                t.bind((host, 0))
                t.sendto(b"\x00\x00\x00\x01", collector.addr)
                distinct.add(t.getsockname())
                socks.append(t)
                sent += 1
            for t in socks:
                t.close()
            if hosts % 10 == 0:
                wait_for(lambda: collector.stats["received"] >= sent - 2000, timeout=20, what="the collector")
        wait_for(lambda: collector.stats["received"] + (collector.stats["kernel_drops"] or 0) >= count, timeout=30, what="all")
        stats = collector.stats
        assert len(collector.sources()) <= bound
        assert len(distinct) > 10 * bound
        assert stats["evicted_sources"] >= len(distinct) - bound - (stats["kernel_drops"] or 0)
        s.close()


def test_argument_errors_name_the_parameter() -> None:
    cases = [
        (dict(batch=0), ValueError, "batch"),
        (dict(batch=1.5), TypeError, "batch"),
        (dict(flush=0), ValueError, "flush"),
        (dict(flush="1"), TypeError, "flush"),
        (dict(workers=0), ValueError, "workers"),
        (dict(seq=(0, 3, "big")), ValueError, "seq size"),
        (dict(seq=(0, 4, "middle")), ValueError, "byteorder"),
        (dict(seq=5), TypeError, "seq"),
        (dict(format="json"), ValueError, "format"),
        (dict(on_batch=5), TypeError, "on_batch"),
        (dict(bufsize=0), ValueError, "bufsize"),
        (dict(port=70000), ValueError, "port"),
        (dict(queue_size=0), ValueError, "queue_size"),
        (dict(max_sources=0), ValueError, "max_sources"),
    ]
    for kwargs, error, name in cases:
        with pytest.raises(error, match=name):
            Collector(**kwargs)  # type: ignore[arg-type]


# -- life cycle and consumers ------------------------------------------------------------------


def test_life_cycle() -> None:
    collector = Collector(port=0)
    assert not collector.running and collector.stats == {} and collector.sources() == {}
    with pytest.raises(RuntimeError, match="not started"):
        collector.recv_batch(timeout=0)
    collector.start()
    assert collector.running and collector.addr[1] != 0
    with pytest.raises(RuntimeError, match="already started"):
        collector.start()
    busy = Collector(port=collector.addr[1])
    with pytest.raises(OSError):
        busy.start()
    started = time.monotonic()
    collector.stop()
    collector.stop()
    assert time.monotonic() - started < 2
    assert not collector.running and collector.event.is_set()
    with pytest.raises(RuntimeError):
        collector.start()
    with pytest.raises(ClosedError):
        collector.recv_batch(timeout=1)
    # The port is free again.
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(collector.addr)
    probe.close()


def test_iteration_ends_at_stop_after_the_queued_batches() -> None:
    collector = Collector(port=0, batch=2, flush=10)
    collector.start()
    (s,) = senders(1)
    for i in range(5):
        s.sendto(b"%d" % i, collector.addr)
    wait_for(lambda: collector.stats["received"] == 5, what="5 datagrams")
    threading.Timer(0.2, collector.stop).start()
    seen = [p for batch in collector for p in batch.payloads]
    assert seen == [b"0", b"1", b"2", b"3", b"4"]  # the last one handed over at stop()
    s.close()


def test_on_batch_runs_on_the_dispatcher_and_pull_is_refused() -> None:
    got: List[Tuple[int, str]] = []
    done = threading.Event()

    def on_batch(batch: chatudp.Batch) -> None:
        got.append((len(batch), threading.current_thread().name))
        if sum(n for n, _ in got) == 30:
            done.set()

    with Collector(port=0, batch=10, flush=0.05, on_batch=on_batch) as collector:
        (s,) = senders(1)
        for i in range(30):
            s.sendto(b"x", collector.addr)
        assert done.wait(5)
        with pytest.raises(RuntimeError, match="on_batch"):
            collector.recv_batch(timeout=0)
        s.close()
    assert all(name != threading.current_thread().name for _, name in got)


def test_a_raising_on_batch_is_logged_and_collection_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def on_batch(batch: chatudp.Batch) -> None:
        calls.append(len(batch))
        raise ValueError("boom")

    with Collector(port=0, batch=1, flush=0.05, on_batch=on_batch) as collector:
        (s,) = senders(1)
        for _ in range(3):
            s.sendto(b"x", collector.addr)
        wait_for(lambda: len(calls) == 3, what="three calls")
        assert collector.running
        s.close()
    assert "boom" in caplog.text


def test_asyncio_consumers() -> None:
    async def main() -> List[bytes]:
        async with Collector(port=0, batch=3, flush=0.05) as collector:
            (s,) = senders(1)
            with pytest.raises(TimeoutError):
                await collector.arecv_batch(timeout=0.05)
            for i in range(6):
                s.sendto(b"%d" % i, collector.addr)
            first = await collector.arecv_batch(timeout=5)
            # A cancelled wait loses nothing.
            task = asyncio.ensure_future(collector.arecv_batch())
            await asyncio.sleep(0)
            second = await task
            seen = first.payloads + second.payloads
            s.sendto(b"6", collector.addr)
            asyncio.get_running_loop().call_later(0.2, collector.stop)
            async for batch in collector:
                seen += batch.payloads
            s.close()
            return seen

    assert asyncio.run(main()) == [b"%d" % i for i in range(7)]


def test_a_cancelled_async_wait_loses_no_batch() -> None:
    async def main() -> bytes:
        with Collector(port=0, batch=1, flush=0.05) as collector:
            waiter = asyncio.ensure_future(collector.arecv_batch())
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            (s,) = senders(1)
            s.sendto(b"kept", collector.addr)
            s.close()
            batch = await collector.arecv_batch(timeout=5)
            return bytes(batch.payloads[0])

    assert asyncio.run(main()) == b"kept"


def test_workers_share_one_port_and_deliver_everything() -> None:
    if not chatudp._core.REUSEPORT:
        pytest.skip("no SO_REUSEPORT here")
    with Collector(port=0, batch=50, flush=0.02, workers=3, seq=(0, 4, "big")) as collector:
        socks = senders(12)
        for i in range(200):
            for s in socks:
                s.sendto(struct.pack(">I", i), collector.addr)
            if i % 20 == 19:
                wait_for(lambda: collector.stats["received"] >= 12 * (i + 1) - 150, what="the collector")
        batches = pull_all(collector, 2400)
        per_source: Dict[tuple, List[int]] = {}
        for batch in batches:
            for payload, addr in zip(batch.payloads, batch.addrs):
                per_source.setdefault(addr, []).append(struct.unpack(">I", payload)[0])
        assert all(v == list(range(200)) for v in per_source.values()) and len(per_source) == 12
        assert all(v["lost"] == 0 for v in collector.sources().values())
        for s in socks:
            s.close()


def test_ipv6_sources() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    try:
        (s,) = senders(1, socket.AF_INET6, "::1")
    except OSError:
        pytest.skip("no ::1")
    with Collector("::1", port=0, batch=1, flush=0.05) as collector:
        s.sendto(b"six", collector.addr[:2])
        batch = collector.recv_batch(timeout=5)
        assert batch.payloads == [b"six"] and batch.addrs[0][:2] == s.getsockname()[:2]
        s.close()
