"""``chatudp collect`` and ``chatudp sensor``: the sensor-collection scenario from two commands.

``sensor`` simulates a fleet of sensors sending numbered readings (a 4-byte big-endian sequence
number at offset 0, then the sensor number and a reading); ``collect`` receives them with a
``Collector``, shows a live status line and a summary, and can write what it got to ``.ndjson``
or SQLite.
"""

from __future__ import annotations

import argparse
import json
import math
import socket
import sqlite3
import struct
import sys
import time
from typing import IO, Any, Callable, Dict, List, Optional, Tuple

from ..collector import Collector
from ._args import add_program, open_endpoint, resolve
from ._args import started as started_endpoint

READING = struct.Struct(">IHf")  # sequence, sensor number, value
STATUS_EVERY = 1.0


def _seq_spec(text: str) -> Tuple[int, int, str]:
    try:
        offset, size, order = text.split(":")
        spec = (int(offset), int(size), {"big": "big", "be": "big", "little": "little", "le": "little"}[order])
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected OFFSET:SIZE:ORDER such as 0:4:big, not {text!r}") from None
    if spec[1] not in (1, 2, 4, 8) or spec[0] < 0:
        raise argparse.ArgumentTypeError(f"SIZE must be 1, 2, 4 or 8 and OFFSET >= 0, not {text!r}")
    return spec


