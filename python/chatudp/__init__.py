"""chatudp: the tutorial's UDP group chat as a drop-in, GIL-free library with a Rust core.

Replace ``from chat_server import ChatUdpServer, ChatUdpClient`` (the tutorial's classes, saved as
``chat_server.py``) by::

    from chatudp import ChatUdpServer, ChatUdpClient

Same constructors, same methods, same bytes on the wire.
"""

from __future__ import annotations

from ._ack import parse_ack
from ._chat import ChatUdpClient, ChatUdpServer
from ._core import MAX_DATAGRAM, __version__
from .collector import Batch, Collector
from .errors import ChatUdpError, ClosedError, NoReplyError, PortError
from .services import EchoClient, EchoServer, QQPeer, TimeClient, TimeServer
from .types import (
    Address,
    ChatStats,
    JoinCallback,
    LeaveCallback,
    LeaveReason,
    MessageCallback,
    PeerStats,
    RejectCallback,
    RejectReason,
    RequestCallback,
    ServiceStats,
)

__all__ = [
    "MAX_DATAGRAM",
    "Address",
    "Batch",
    "ChatStats",
    "ChatUdpClient",
    "ChatUdpError",
    "ChatUdpServer",
    "ClosedError",
    "Collector",
    "EchoClient",
    "EchoServer",
    "JoinCallback",
    "LeaveCallback",
    "LeaveReason",
    "MessageCallback",
    "NoReplyError",
    "PeerStats",
    "PortError",
    "QQPeer",
    "RejectCallback",
    "RejectReason",
    "RequestCallback",
    "ServiceStats",
    "TimeClient",
    "TimeServer",
    "__version__",
    "parse_ack",
]
