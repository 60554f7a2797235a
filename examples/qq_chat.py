"""The tutorial's "QQ" chat, scripted: a server whose operator answers each message by hand, and
a client that picks a contact by name from a name -> address table.

Both sides use ``QQPeer``, the tutorial's unconnected UDP socket (``sendto`` / ``recvfrom``)
with one difference: ``recvfrom`` takes a ``timeout``, so a lost datagram does not hang the
program. The typed input of both sides is replaced by a script. Runs well under a second.

    python examples/qq_chat.py        (python -m chatudp has the interactive programs)
"""

from __future__ import annotations

import sys
import threading
from typing import Any, Dict, List, Tuple

from chatudp import ClosedError, QQPeer

# The tutorial's message line: 来自[ip:port]的一条消息: text, the text in white on blue.
LINE = "来自[%s:%s]的一条消息:\033[1;44m%s\033[0m"

# (contact, message) as the client's user would type them; "quit" goes back to choosing.
CLIENT_SCRIPT: List[Tuple[str, str]] = [
    ("狗哥", "你好, 狗哥"),
    ("狗哥", "在吗?"),
    ("猴哥", "hello from the client"),
    ("不认识的人", "an unknown name is ignored, as in the tutorial"),
]
# What the server's operator types at 回复消息: for each message, in order.
SERVER_REPLIES = ["你好!", "在.", "hi!"]


def serve(server: QQPeer, replies: List[str]) -> None:
    """The tutorial's server loop, with scripted replies; ends when the socket is closed."""
    for reply in replies:
        try:
            qq_msg, addr = server.recvfrom(timeout=5)
        except (ClosedError, TimeoutError):
            return
        print("server: " + LINE % (addr[0], addr[1], qq_msg.decode("utf-8")))
        print(f"server: 回复消息: {reply}")
        server.sendto(reply.encode("utf-8"), addr)


def main() -> int:
    with QQPeer(("127.0.0.1", 0)) as server:
        host, port = server.addr[0], server.addr[1]
        # The client's contacts; in the tutorial every one of them is the same server.
        qq_name_dic: Dict[str, Tuple[Any, ...]] = {
            "狗哥": (host, port),
            "猴哥": (host, port),
            "武大郎": (host, port),
            "一棵树": (host, port),
        }
        operator = threading.Thread(target=serve, args=(server, SERVER_REPLIES), name="qq-server")
        operator.start()

        answered = 0
        with QQPeer(("127.0.0.1", 0)) as client:
            for qq_name, msg in CLIENT_SCRIPT:
                if not msg or qq_name not in qq_name_dic:
                    print(f"client: {qq_name!r} is not a contact; ignored")
                    continue
                print(f"client: to {qq_name}: {msg}")
                client.sendto(msg.encode("utf-8"), qq_name_dic[qq_name])
                try:
                    back_msg, addr = client.recvfrom(timeout=2)
                except TimeoutError:
                    print("client: no answer within 2 s (UDP may lose datagrams)")
                    continue
                print("client: " + LINE % (addr[0], addr[1], back_msg.decode("utf-8")))
                answered += 1
    # Closing the server's socket (the end of the with block) wakes a recvfrom still waiting.
    operator.join(timeout=5)
    print(f"done: {answered} answers")
    return 0 if answered == len(SERVER_REPLIES) else 1


if __name__ == "__main__":
    sys.exit(main())
