"""chatudp: the tutorial's UDP group chat as a drop-in, GIL-free library with a Rust core.

Replace ``from chat_server import ChatUdpServer, ChatUdpClient`` (the tutorial's classes, saved as
``chat_server.py``) by::

    from chatudp import ChatUdpServer, ChatUdpClient

Same constructors, same methods, same bytes on the wire.
"""

from __future__ import annotations

from ._chat import ChatUdpClient, ChatUdpServer
from ._core import MAX_DATAGRAM, __version__
from .collector import Batch, Collector
from .errors import ChatUdpError, ClosedError, NoReplyError, PortError
from .services import EchoClient, EchoServer, QQPeer, TimeClient, TimeServer

__all__ = [
    "MAX_DATAGRAM",
    "Batch",
    "ChatUdpClient",
    "ChatUdpError",
    "ChatUdpServer",
    "ClosedError",
    "Collector",
    "EchoClient",
    "EchoServer",
    "NoReplyError",
    "PortError",
    "QQPeer",
    "TimeClient",
    "TimeServer",
    "__version__",
]
