"""Exceptions raised by chatudp.

Misuse raises the builtin a Python user already catches (``ValueError`` for bad arguments,
``RuntimeError`` for starting twice, ``OSError`` for a busy port or bad address); the classes here
add a package base class where chatudp has something of its own to say.
"""

from __future__ import annotations

__all__ = ["ChatUdpError", "ClosedError", "NoReplyError", "PortError"]


class ChatUdpError(Exception):
    """Base class of the exceptions chatudp defines."""


class ClosedError(ChatUdpError, OSError):
    """The server or client was stopped; create a new one to talk again.

    A subclass of ``OSError`` because the tutorial's classes raise ``OSError`` when a closed
    socket is used, so existing ``except OSError`` clauses keep working.
    """


class NoReplyError(ChatUdpError, TimeoutError):
    """A request got no reply, after its timeout and every retry.

    UDP loses datagrams, so the echo and time clients resend a bounded number of times instead
    of waiting forever as the tutorial's clients do. A subclass of ``TimeoutError`` (an
    ``OSError``), so ``except TimeoutError`` and ``except socket.timeout`` (Python 3.10+) catch it.

    ``refused`` is True when the network reported the server's port closed (ICMP port
    unreachable) meanwhile: nothing listens there, rather than a datagram lost on the way.
    """

    def __init__(self, *args: object, refused: bool = False) -> None:
        super().__init__(*args)
        self.refused = refused


class PortError(ChatUdpError, ValueError, OverflowError):
    """A port outside 0-65535.

    A ``ValueError`` like every other bad argument, and an ``OverflowError`` because that is
    what ``socket.bind`` raises for the same mistake, so the tutorial's ``except OverflowError``
    keeps working.
    """
