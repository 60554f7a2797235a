"""Reading the relay's Acks back: what a bot needs to answer the message and its sender."""

from __future__ import annotations

import ast
import ipaddress
from typing import Optional, Tuple, Union

from .types import Address

__all__ = ["parse_ack"]

_PREFIX = b"Ack "
_FROM = b". from "


def parse_ack(datagram: Union[bytes, bytearray, memoryview]) -> Optional[Tuple[bytes, Address]]:
    """The message and its sender in one of the relay's Acks, ``Ack b'HELLO'. from ip:port``:
    ``(b'HELLO', (ip, port))``, the message upper-cased as the server sent it (the original
    case is not on the wire). An IPv6 sender is the socket module's 4-tuple
    ``(ip, port, 0, 0)``, as the server's ``clients`` holds it. ``None`` for any other datagram
    (``Bye!``, a heartbeat, a direct message), so a bot can hand every datagram it receives to
    it. Exact: only what a relay sends (Python's ``repr`` of upper-cased bytes, a numeric
    address) is an Ack.

    >>> parse_ack(b"Ack b'HI THERE'. from 127.0.0.1:50000")
    (b'HI THERE', ('127.0.0.1', 50000))
    >>> parse_ack(b'Bye!') is None
    True
    """
    data = bytes(datagram)
    cut = data.rfind(_FROM)
    if not data.startswith(_PREFIX) or cut < 0:
        return None
    literal, where = data[len(_PREFIX) : cut], data[cut + len(_FROM) :]
    message = _bytes_repr(literal)
    sender = _address(where)
    if message is None or sender is None:
        return None
    return message, sender


def _bytes_repr(literal: bytes) -> Optional[bytes]:
    """The bytes whose ``repr`` is exactly ``literal``, when they are upper-case already."""
    try:
        text = literal.decode("ascii")
        value = ast.literal_eval(text)
    except (UnicodeDecodeError, ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    if not isinstance(value, bytes) or repr(value) != text or value.upper() != value:
        return None
    return value


def _address(where: bytes) -> Optional[Address]:
    host, colon, digits = where.rpartition(b":")
    if not colon or not digits.isdigit() or len(digits) > 5 or (len(digits) > 1 and digits.startswith(b"0")):
        return None
    port = int(digits)
    try:
        ip = ipaddress.ip_address(host.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return None
    if port > 65535:
        return None
    if ip.version == 6:
        # The 4-tuple the socket module gives, typed by its first two items (see chatudp.types).
        return (host.decode("ascii"), port, 0, 0)  # type: ignore[return-value]
    return (str(ip), port) if str(ip) == host.decode("ascii") else None
