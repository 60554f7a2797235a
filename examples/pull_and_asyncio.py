"""The same chat consumed without callbacks: a blocking pull loop, then asyncio.

Without ``on_message``, a server or client keeps what it receives for you:

* ``recv_message(timeout=None)`` returns the next ``(data, (ip, port))`` or raises
  ``TimeoutError``; ``for data, addr in obj:`` loops until the object is stopped;
* ``await obj.arecv(timeout=None)`` and ``async for data, addr in obj:`` do the same on the
  running event loop (no polling), and ``async with`` starts and stops the object.

Runs well under a second on 127.0.0.1.

    python examples/pull_and_asyncio.py
"""

from __future__ import annotations

import asyncio
import sys
import threading

from chatudp import ChatUdpClient, ChatUdpServer


def pull() -> None:
    print("-- pull: recv_message and iteration")
    with ChatUdpServer("127.0.0.1", 0) as server:
        host, port = server.addr[0], server.addr[1]
        with ChatUdpClient(host, port) as client:
            client.send("hello")
            data, addr = server.recv_message(timeout=2)
            print(f"server got {data!r} from {addr[0]}:{addr[1]}")
            data, addr = client.recv_message(timeout=2)
            print(f"client got {data.decode()}")

            for text in ("one", "two", "three"):
                client.send(text)
            # Iteration ends when the object is stopped; here we stop it after three messages.
            seen = 0
            for data, _addr in client:
                print(f"client got {data.decode()}")
                seen += 1
                if seen == 3:
                    threading.Timer(0.05, client.stop).start()
            print("iteration ended: the client was stopped")

            # The server kept the three messages too, since it has no on_message either.
            kept = [server.recv_message(timeout=2)[0] for _ in range(3)]
            print(f"server kept {kept!r}")


async def with_asyncio() -> None:
    print("-- asyncio: async with, arecv and async for")
    async with ChatUdpServer("127.0.0.1", 0) as server:
        host, port = server.addr[0], server.addr[1]
        async with ChatUdpClient(host, port) as client:
            client.send("async hello")
            data, addr = await server.arecv(timeout=2)
            print(f"server got {data!r} from {addr[0]}:{addr[1]}")
            data, _addr = await client.arecv(timeout=2)
            print(f"client got {data.decode()}")

            for text in ("four", "five"):
                client.send(text)
            seen = 0
            async for data, _addr in client:
                print(f"client got {data.decode()}")
                seen += 1
                if seen == 2:
                    break

            try:
                await client.arecv(timeout=0.1)
            except TimeoutError:
                print("nothing more within 0.1 s: TimeoutError")


def main() -> int:
    pull()
    asyncio.run(asyncio.wait_for(with_asyncio(), timeout=10))
    print("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
