"""Migrating from the tutorial: change one import line, keep the script.

Below is the tutorial's own code, its server ``main()`` and its client ``__main__`` block, with
``input()`` replaced by a scripted list of commands so that it runs by itself, and the port set
to 0 (a free port) instead of 9999 so that it never collides with anything. Everything else is
the tutorial's: the logging format, ``start()``, ``send()``, ``stop()``, ``clients``, ``event``;
the received ``Ack b'...'`` lines are logged at INFO exactly as the tutorial's client logs them.
Runs about a second.

    python examples/migrate_from_tutorial.py
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Iterator, List

# from chat_server import ChatUdpServer, ChatUdpClient    # the tutorial's classes, before
from chatudp import ChatUdpClient, ChatUdpServer  # chatudp: the only line that changes

FORMAT = "%(asctime)s %(threadName)s %(message)s"
logging.basicConfig(format=FORMAT, level=logging.INFO, stream=sys.stdout)


def scripted(commands: List[str]) -> Iterator[str]:
    """Stands in for the tutorial's ``input('>> ')``: one command at a time, a pause between."""
    for cmd in commands:
        threading.Event().wait(0.1)  # let the Acks of the previous command arrive
        print(f">> {cmd}")
        yield cmd


def main() -> int:
    cs = ChatUdpServer("127.0.0.1", 0)  # the tutorial: ChatUdpServer(), port 9999
    cs.start()
    rip, rport = cs.addr[0], cs.addr[1]

    cc2 = ChatUdpClient(rip, rport)  # a second client (the tutorial runs each in a terminal)
    cc2.start()
    cc2.send("client 2 is here")

    cc1 = ChatUdpClient(rip, rport)  # the tutorial: ChatUdpClient()
    cc1.start()
    for cmd in scripted(["hello", "你好", "quit"]):  # the tutorial's client loop
        if cmd == "quit":
            cc1.send("quit")
            cc1.stop()
            break
        cc1.send(cmd)

    for cmd in scripted(["show", "quit"]):  # the tutorial's server loop
        if cmd == "quit":
            cs.stop()  # client 2, still in the table, gets b'Bye!'
            # The tutorial waits 3 s here for its threads; chatudp's stop() has joined them.
            break
        logging.info(threading.enumerate())
        logging.info(cs.clients)

    # Not in the tutorial: wait (2 s at most) until client 2 has logged the server's Bye!
    # Without on_message, a client also keeps what it receives for recv_message().
    # (Its dispatcher logs the Bye! too, unless cc2.stop() below comes first: stop() drops
    # what is not yet delivered, so print it here.)
    try:
        while (data := cc2.recv_message(timeout=2)[0]) != b"Bye!":
            pass
        print(f"client 2 got {data!r}")
    except TimeoutError:
        print("client 2 got no Bye! (UDP may lose datagrams)")
    cc2.stop()
    print(f"stopped: {cs.event.is_set()}, {cc1.event.is_set()}, {cc2.event.is_set()}")
    return 0 if cs.event.is_set() and cc1.event.is_set() and cc2.event.is_set() else 1


if __name__ == "__main__":
    sys.exit(main())
