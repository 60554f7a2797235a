"""Runs one chat server in its own process for the benchmarks (loopback only).

    python bench/serve.py --impl chatudp|chatudp-cb|model [--interval 10] [--max-seconds 300]

Prints one JSON line ``{"event": "listening", "port": P, "pid": PID}`` once the server is bound
to 127.0.0.1, then reads commands on stdin, one a line:

    stats   prints a JSON line: server counters, clients table size, CPU time per thread
    memory  prints a JSON line: resident memory and the table size, computed without building
            a snapshot of the table (chatudp: joins - leaves; model: len(clients))
    stop    (or end of stdin) stops the server, prints the final stats line and exits

The process also stops by itself after ``--max-seconds``, so a forgotten server never lingers.
Each server runs in a process of its own so that its GIL and its CPU time are its own.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
IMPLS = ("model", "chatudp", "chatudp-cb")


def thread_cpu() -> list:
    """CPU seconds (user + system) of every thread of this process, with the kernel's name."""
    tick = os.sysconf("SC_CLK_TCK")
    out = []
    base = "/proc/self/task"
    for tid in sorted(os.listdir(base), key=int):
        try:
            with open(f"{base}/{tid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime = int(fields[11]), int(fields[12])
        out.append({"tid": int(tid), "name": name, "cpu_s": (utime + stime) / tick})
    return out


def rss_bytes() -> dict:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


def make_server(impl: str, interval: float, workers: int = 1):
    if impl == "model":
        sys.path.insert(0, os.path.join(ROOT, "tests"))
        from original_model import ChatUdpServer as ModelServer  # noqa: PLC0415

        return ModelServer("127.0.0.1", 0, interval), None
    from chatudp import ChatUdpServer  # noqa: PLC0415

    if impl == "chatudp":
        return ChatUdpServer("127.0.0.1", 0, interval, workers=workers), None
    counter = [0, 0]

    def on_message(data: bytes, addr) -> None:  # what a user callback might do, minimally
        counter[0] += 1
        counter[1] += len(data)

    return ChatUdpServer("127.0.0.1", 0, interval, on_message=on_message), counter


def table_size(impl: str, server) -> dict:
    if impl == "model":
        with server.lock:
            return {"clients": len(server.clients)}
    stats = server.stats
    return {"clients": stats["joins"] - stats["leaves"], "received": stats["received"]}


def snapshot(impl: str, server, counter, started: float) -> dict:
    cpu = os.times()
    out = {
        "event": "stats",
        "impl": impl,
        "uptime_s": time.monotonic() - started,
        "process_cpu_s": cpu.user + cpu.system,
        "threads": thread_cpu(),
        "memory": rss_bytes(),
    }
    if impl == "model":
        with server.lock:
            out["clients"] = len(server.clients)
    else:
        out["clients"] = len(server.clients)
        out["stats"] = server.stats
    if counter is not None:
        out["callback_calls"] = counter[0]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impl", choices=IMPLS, required=True)
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--max-seconds", type=float, default=300.0)
    ap.add_argument("--workers", type=int, default=1, help="socket threads of the chatudp server")
    args = ap.parse_args()

    server, counter = make_server(args.impl, args.interval, args.workers)
    server.start()
    started = time.monotonic()
    host, port = server.addr[0], server.addr[1]
    assert host == "127.0.0.1", host
    print(json.dumps({"event": "listening", "impl": args.impl, "port": port, "pid": os.getpid()}), flush=True)

    done = threading.Event()

    def watchdog() -> None:
        if not done.wait(args.max_seconds):
            print(json.dumps({"event": "watchdog", "after_s": args.max_seconds}), file=sys.stderr, flush=True)
            server.stop()
            os._exit(3)

    threading.Thread(target=watchdog, name="serve-watchdog", daemon=True).start()
    try:
        for line in sys.stdin:
            cmd = line.strip()
            if cmd == "stats":
                print(json.dumps(snapshot(args.impl, server, counter, started)), flush=True)
            elif cmd == "memory":
                out = {"event": "memory", "memory": rss_bytes()}
                out.update(table_size(args.impl, server))
                print(json.dumps(out), flush=True)
            elif cmd == "stop":
                break
    finally:
        final = snapshot(args.impl, server, counter, started)
        server.stop()
        final["event"] = "stopped"
        done.set()
        print(json.dumps(final), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
