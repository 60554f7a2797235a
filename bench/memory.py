"""Memory benchmark: resident bytes per client with 100,000 clients in the server's table.

    python bench/memory.py [--impls chatudp,model] [--clients 100000] [--out FILE]

The server runs alone in its own process (bench/serve.py, interval 3600 s so nobody expires);
this process registers the clients by sending one ``^hb^`` from each of 100,000 distinct source
addresses, and asks the server for its /proc/self/status figures before and after.

Distinct sources: a process cannot hold 100,000 sockets (RLIMIT_NOFILE) and 127.0.0.1 has only
64,511 usable ports, so the sources are (127.0.0.2, port) and (127.0.0.3, port) for ports
10000-59999: still the loopback interface, nothing leaves the machine. Sockets are opened
a batch at a time, each sends its heartbeat and is closed at once; the next batch is sent only
when the server has read the previous one (so no datagram is lost to a full receive buffer).

Before the baseline is taken the server relays 70,000 chat messages from one client: that
touches every slot of chatudp's event queue (65,536 by default) and warms allocator pools, so
the difference measures the clients table, not memory any first burst of traffic would touch.

Kernel memory: datagrams waiting in the server's receive buffer, and socket buffers in general,
are kernel memory and never part of a process's VmRSS/RssAnon; the figures are read once the
server has drained its queue. /proc/net/sockstat's UDP "mem" (pages, the whole machine) is
shown before and after for reference.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SOURCE_IPS = ("127.0.0.2", "127.0.0.3")
PORTS = range(10000, 60000)
BATCH = 256


def sockstat_udp_pages() -> int:
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("UDP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return -1


def sources(count: int):
    n = 0
    for ip in SOURCE_IPS:
        for port in PORTS:
            if n == count:
                return
            yield ip, port
            n += 1


def wait_table(server: _common.ServerProcess, impl: str, want_clients: int, want_received: int,
               timeout: float = 10.0) -> dict:
    """Waits until the server has read what was sent (chatudp: received counter; model: table)."""
    deadline = time.monotonic() + timeout
    while True:
        m = server.command("memory")
        done = m["clients"] >= want_clients if impl == "model" else m["received"] >= want_received
        if done or time.monotonic() > deadline:
            return m
        time.sleep(0.002)


def measure(impl: str, count: int) -> dict:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * BATCH + 64)), hard))
    server = _common.ServerProcess(impl, interval=3600.0, max_seconds=600.0)
    try:
        target = ("127.0.0.1", server.port)
        # Warm-up: 70,000 chat messages from one client (its Acks are left unread).
        warm = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        warm.bind(("127.0.0.1", 0))
        warm.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sent = 0
        for i in range(70_000):
            warm.sendto(b"warm-up", target)
            sent += 1
            if i % BATCH == BATCH - 1:
                wait_table(server, impl, 0, sent, timeout=5)
        warm.sendto(b"quit", target)
        sent += 1
        warm.close()
        wait_table(server, impl, 0, sent, timeout=10)
        time.sleep(1.0)  # let the dispatcher drain its queue
        udp_pages_before = sockstat_udp_pages()
        before = server.command("memory")

        started = time.monotonic()
        skipped = 0
        batch = []
        registered = 0
        for ip, port in sources(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                s.bind((ip, port))
            except OSError:  # that port is busy on this address: take the next one
                s.close()
                skipped += 1
                continue
            s.sendto(b"^hb^", target)
            sent += 1
            registered += 1
            batch.append(s)
            if len(batch) == BATCH:
                for b in batch:
                    b.close()
                batch.clear()
                wait_table(server, impl, before["clients"] + registered, sent)
        for b in batch:
            b.close()
        after = wait_table(server, impl, before["clients"] + registered, sent, timeout=30)
        register_seconds = time.monotonic() - started
        time.sleep(1.0)  # the dispatcher handles the join events
        after = server.command("memory")
        udp_pages_after = sockstat_udp_pages()
        final = server.stop()
    finally:
        server.stop()
    clients = after["clients"] - before["clients"]
    out = {
        "bench": "memory",
        "impl": impl,
        "clients_sent": registered,
        "clients_in_table": clients,
        "ports_skipped_busy": skipped,
        "register_seconds": register_seconds,
        "before": before["memory"],
        "after": after["memory"],
        "udp_kernel_pages_before": udp_pages_before,
        "udp_kernel_pages_after": udp_pages_after,
    }
    for key in ("VmRSS", "RssAnon"):
        delta = after["memory"][key] - before["memory"][key]
        out[f"{key}_delta"] = delta
        out[f"{key}_bytes_per_client"] = delta / clients if clients else None
    out["bytes_per_client"] = out["RssAnon_bytes_per_client"]
    if "stats" in final:
        out["server_stats"] = final["stats"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--impls", default="chatudp,model")
    ap.add_argument("--clients", type=int, default=100_000)
    ap.add_argument("--out", help="append the JSON lines to this file")
    args = ap.parse_args()
    if not 1 <= args.clients <= len(SOURCE_IPS) * len(PORTS):
        ap.error(f"--clients must be between 1 and {len(SOURCE_IPS) * len(PORTS)}")
    results = []
    for impl in args.impls.split(","):
        try:
            res = measure(impl, args.clients)
        except (OSError, TimeoutError, RuntimeError) as e:
            res = {"bench": "memory", "impl": impl, "error": repr(e)}
        results.append(res)
        print(json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            for r in results:
                f.write(json.dumps(r) + "\n")
    print(file=sys.stderr)
    print(f"{'impl':10} {'clients':>8} {'RssAnon +MB':>11} {'B/client':>9} {'VmRSS +MB':>10} {'B/client':>9}",
          file=sys.stderr)
    for r in results:
        if "error" in r:
            print(f"{r['impl']:10} error: {r['error']}", file=sys.stderr)
            continue
        print(f"{r['impl']:10} {r['clients_in_table']:8d} {r['RssAnon_delta'] / 1e6:11.2f} "
              f"{r['RssAnon_bytes_per_client']:9.1f} {r['VmRSS_delta'] / 1e6:10.2f} {r['VmRSS_bytes_per_client']:9.1f}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