def _positive(kind: Callable[[str], Any], what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be a number, not {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{what} must be > 0, not {text!r}")
        return value

    return parse


def _out_path(text: str) -> str:
    if not text.endswith((".ndjson", ".sqlite", ".db")):
        raise argparse.ArgumentTypeError(f"must end in .ndjson, .sqlite or .db, not {text!r}")
    return text


# -- output files ------------------------------------------------------------------------------


class _Writer:
    """Rows of one batch at a time, to ``.ndjson`` or SQLite."""

    def __init__(self, path: str, fmt: Optional[str]) -> None:
        self.fmt = fmt
        self.rows = 0
        self.sqlite: Optional[sqlite3.Connection] = None
        self.text: Optional[IO[str]] = None
        if path.endswith((".sqlite", ".db")):
            self.sqlite = sqlite3.connect(path)
            columns = {
                None: "time REAL, ip TEXT, port INTEGER, payload BLOB",
                "statsd": "time REAL, ip TEXT, port INTEGER, name TEXT, value, type TEXT, sample_rate REAL, tags TEXT",
                "influx": "time REAL, ip TEXT, port INTEGER, measurement TEXT, tags TEXT, fields TEXT, timestamp INTEGER",
            }[fmt]
            self.table = {None: "datagrams", "statsd": "statsd", "influx": "influx"}[fmt]
            self.sqlite.execute(f"CREATE TABLE IF NOT EXISTS {self.table} ({columns})")
            self.marks = ",".join("?" * (columns.count(",") + 1))
        elif path.endswith(".ndjson"):
            self.text = open(path, "a", encoding="utf-8")
        else:
            raise ValueError(f"--out must end in .ndjson, .sqlite or .db, not {path!r}")

    def _records(self, batch: Any) -> List[Dict[str, Any]]:
        addrs, times = batch.addrs, batch.times
        if self.fmt is None:
            return [
                {"time": t, "ip": a[0], "port": a[1], "payload": p} for t, a, p in zip(times, addrs, batch.payloads)
            ]
        # Metrics do not say which datagram they came from: stamp them with the batch's first.
        when, addr = times[0], addrs[0]
        keys: Tuple[str, ...]
        if self.fmt == "statsd":
            keys = ("name", "value", "type", "sample_rate", "tags")
        else:
            keys = ("measurement", "tags", "fields", "timestamp")
        return [{"time": when, "ip": addr[0], "port": addr[1], **dict(zip(keys, m))} for m in batch.metrics]

    def write(self, batch: Any) -> None:
        records = self._records(batch)
        if self.text is not None:
            for r in records:
                if isinstance(r.get("payload"), bytes):
                    r["payload"] = r["payload"].decode("utf-8", "backslashreplace")
                self.text.write(json.dumps(r) + "\n")
        elif self.sqlite is not None:
            rows = [tuple(json.dumps(v) if isinstance(v, dict) else v for v in r.values()) for r in records]
            with self.sqlite:  # one transaction per batch
                self.sqlite.executemany(f"INSERT INTO {self.table} VALUES ({self.marks})", rows)
        self.rows += len(records)

    def close(self) -> None:
        if self.text is not None:
            self.text.close()
        if self.sqlite is not None:
            self.sqlite.close()


# -- collect -----------------------------------------------------------------------------------


def _totals(collector: Collector) -> Tuple[int, int]:
    sources = collector.sources().values()
    return len(sources), sum(s["lost"] for s in sources)


def _status(collector: Collector, rate: float) -> str:
    stats = collector.stats
    sources, lost = _totals(collector)
    kernel = stats["kernel_drops"]
    return (
        f"{rate:10.0f}/s  received {stats['received']}  lost {lost}  kernel drops "
        f"{'?' if kernel is None else kernel}  dropped {stats['dropped']}  sources {sources}"
    )


def cmd_collect(args: argparse.Namespace) -> int:
    writer = _Writer(args.out, args.format) if args.out else None
    collector = open_endpoint("bind", args.ip, args.port, lambda: started_endpoint(Collector(
        args.ip, args.port, batch=args.batch, flush=args.flush, workers=args.workers, seq=args.seq, format=args.format
    )))
    tty = sys.stderr.isatty()
    print(f"collecting on {collector.addr[0]}:{collector.addr[1]} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    started = last_shown = time.monotonic()
    last_received = 0
    deadline = None if args.seconds is None else started + args.seconds
    try:
        while deadline is None or time.monotonic() < deadline:
            wait = STATUS_EVERY if deadline is None else min(STATUS_EVERY, max(0.0, deadline - time.monotonic()))
            try:
                batch = collector.recv_batch(timeout=min(wait, 0.25))
                if writer is not None:
                    writer.write(batch)
            except TimeoutError:
                pass
            now = time.monotonic()
            if now - last_shown >= STATUS_EVERY:
                received = collector.stats["received"]
                line = _status(collector, (received - last_received) / (now - last_shown))
                print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
                last_shown, last_received = now, received
    except KeyboardInterrupt:
        pass
    finally:
        collector.stop()
        for batch in collector:  # what was handed over at stop()
            if writer is not None:
                writer.write(batch)
        if writer is not None:
            writer.close()
    elapsed = time.monotonic() - started
    stats = collector.stats
    sources, lost = _totals(collector)
    if tty:
        print(file=sys.stderr)
    summary = {
        "seconds": round(elapsed, 3),
        "received": stats["received"],
        "rate": round(stats["received"] / elapsed) if elapsed > 0 else 0,
        "lost": lost,
        "kernel_drops": stats["kernel_drops"],
        "dropped": stats["dropped"],
        "truncated": stats["truncated"],
        "parse_errors": stats["parse_errors"],
        "sources": sources,
    }
    if writer is not None:
        summary["rows_written"] = writer.rows
    print("summary: " + json.dumps(summary), flush=True)
    return 0


# -- sensor ------------------------------------------------------------------------------------


def cmd_sensor(args: argparse.Namespace) -> int:
    if args.size < 4:
        print("chatudp sensor: --size must be at least 4 bytes (the sequence number)", file=sys.stderr)
        return 2
    target = resolve("send to", args.ip, args.port)
    family = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    socks = []
    for _ in range(args.sources):
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        socks.append(s)
    padding = b"\0" * (args.size - READING.size) if args.size > READING.size else b""
    sent = [0] * args.sources
    started = time.monotonic()
    planned = int(args.seconds * args.rate)
    total = 0
    try:
        while total < planned:
            due = min(int((time.monotonic() - started) * args.rate) + 1, planned) - total
            for _ in range(max(0, due)):
                n = total % args.sources
                reading = READING.pack(sent[n] & 0xFFFFFFFF, n & 0xFFFF, math.sin(sent[n] / 100.0))
                socks[n].sendto((reading + padding)[: args.size], target)
                sent[n] += 1
                total += 1
            time.sleep(0.001)
    except KeyboardInterrupt:
        pass
    finally:
        for s in socks:
            s.close()
    elapsed = time.monotonic() - started
    print("summary: " + json.dumps({"seconds": round(elapsed, 3), "sent": total, "sources": args.sources}), flush=True)
    return 0


def register(sub: Any) -> None:
    """Adds the ``collect`` and ``sensor`` subcommands to the CLI's subparsers."""
    p = add_program(
        sub, "collect", "receive sensor readings or metrics in batches and count every loss",
        "A status line every second (rate, received, lost, kernel drops) on stderr, a JSON summary at the end "
        "on stdout. Ctrl-C stops.", cmd_collect, "127.0.0.1", 9001, "server",
    )
    p.add_argument("--format", choices=["statsd", "influx"], help="parse the lines as statsd or InfluxDB line protocol")
    p.add_argument("--seq", type=_seq_spec, metavar="OFFSET:SIZE:ORDER", help="a sequence number per datagram, e.g. 0:4:big")
    p.add_argument("--seconds", type=_positive(float, "--seconds"), help="stop after this many seconds")
    p.add_argument("--out", type=_out_path, metavar="FILE", help="write what is received to FILE.ndjson or FILE.sqlite / FILE.db")
    p.add_argument("--batch", type=_positive(int, "--batch"), default=1000, help="datagrams per batch (default 1000)")
    p.add_argument("--flush", type=_positive(float, "--flush"), default=0.05, help="seconds a batch may wait (default 0.05)")
    p.add_argument("--workers", type=_positive(int, "--workers"), default=1, help="socket threads (default 1)")

    p = add_program(
        sub, "sensor", "simulate a fleet of sensors sending numbered readings",
        "Send --rate readings per second in all, spread over --sources sockets, for --seconds: each a 4-byte "
        "big-endian sequence number, the sensor number and a reading (--size bytes).", cmd_sensor,
        "127.0.0.1", 9001, "client",
    )
    p.add_argument("--rate", type=_positive(float, "--rate"), default=1000.0, help="readings per second, all sensors (default 1000)")
    p.add_argument("--sources", type=_positive(int, "--sources"), default=4, help="sensors, one socket each (default 4)")
    p.add_argument("--seconds", type=_positive(float, "--seconds"), default=5.0, help="how long (default 5)")
    p.add_argument("--size", type=_positive(int, "--size"), default=16, help="bytes per reading, at least 4 (default 16)")

