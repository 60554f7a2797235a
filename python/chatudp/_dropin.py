"""What a tutorial script reaches into besides the methods: the ``clients`` dict, the ``event``
and the ``sock``, rebuilt over the Rust core so that what a script does with them takes effect
(or says why it cannot), never silently nothing."""

from __future__ import annotations

import io
import socket
import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, ItemsView, Iterator, KeysView, MutableMapping, Optional, ValuesView

from .types import Address

if TYPE_CHECKING:
    from ._base import SocketThreadObject

__all__ = ["ClientsView", "SocketView", "StopEvent"]


class StopEvent(threading.Event):
    """The ``event`` of a chatudp object: set once it is stopped, as the tutorial's is; and,
    as the tutorial's loops end when it is set, ``set()`` stops the object (``stop()``; the
    flag is set once every thread is joined)."""

    def __init__(self, owner: SocketThreadObject) -> None:
        super().__init__()
        self._owner: Callable[[], Optional[SocketThreadObject]] = weakref.ref(owner)

    def set(self) -> None:
        """Stop the object (its ``stop()``), which sets the flag once every thread is joined."""
        owner = self._owner()
        if owner is None:
            self._set_flag()
        else:
            owner.stop()

    def _set_flag(self) -> None:
        """Set the flag only: what ``stop()`` does at its end."""
        super().set()


class ClientsView(MutableMapping[Address, float]):
    """``server.clients``: the live clients table, ``{(ip, port): last_seen}``
    (``time.time()`` floats). Reading it reads the table as it is now (``dict(server.clients)``
    or ``server.clients.copy()`` keep a snapshot); ``del server.clients[addr]``, ``pop()`` and
    ``clear()`` remove clients from the relay's table, each reported once to ``on_leave`` with
    the reason ``"removed"`` (a removed client that sends again joins again). A client cannot
    be added: it joins by sending. While a copy is made (``dict(view)`` lists the keys, then
    looks each up), a client that leaves in between is found in the listing's snapshot."""

    def __init__(self, core: Callable[[], Any]) -> None:
        self._core = core
        # The snapshot of the last walk over this view (keys(), iteration): a look-up during it,
        # as dict(view) and {**view} make, finds a client that left meanwhile there, so such a
        # copy is whole instead of failing with KeyError.
        self._walk: Dict[Address, float] = {}

    def _walked(self) -> Dict[Address, float]:
        self._walk = self.copy()
        return self._walk

    def copy(self) -> Dict[Address, float]:
        """A snapshot of the table, as a dict."""
        core = self._core()
        if core is None:
            return {}
        snapshot: Dict[Address, float] = core.clients()
        return snapshot

    def __getitem__(self, addr: Address) -> float:
        core = self._core()
        seen: Optional[float] = None if core is None else core.last_seen(addr)
        if seen is None:
            if addr in self._walk:
                return self._walk[addr]
            raise KeyError(addr)
        return seen

    def __setitem__(self, addr: Address, last_seen: float) -> None:
        """Refused (``TypeError``): a client joins by sending."""
        raise TypeError(
            "server.clients cannot be added to: a client joins the table by sending to the server "
            "(a heartbeat b'^hb^' or a message); to send it something, use server.sendto(data, addr)"
        )

    def __delitem__(self, addr: Address) -> None:
        core = self._core()
        if core is None or not core.remove_client(addr):
            raise KeyError(addr)

    def clear(self) -> None:
        """Remove every client at once (each reported to ``on_leave`` as ``"removed"``)."""
        core = self._core()
        if core is not None:
            core.clear_clients()

    def __contains__(self, addr: object) -> bool:
        core = self._core()
        return core is not None and core.last_seen(addr) is not None

    def __iter__(self) -> Iterator[Address]:
        return iter(self._walked())

    def __len__(self) -> int:
        return len(self.copy())

    # One snapshot for a whole walk over the table, not one look-up per client.
    def keys(self) -> KeysView[Address]:
        """The addresses in the table now (a snapshot)."""
        return self._walked().keys()

    def values(self) -> ValuesView[float]:
        """The last-seen times in the table now (a snapshot)."""
        return self.copy().values()

    def items(self) -> ItemsView[Address, float]:
        """``(address, last_seen)`` pairs in the table now (a snapshot)."""
        return self.copy().items()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ClientsView):
            other = other.copy()
        return self.copy() == other

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self.copy())


class SocketView:
    """``obj.sock``: the part of the tutorial's socket that still makes sense while a Rust
    thread owns the real one. ``getsockname()``, ``family``, ``type`` and ``proto`` are the
    socket's; ``sendto(data, addr)`` sends from it (a server: through its socket thread, as
    ``server.sendto``; a client: to its server only, as ``client.send``). Reading from it
    (``recv``, ``recvfrom``) and ``fileno()`` raise ``io.UnsupportedOperation``: a read would
    take datagrams from the Rust thread; the messages come to ``on_message`` or
    ``recv_message()`` instead."""

    type = socket.SOCK_DGRAM
    proto = 0

    def __init__(self, owner: Any) -> None:
        self._owner = owner

    @property
    def family(self) -> socket.AddressFamily:
        """``AF_INET`` or ``AF_INET6``, as the socket's."""
        addr = self._owner.addr if self._owner.running else None
        if addr is not None:
            return socket.AF_INET6 if len(addr) == 4 else socket.AF_INET
        host = self._configured_host()
        return socket.AF_INET6 if ":" in host else socket.AF_INET

    def _configured_host(self) -> str:
        where = getattr(self._owner, "raddr", None) or self._owner.addr or ("",)
        return str(where[0])

    def getsockname(self) -> Address:
        """The address the socket is bound to; ``OSError`` before ``start()``."""
        if self._owner._core is None:
            raise OSError(f"this {self._owner._kind} is not started; call start() first")
        addr: Address = self._owner._core.local_addr()
        return addr

    def getpeername(self) -> Address:
        """A client's server address, resolved; ``OSError`` for a server (not connected)."""
        core = self._owner._core
        if core is None or not hasattr(core, "remote_addr"):
            raise OSError(107, "Transport endpoint is not connected")
        addr: Address = core.remote_addr()
        return addr

    def sendto(self, data: bytes, addr: Address) -> int:
        """Send ``data`` to ``addr``; returns ``len(data)``, as ``socket.sendto``."""
        payload = bytes(data)
        self._owner._sock_sendto(payload, addr)
        return len(payload)

    def fileno(self) -> int:
        """Refused (``io.UnsupportedOperation``): the descriptor belongs to the Rust thread."""
        raise io.UnsupportedOperation(
            "the socket belongs to chatudp's Rust thread: reading from its descriptor would take datagrams "
            "from the relay; use on_message or recv_message() to receive, and sock.sendto() to send"
        )

    def recv(self, *args: object) -> bytes:
        """Refused (``io.UnsupportedOperation``): pass ``on_message`` or call ``recv_message()``."""
        raise io.UnsupportedOperation(
            "chatudp's Rust thread receives on this socket; a subclass cannot override recv(): "
            "pass on_message=callback (called with data, addr for each message) or call recv_message()"
        )

    recvfrom = recv

    def __repr__(self) -> str:
        try:
            where = f"laddr={self.getsockname()!r}"
        except OSError:
            where = "not started"
        return f"<chatudp socket of {self._owner._kind}, family={self.family.name}, {where}>"
