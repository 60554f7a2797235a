"""Federation benchmark: the same open-loop chat load through one relay, and across two and three
relays joined through a real broker (nats-server, redis-server), side by side in one run.

One sender client on the first relay sends `rate` messages per second for `--seconds`; four
receiver clients listen, on the same relay (1 relay), on the second relay (2 relays), or two on
the second and two on the third (3 relays). Every message carries its sequence number and send
time, so each Ack received gives a latency, and the missing ones give the loss. Figures are
medians over `--repeat` runs, with the range; the ratio is taken to the single relay within the
same repeat. Relays run in this process (their socket and bus threads are Rust threads that never
take the GIL); the brokers are processes of their own, ended by PID. Everything stays on 127.0.0.1.

    python bench/federation.py                      # full run, both brokers, ~5 min
    python bench/federation.py --rates 4000 --repeat 3 --backends nats
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

from brokers import Broker, NatsServer, RedisServer  # noqa: E402

from chatudp import ChatUdpServer  # noqa: E402

LOCALHOST = "127.0.0.1"
RECEIVERS = 4
DRAIN = 0.5  # seconds the receivers keep reading after the last send


def relays_for(topology: int, broker: Optional[Broker]) -> List[ChatUdpServer]:
    options: Dict[str, Any] = {} if broker is None else {"bus": broker.url, "room": "bench"}
    relays = [ChatUdpServer(LOCALHOST, 0, 60, **options) for _ in range(topology)]
    for relay in relays:
        relay.start()
    if topology > 1:
        deadline = time.monotonic() + 15
        while not all(len(r.peers) == topology - 1 for r in relays):
            if time.monotonic() > deadline:
                raise RuntimeError("the relays did not meet on the bus")
            time.sleep(0.02)
    return relays


def client_socket(relay: ChatUdpServer) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((LOCALHOST, 0))
    sock.sendto(b"^hb^", relay.addr)
    return sock


def run_once(topology: int, broker: Optional[Broker], rate: int, seconds: float) -> Dict[str, Any]:
    relays = relays_for(topology, broker)
    try:
        homes = [relays[0]] * RECEIVERS if topology == 1 else [relays[1 + i % (topology - 1)] for i in range(RECEIVERS)]
        receivers = [client_socket(home) for home in homes]
        sender = client_socket(relays[0])
        deadline = time.monotonic() + 5
        while sum(len(r.clients) for r in relays) < RECEIVERS + 1:
            if time.monotonic() > deadline:
                raise RuntimeError("the clients did not join")
            time.sleep(0.01)
        latencies: List[int] = []
        received = [0]
        done = threading.Event()

        def receive() -> None:
            selector = selectors.DefaultSelector()
            for sock in receivers:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ)
            while not done.is_set():
                for key, _ in selector.select(0.05):
                    sock = key.fileobj
                    while True:
                        try:
                            data = sock.recv(2048)  # type: ignore[union-attr]
                        except BlockingIOError:
                            break
                        now = time.perf_counter_ns()
                        body = data[6 : data.index(b"'", 6)].split()
                        latencies.append(now - int(body[1]))
                        received[0] += 1

        thread = threading.Thread(target=receive, name="bench-receivers")
        thread.start()
        before = [dict(r.stats) for r in relays]
        sent = 0
        started = time.perf_counter()
        tick = 0.001
        while True:
            elapsed = time.perf_counter() - started
            if elapsed >= seconds:
                break
            due = int(elapsed * rate) + 1
            while sent < due:
                sender.sendto(b"%d %d" % (sent, time.perf_counter_ns()), relays[0].addr)
                sent += 1
            time.sleep(tick)
        send_time = time.perf_counter() - started
        time.sleep(DRAIN)
        done.set()
        thread.join()
        expected = sent * RECEIVERS
        latencies.sort()
        bus = relays[0].stats.get("bus", {})
        lost_on_bus = sum(r.stats.get("bus", {}).get("lost", 0) for r in relays)
        result = {
            "relays": topology,
            "rate": rate,
            "sent": sent,
            "offered_per_s": round(sent / send_time),
            "delivered_per_s": round(received[0] / send_time),
            "lost_pct": 100.0 * (expected - received[0]) / expected if expected else 0.0,
            "p50_us": latencies[len(latencies) // 2] / 1000 if latencies else None,
            "p99_us": latencies[int(len(latencies) * 0.99)] / 1000 if latencies else None,
            "bus_dropped": sum(bus.get("dropped", {}).values()) if bus else 0,
            "bus_lost": lost_on_bus,
            "relay_kernel_relayed": relays[0].stats["relayed"] - before[0]["relayed"],
        }
        for sock in receivers + [sender]:
            sock.close()
        return result
    finally:
        for relay in relays:
            relay.stop()


def median_range(values: List[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    med = statistics.median(values)
    return f"{med:.3g} [{min(values):.3g}-{max(values):.3g}]"


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="1000,4000,8000,16000", help="messages per second offered (default %(default)s)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each run (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each case (default %(default)s)")
    parser.add_argument("--backends", default="nats,redis", help="brokers to compare (default %(default)s)")
    parser.add_argument("--json", help="also write every run as a JSON line to this file")
    args = parser.parse_args(argv)
    rates = [int(r) for r in args.rates.split(",")]
    backends = args.backends.split(",")
    runs: List[Dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="chatudp-bench-") as directory:
        brokers: Dict[str, Broker] = {}
        try:
            if "nats" in backends:
                brokers["nats"] = NatsServer().start()
            if "redis" in backends:
                brokers["redis"] = RedisServer(directory).start()
            for repeat in range(args.repeat):
                for rate in rates:
                    single = run_once(1, None, rate, args.seconds)
                    single.update(backend="none", repeat=repeat)
                    runs.append(single)
                    for name, broker in brokers.items():
                        for topology in (2, 3):
                            run = run_once(topology, broker, rate, args.seconds)
                            run.update(backend=name, repeat=repeat)
                            run["ratio"] = run["delivered_per_s"] / single["delivered_per_s"]
                            runs.append(run)
                            print(json.dumps(run), file=sys.stderr, flush=True)
        finally:
            for broker in brokers.values():
                broker.kill()
    if args.json:
        with open(args.json, "w") as out:
            for run in runs:
                out.write(json.dumps(run) + "\n")
    print(f"\nmedian [range] over {args.repeat} runs of {args.seconds:g} s, {RECEIVERS} receivers, 1 sender\n")
    print("| offered msg/s | relays | broker | delivered Acks/s | ratio to 1 relay | lost % | p50 µs | p99 µs |")
    print("|---|---|---|---|---|---|---|---|")
    cases = sorted({(r["rate"], r["relays"], r["backend"]) for r in runs}, key=lambda c: (c[0], c[1], c[2]))
    for rate, topology, backend in cases:
        group = [r for r in runs if (r["rate"], r["relays"], r["backend"]) == (rate, topology, backend)]
        ratio = median_range([r["ratio"] for r in group]) if topology > 1 else "1"
        print(
            f"| {rate} | {topology} | {backend} | {median_range([r['delivered_per_s'] for r in group])} | {ratio} "
            f"| {median_range([r['lost_pct'] for r in group])} | {median_range([r['p50_us'] for r in group])} "
            f"| {median_range([r['p99_us'] for r in group])} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
