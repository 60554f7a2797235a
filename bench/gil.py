"""GIL benchmark: does a server running inside a busy Python program keep relaying, and does
the program keep its speed?

    python bench/gil.py [--impls model,chatudp] [--rates 1000,10000] [--seconds 1] [--cycles 6] [--out FILE]

For each implementation, in a fresh interpreter (a child process of this script):
the server runs in-process on 127.0.0.1; the main thread runs a pure-Python CPU loop and counts
its iterations per second, in phases of --seconds: idle (server started, no traffic), loaded
(the load generator, a separate process, offers R messages/s in open loop: 1 sender,
1 receiver), idle, loaded, ... idle. Reported: the loop's loaded speed as a fraction of the idle
phases around it (median over --cycles; corrected for run-queue wait, see Speed), the relay's loss (messages whose Ack never came back)
and the Acks per second that came back while the loop ran. No CPU pinning. One JSON line per implementation on stdout (and in --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402


def _schedstat() -> tuple:
    """(seconds on a CPU, seconds runnable but waiting for a CPU) of the calling thread."""
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        run_ns, wait_ns = f.read().split()[:2]
    return int(run_ns) / 1e9, int(wait_ns) / 1e9


class Speed:
    """What one phase of the CPU loop achieved.

    ``wall``: iterations per second of wall time (what the program sees).
    ``corrected``: iterations per second of wall time minus the time the thread was runnable
    but had no CPU (run-queue wait, from /proc/self/task/TID/schedstat). On a shared machine
    other processes' load shows up as run-queue wait; time lost to the GIL does not (a thread
    waiting for the GIL sleeps on a futex), so this keeps the GIL's effect and removes most of
    the noise from other work on the machine.
    ``sleep_share``: fraction of the phase the thread was neither running nor runnable: for a
    thread that never blocks, that is time spent waiting for the GIL.
    ``per_cpu_second``: iterations per second the thread actually ran. It moves with the
    hardware (on a VM, what the other vCPU and the host do), not with the GIL.
    """

    def __init__(self, iterations: int, wall: float, run: float, queued: float):
        self.iterations = iterations
        self.seconds = wall
        self.wall = iterations / wall
        self.per_cpu_second = iterations / max(run, 1e-9)
        self.corrected = iterations / max(wall - queued, 1e-9)
        self.run_share = run / wall
        self.queue_share = queued / wall
        self.sleep_share = max(0.0, 1.0 - (run + queued) / wall)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("wall", "corrected", "per_cpu_second", "run_share", "queue_share",
                                              "sleep_share")}


def spin(seconds: float) -> Speed:
    """Pure-Python CPU work for `seconds`."""
    n = 0
    run0, queued0 = _schedstat()
    start = time.perf_counter()
    end = start + seconds
    while True:
        x = 0
        for i in range(2000):
            x += i * i
        n += 2000
        now = time.perf_counter()
        if now >= end:
            break
    run1, queued1 = _schedstat()
    return Speed(n, now - start, run1 - run0, queued1 - queued0)


def make_server(impl: str):
    if impl == "model":
        sys.path.insert(0, os.path.join(_common.ROOT, "tests"))
        from original_model import ChatUdpServer  # noqa: PLC0415
    else:
        from chatudp import ChatUdpServer  # noqa: PLC0415
    return ChatUdpServer("127.0.0.1", 0, 10)


def loaded_phase(port: int, impl: str, seconds: float, rate: float) -> tuple:
    """One loaded phase: the load generator offers `rate` messages/s while the loop spins."""
    loadgen = subprocess.Popen(
        [_common.build_loadgen(), "open", "--server", f"127.0.0.1:{port}", "--rate", str(rate),
         "--seconds", str(seconds), "--warmup", "0", "--receivers", "1", "--senders", "1",
         "--ready", "--label", f"gil-{impl}"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        # Blocking on the pipe releases the GIL, so even the model registers its clients here.
        _common.read_json_line(loadgen, 30, "ready")
        speed = spin(seconds)
        result = _common.read_json_line(loadgen, seconds + 15)
        loadgen.wait(timeout=10)
    finally:
        _common.kill_pid(loadgen)
    return speed, result


def child(impl: str, seconds: float, rate: float, cycles: int) -> dict:
    server = make_server(impl)
    server.start()
    idles, loads, results = [], [], []
    try:
        port = server.addr[1]
        spin(0.3)  # warm up
        # idle, loaded, idle, loaded, ..., idle: each loaded phase is compared with the idle
        # phases on both sides of it, so a change in the machine's background load between
        # phases cancels out as far as it can.
        idles.append(spin(seconds))
        for _ in range(cycles):
            speed, result = loaded_phase(port, impl, seconds, rate)
            loads.append(speed)
            results.append(result)
            idles.append(spin(seconds))
    finally:
        server.stop()
    def ratios(attr: str) -> list:
        return [
            getattr(loads[i], attr) / ((getattr(idles[i], attr) + getattr(idles[i + 1], attr)) / 2)
            for i in range(cycles)
        ]

    sent = sum(r.get("total_sent", 0) for r in results)
    lost = sum(r.get("lost_messages", 0) for r in results)
    out = {
        "bench": "gil",
        "impl": impl,
        "offered_rate": rate,
        "seconds_per_phase": seconds,
        "cycles": cycles,
        "idle_iter_per_s": statistics.median(p.wall for p in idles),
        "loaded_iter_per_s": statistics.median(p.wall for p in loads),
        "loaded_vs_idle": statistics.median(ratios("corrected")),
        "loaded_vs_idle_each": ratios("corrected"),
        "loaded_vs_idle_wall": statistics.median(ratios("wall")),
        "loaded_vs_idle_wall_each": ratios("wall"),
        "per_cpu_second_loaded_vs_idle": statistics.median(ratios("per_cpu_second")),
        "main_thread_sleep_share_loaded": statistics.median(p.sleep_share for p in loads),
        "main_thread_sleep_share_idle": statistics.median(p.sleep_share for p in idles),
        "idle_phases": [p.as_dict() for p in idles],
        "loaded_phases": [p.as_dict() for p in loads],
        "loss_pct": 100.0 * lost / sent if sent else None,
        "loss_pct_each": [r.get("loss_pct") for r in results],
        "acks_back_per_s_while_loaded": statistics.median(r.get("messages_per_s", 0) for r in results),
        "bad_acks": sum(r.get("bad_acks", 0) for r in results),
        "loadgen": results,
        "loadavg": _common.loadavg(),
    }
    if impl != "model":
        out["server_stats"] = server.stats
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impls", default="model,chatudp")
    ap.add_argument("--seconds", type=float, default=1.0, help="length of each phase")
    ap.add_argument("--cycles", type=int, default=6, help="loaded phases, each between two idle ones")
    ap.add_argument("--rates", default="1000,10000",
                    help="offered loads, messages/s (the target is set at 1000; 10000 shows the trend)")
    ap.add_argument("--rate", type=float, default=1000.0, help=argparse.SUPPRESS)
    ap.add_argument("--out", help="append the JSON lines to this file")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness increment for this benchmark and its children (negative needs root): "
                         "keeps other work on a shared machine from dominating the figures")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.nice:
        os.nice(args.nice)
    if args.child:
        print(json.dumps(child(args.child, args.seconds, args.rate, args.cycles)), flush=True)
        return 0
    _common.build_loadgen()
    results = []
    for rate in [float(r) for r in args.rates.split(",")]:
        for impl in args.impls.split(","):
            proc = subprocess.Popen(
                [sys.executable, os.path.abspath(__file__), "--child", impl, "--seconds", str(args.seconds),
                 "--rate", str(rate), "--cycles", str(args.cycles)],
                stdout=subprocess.PIPE, text=True, cwd=_common.ROOT,
            )
            try:
                res = _common.read_json_line(proc, args.seconds * (2 * args.cycles + 1) * 2 + 60)
                proc.wait(timeout=30)
            except (TimeoutError, RuntimeError) as e:
                res = {"bench": "gil", "impl": impl, "offered_rate": rate, "error": str(e)}
            finally:
                _common.kill_pid(proc)
            results.append(res)
            print(json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    print(file=sys.stderr)
    print(f"{'impl':10} {'rate':>6} {'idle it/s':>12} {'loaded it/s':>12} {'loaded/idle':>11} {'(wall)':>7} "
          f"{'GIL wait':>8} {'loss %':>8} {'Acks/s back':>11}", file=sys.stderr)
    for r in results:
        if "error" in r:
            print(f"{r['impl']:10} error: {r['error']}", file=sys.stderr)
            continue
        print(f"{r['impl']:10} {r['offered_rate']:6.0f} {r['idle_iter_per_s']:12.0f} {r['loaded_iter_per_s']:12.0f} "
              f"{r['loaded_vs_idle']:11.3f} {r['loaded_vs_idle_wall']:7.3f} "
              f"{r['main_thread_sleep_share_loaded']:8.3f} {r['loss_pct']:8.2f} {r['acks_back_per_s_while_loaded']:11.0f}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
