"""The tutorial's echo server and client: the server answers every datagram with
``data.upper()``, to its sender.

The tutorial's server loop (``recvfrom(1024)``, ``print(msg, addr)``, ``sendto(msg.upper(),
addr)``) becomes an ``EchoServer`` answering in a Rust thread; ``on_request`` plays the part of
the ``print``. The client resends after ``timeout`` seconds, a bounded number of times, where the
tutorial's client would wait forever for a lost datagram. Runs well under a second.

    python examples/echo.py
"""

from __future__ import annotations

import queue
import sys
from typing import Any, Tuple

from chatudp import EchoClient, EchoServer, NoReplyError


def main() -> int:
    seen: "queue.Queue[Tuple[bytes, Tuple[Any, ...]]]" = queue.Queue()

    def on_request(msg: bytes, addr: Tuple[Any, ...]) -> None:
        seen.put((msg, addr))  # the tutorial prints (msg, addr) here

    with EchoServer("127.0.0.1", 0, on_request=on_request) as server:
        host, port = server.addr[0], server.addr[1]
        print(f"echo server on {host}:{port}")

        with EchoClient(host, port, timeout=1.0, retries=2) as client:
            for line in ("hello", "udp is connectionless", ""):
                reply = client.request(line)
                msg, addr = seen.get(timeout=2)
                print(f"server got {msg!r} from {addr[0]}:{addr[1]}")
                print(f"client got {reply!r}")

        # Nobody listens on a stopped server's port: the client gives up instead of hanging.
        server.stop()
        with EchoClient(host, port, timeout=0.1, retries=1) as late:
            try:
                late.request("anyone?")
            except NoReplyError as exc:
                print(f"no reply: {exc}")
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
