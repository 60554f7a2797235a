"""`workers=1, 2, 4` side by side: many senders, many receivers, one port.

    python bench/workers.py [--repeat 3] [--seconds 2] [--senders 8] [--receivers 16]

Each run starts a chatudp server in its own process (bench/serve.py --workers N) and the Rust
load generator in closed loop (`--senders` sockets with 16 messages in flight each, every
socket a client, so each message is Acked to senders + receivers). Printed: deliveries/s
median [range] per worker count, the ratio to workers=1 of the same repeat, and the server's
CPU (all its socket threads) per second of run. Loopback only; every process is bounded by
--seconds and ended by its PID.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402
from run import med, relay_thread_cpu, spread  # noqa: E402

WINDOW = 16


def one(workers: int, args: argparse.Namespace) -> dict:
    server = _common.ServerProcess("chatudp", interval=10, max_seconds=args.seconds + 120, workers=workers)
    try:
        before = server.command("stats")
        foreign = _common.ForeignLoad([server.proc.pid])
        result = _common.run_loadgen(
            ["closed", "--server", server.addr, "--receivers", str(args.receivers), "--senders", str(args.senders),
             "--window", str(WINDOW), "--payload", "32", "--seconds", str(args.seconds), "--interval", "10",
             "--label", f"workers={workers}"], args.seconds + 30)
        machine = foreign.done()
        after = server.command("stats")
        cpu = relay_thread_cpu(after) - relay_thread_cpu(before)
    finally:
        server.stop()
    return {"workers": workers, "loadgen": result, "server_cpu_s": cpu, "foreign_cpus": machine["foreign_cpus"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--senders", type=int, default=8)
    ap.add_argument("--receivers", type=int, default=16)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--out", help="raw JSON lines (default bench/results/workers-TIMESTAMP.jsonl)")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    out_path = args.out or os.path.join(_common.HERE, "results", time.strftime("workers-%Y%m%d-%H%M%S.jsonl"))
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    rates: dict = {w: [] for w in counts}
    cpus: dict = {w: [] for w in counts}
    ratios: dict = {w: [] for w in counts}
    with open(out_path, "w") as out:
        for repeat in range(args.repeat):
            base = None
            for workers in counts:  # interleaved, so a noisy moment hits every count alike
                rec = one(workers, args)
                rec["repeat"] = repeat
                out.write(json.dumps(rec) + "\n")
                r = rec["loadgen"]
                if "error" in r:
                    print(f"  workers={workers}: ERROR {r['error']}", file=sys.stderr)
                    continue
                rate = r["deliveries_per_s"]
                base = rate if workers == counts[0] else base
                rates[workers].append(rate)
                cpus[workers].append(rec["server_cpu_s"] / args.seconds)
                if base:
                    ratios[workers].append(rate / base)
                print(f"  [{repeat + 1}/{args.repeat}] workers={workers}: {rate / 1000:.0f}k deliveries/s, "
                      f"server {rec['server_cpu_s'] / args.seconds:.2f} CPUs, bad {r.get('bad_acks')}, "
                      f"other processes {rec['foreign_cpus']:.2f} CPUs", file=sys.stderr, flush=True)
    cores = os.cpu_count()
    print(f"\n{args.senders} senders x {WINDOW} in flight, {args.receivers} receivers, 32-byte messages, "
          f"{args.repeat} x {args.seconds} s, {cores} cores (load generator on the same machine)\n")
    print("| workers | deliveries/s median [range] | ratio to workers=1 | server CPUs |")
    print("|---|---|---|---|")
    for w in counts:
        print(f"| {w} | {spread(rates[w], lambda v: f'{v / 1000:.0f}k')} | "
              f"{spread(ratios[w], lambda v: f'{v:.2f}x')} | {spread(cpus[w], lambda v: f'{v:.2f}')} |")
    if rates[counts[0]]:
        print(f"\nraw: {out_path}; median of medians {statistics.median(med(v) or 0 for v in rates.values()):.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
