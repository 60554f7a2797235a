"""CPU spent in Python threads while a ChatUdpServer with no consumer (no on_message, logging
below INFO, nobody pulling) relays N chat messages: per-thread CPU from /proc/self/task/*/stat,
the socket thread (``chatudp-server``) against every other thread of the process.

The senders run in a separate process (stdlib sockets, paced in bursts so the kernel drops
nothing), so they cost this process nothing. Usage: ``python bench/python_share.py [N] [repeats]``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from typing import Dict

from chatudp import ChatUdpServer

TICK = os.sysconf("SC_CLK_TCK")

SENDER = """
import socket, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
for i in range(0, n, 200):
    for _ in range(min(200, n - i)):
        s.sendto(b"0123456789abcdef0123456789abcdef", (host, port))
    time.sleep(0.002)
"""


def thread_cpu() -> Dict[str, float]:
    """CPU seconds (user + system) per thread name, summed over threads of the same name."""
    cpu: Dict[str, float] = {}
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/stat", encoding="ascii") as stat:
                text = stat.read()
        except FileNotFoundError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        cpu[name] = cpu.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / TICK
    return cpu


def one_run(n: int) -> Dict[str, float]:
    with ChatUdpServer(port=0, interval=60) as srv:
        listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        listener.bind(("127.0.0.1", 0))
        listener.sendto(b"^hb^", srv.addr)
        while not srv.clients:
            time.sleep(0.01)
        before = thread_cpu()
        started = time.monotonic()
        sender = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SENDER), srv.addr[0], str(srv.addr[1]), str(n)])
        try:
            sender.wait(timeout=300)
        finally:
            if sender.poll() is None:
                sender.kill()
        deadline = time.monotonic() + 30
        while srv.stats["relayed"] < n and time.monotonic() < deadline:
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        after = thread_cpu()
        relayed = srv.stats["relayed"]
        listener.close()
    used = {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}
    socket_thread = used.pop("chatudp-server", 0.0)
    python = sum(used.values())
    return {
        "messages": n,
        "relayed": relayed,
        "seconds": round(elapsed, 2),
        "socket_thread_cpu_s": round(socket_thread, 3),
        "python_threads_cpu_s": round(python, 3),
        "python_share_of_socket_thread": round(python / socket_thread, 4) if socket_thread else None,
    }


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    repeats = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    shares = []
    for _ in range(repeats):
        result = one_run(n)
        print(json.dumps(result), flush=True)
        if result["python_share_of_socket_thread"] is not None:
            shares.append(result["python_share_of_socket_thread"])
    shares.sort()
    if shares:
        print(json.dumps({"median_share": shares[len(shares) // 2], "min": shares[0], "max": shares[-1]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
