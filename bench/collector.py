"""Collector benchmarks, all in one run (loopback only, every process bounded and ended by PID):

1. ingest: the Rust blaster (``loadgen blast``, sendmmsg, 4 sources, as fast as it can) against
   (a) a bare Rust ``recvmmsg`` sink (``loadgen sink``), (b) ``chatudp.Collector`` with an
   ``on_batch`` that only counts, (c) the tutorial-style pure-Python ``recvfrom`` loop; each
   receiver in a process of its own. Received rate and share of what was sent, medians and
   ranges over ``--repeat`` runs, ratios to the sink.
2. busy: 100k datagrams/s for ``--seconds`` while the collecting process's main thread spins in
   pure Python; what was lost, what was delivered afterwards.
3. cost: Python time per datagram in ``on_batch`` with a numpy view of 16-byte records.

    python bench/collector.py [--repeat 3] [--count 1000000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent
LOADGEN_DIR = ROOT / "loadgen"
LOADGEN = LOADGEN_DIR / "target" / "release" / "loadgen"


def build_loadgen() -> None:
    if not LOADGEN.exists() or any(p.stat().st_mtime > LOADGEN.stat().st_mtime for p in (LOADGEN_DIR / "src").glob("*.rs")):
        subprocess.run(["cargo", "build", "--release", "--manifest-path", str(LOADGEN_DIR / "Cargo.toml")], check=True)


# -- receivers, each in a process of its own ---------------------------------------------------


def serve(kind: str, seconds: float, quiet: float) -> None:
    """Runs one receiver: prints ``{"port": P}``, then one JSON result when idle ``quiet`` s."""
    received = 0
    first = last = 0.0
    if kind == "collector":
        from chatudp import Collector

        lock = threading.Lock()

        def on_batch(batch: Any) -> None:
            nonlocal received, first, last
            now = time.monotonic()
            with lock:
                if not received:
                    first = now
                received += len(batch)
                last = now

        collector = Collector("127.0.0.1", 0, on_batch=on_batch, rcvbuf=4 << 20)
        collector.start()
        print(json.dumps({"port": collector.addr[1]}), flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not (received and time.monotonic() - last > quiet):
            time.sleep(0.05)
        collector.stop()
        stats = collector.stats
        extra = {"kernel_drops": stats["kernel_drops"], "dropped": stats["dropped"]}
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(0.05)
        print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                sock.recvfrom(2048)  # the tutorial's loop body, minus the print
            except socket.timeout:
                if received and time.monotonic() - last > quiet:
                    break
                continue
            last = time.monotonic()
            if not received:
                first = last
            received += 1
        sock.close()
        extra = {}
    span = last - first
    print(json.dumps({"received": received, "seconds": span, "rate": received / span if span > 0 else 0, **extra}), flush=True)


def start_receiver(kind: str, seconds: float) -> Tuple[subprocess.Popen, int]:
    if kind == "sink":
        cmd = [str(LOADGEN), "sink", "--seconds", str(seconds), "--quiet", "0.5"]
    else:
        cmd = [sys.executable, __file__, "--serve", kind, "--seconds", str(seconds)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    first = json.loads(proc.stdout.readline())
    return proc, int(first["port"])


def blast(port: int, count: int, rate: float, seconds: float, sources: int = 4) -> Dict[str, Any]:
    cmd = [str(LOADGEN), "blast", "--server", f"127.0.0.1:{port}", "--count", str(count), "--rate", str(rate),
           "--seconds", str(seconds), "--sources", str(sources), "--payload", "16"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30, check=True).stdout
    result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


def ingest_run(kind: str, count: int, seconds: float) -> Dict[str, Any]:
    proc, port = start_receiver(kind, seconds + 10)
    try:
        sent = blast(port, count, 0, seconds)
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    result["sent"] = sent["sent"]
    result["share"] = result["received"] / max(1, sent["sent"])
    return result


def spread(values: List[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}–{max(values):,.0f})"


def bench_ingest(repeat: int, count: int, seconds: float) -> List[Dict[str, Any]]:
    kinds = ["sink", "collector", "python"]
    runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in kinds}
    for i in range(repeat):
        for kind in kinds:  # interleaved, so a change of load hits every receiver alike
            print(f"ingest {i + 1}/{repeat}: {kind}", file=sys.stderr, flush=True)
            runs[kind].append(ingest_run(kind, count, seconds))
    sink = statistics.median(r["rate"] for r in runs["sink"])
    print("\n### Ingest: a sendmmsg blaster (4 sources, 16-byte datagrams) against each receiver\n")
    print("| receiver | received/s, median (range) | share of sent, median | ratio to the sink |")
    print("|---|---|---|---|")
    for kind in kinds:
        rates = [r["rate"] for r in runs[kind]]
        share = statistics.median(r["share"] for r in runs[kind])
        print(f"| {kind} | {spread(rates)} | {share:.1%} | {statistics.median(rates) / sink:.2f}x |")
    return [dict(r, kind=k) for k in kinds for r in runs[k]]


# -- busy main thread and per-datagram cost (in this process) ----------------------------------


def bench_busy(rate: float, seconds: float) -> Dict[str, Any]:
    from chatudp import Collector

    got = 0

    def on_batch(batch: Any) -> None:
        nonlocal got
        got += len(batch)

    with Collector("127.0.0.1", 0, on_batch=on_batch, seq=(0, 4, "big")) as collector:
        result: Dict[str, Any] = {}

        def send() -> None:
            result.update(blast(collector.addr[1], int(rate * seconds), rate, seconds + 20))

        sender = threading.Thread(target=send)
        sender.start()
        spins = 0
        while sender.is_alive():  # the main thread busy in pure Python, never sleeping
            for _ in range(10_000):
                spins += 1
        sent = result["sent"]
        deadline = time.monotonic() + 10
        while got + collector.stats["kernel_drops"] + collector.stats["dropped"] < sent and time.monotonic() < deadline:
            time.sleep(0.01)
        stats = collector.stats
        lost = sum(s["lost"] for s in collector.sources().values())
    out = {"sent": sent, "offered_rate": result["rate"], "delivered": got, "kernel_drops": stats["kernel_drops"],
           "dropped": stats["dropped"], "lost_by_seq": lost, "loss": (sent - got) / max(1, sent)}
    print("\n### Busy main thread: 100k datagrams/s while Python spins\n")
    print("| sent | offered/s | delivered | kernel drops | dropped | lost (seq) | loss |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {sent:,} | {result['rate']:,.0f} | {got:,} | {stats['kernel_drops']} | {stats['dropped']} | {lost} | {out['loss']:.4%} |")
    return out


def bench_cost(repeat: int, count: int) -> Dict[str, Any]:
    import numpy as np

    from chatudp import Collector

    record = np.dtype([("seq", ">u4"), ("sensor", ">u2"), ("pad", "V6"), ("value", ">f4")])
    per_run = []
    for _ in range(repeat):
        spent = 0.0
        got = 0
        total = np.zeros(1)

        def on_batch(batch: Any) -> None:
            nonlocal spent, got
            t0 = time.perf_counter()
            readings = np.frombuffer(batch, dtype=record)
            total[0] += readings["value"].sum()
            got += len(readings)
            spent += time.perf_counter() - t0

        with Collector("127.0.0.1", 0, on_batch=on_batch, batch=1000) as collector:
            sent = blast(collector.addr[1], count, 200_000, 60)["sent"]
            deadline = time.monotonic() + 10
            while got + collector.stats["kernel_drops"] < sent and time.monotonic() < deadline:
                time.sleep(0.01)
        per_run.append(spent / max(1, got) * 1e6)
    out = {"us_per_datagram": per_run}
    print("\n### Python cost per datagram: on_batch with a numpy view of 16-byte records (batch=1000)\n")
    print(f"median {statistics.median(per_run):.4f} µs (range {min(per_run):.4f}–{max(per_run):.4f}) over {repeat} runs")
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--count", type=int, default=1_000_000, help="datagrams per ingest run (default 1e6)")
    parser.add_argument("--seconds", type=float, default=3.0, help="longest a blast lasts / busy run length")
    parser.add_argument("--serve", choices=["collector", "python"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.seconds, 0.5)
        return 0
    build_loadgen()
    results = {
        "ingest": bench_ingest(args.repeat, args.count, args.seconds),
        "busy": bench_busy(100_000, args.seconds),
        "cost": bench_cost(args.repeat, 200_000),
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
    }
    out = ROOT / "results" / f"collector-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"\nraw results: {out.relative_to(ROOT.parent)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
