"""The tutorial's time server and client: the client sends a ``strftime`` format, the server
answers its local time in that format (``%Y-%m-%d %X`` for an empty datagram).

The server answers in a Rust thread, byte for byte what Python's ``time.strftime`` gives; a
format that is not UTF-8 gets an ``error: ...`` answer where the tutorial's server crashes.
Runs well under a second.

    python examples/time_server.py
"""

from __future__ import annotations

import queue
import sys
import time
from typing import Any, Tuple

from chatudp import TimeClient, TimeServer


def main() -> int:
    requests: "queue.Queue[bytes]" = queue.Queue()

    def on_request(msg: bytes, addr: Tuple[Any, ...]) -> None:
        requests.put(msg)  # on a dispatcher thread; the main thread prints it below

    with TimeServer("127.0.0.1", 0, on_request=on_request) as server:
        host, port = server.addr[0], server.addr[1]
        print(f"time server on {host}:{port}")

        with TimeClient(host, port, timeout=1.0) as client:
            # What the tutorial's client prompt offers: 请输入时间格式(例%Y %m %d)>>:
            for fmt in ("%Y %m %d", "", "%H:%M"):
                answer = client.request(fmt)
                print("===>", requests.get(timeout=2))  # what the tutorial's server prints
                print(answer)  # what the tutorial's client prints
            before = time.strftime("%Y-%m-%d")
            today = client.request("%Y-%m-%d")
            # The server's local time is this process's local time (midnight may pass meanwhile).
            if today not in (before, time.strftime("%Y-%m-%d")):
                print(f"unexpected date {today!r}", file=sys.stderr)
                return 1
            print(f"today is {today}")
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
