"""Bad arguments are refused at construction, the same way by every class: a ValueError or a
TypeError that names the parameter; a port out of range is a PortError (a ValueError and the
OverflowError socket.bind raises); a host that does not resolve is a socket.gaierror naming it."""

from __future__ import annotations

import inspect
import socket
from typing import Any, Callable, Dict, Set, Type

import pytest

from chatudp import _core
from chatudp import (
    ChatUdpClient,
    ChatUdpServer,
    Collector,
    EchoClient,
    EchoServer,
    PortError,
    QQPeer,
    TimeClient,
    TimeServer,
)

SERVERS: Dict[str, Callable[..., Any]] = {
    "ChatUdpServer": ChatUdpServer,
    "EchoServer": EchoServer,
    "TimeServer": TimeServer,
    "Collector": Collector,
}
CLIENTS: Dict[str, Callable[..., Any]] = {"ChatUdpClient": ChatUdpClient, "EchoClient": EchoClient, "TimeClient": TimeClient}
EVERY_CLASS = {**SERVERS, **CLIENTS, "QQPeer": QQPeer}


def refused(make: Callable[[], Any], kind: Type[BaseException], *words: str) -> BaseException:
    with pytest.raises(kind) as caught:
        make()
    for word in words:
        assert word in str(caught.value), f"{word!r} not in {caught.value!r}"
    return caught.value


@pytest.mark.parametrize("name", sorted(SERVERS))
@pytest.mark.parametrize("port", [70000, -1])
def test_a_server_port_out_of_range_is_a_port_error(name: str, port: int) -> None:
    error = refused(lambda: SERVERS[name]("127.0.0.1", port), PortError, "port", "0-65535", str(port))
    assert isinstance(error, ValueError) and isinstance(error, OverflowError)


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_client_port_out_of_range_is_a_port_error(name: str) -> None:
    refused(lambda: CLIENTS[name]("127.0.0.1", 70000), OverflowError, "rport", "70000")


def test_a_bind_address_must_be_a_host_and_a_port() -> None:
    refused(lambda: QQPeer(bind="x"), TypeError, "bind", "(host, port)")  # type: ignore[arg-type]
    refused(lambda: QQPeer(bind=("", 70000)), PortError, "bind[1]")
    refused(lambda: QQPeer(bind=(None, 0)), TypeError, "bind[0]")  # type: ignore[arg-type]
    with QQPeer(("127.0.0.1", 0)) as peer:
        refused(lambda: peer.sendto(b"x", "127.0.0.1"), TypeError, "addr")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(SERVERS))
def test_a_host_that_is_not_a_str_names_ip(name: str) -> None:
    refused(lambda: SERVERS[name](None, 0), TypeError, "ip", "str")


@pytest.mark.parametrize("name", sorted(CLIENTS))
def test_a_remote_host_that_is_not_a_str_names_rip(name: str) -> None:
    refused(lambda: CLIENTS[name](5, 9), TypeError, "rip", "str")


@pytest.mark.parametrize("name", sorted(EVERY_CLASS))
@pytest.mark.parametrize("value", [-1, 0, 2**31, "big", 1.5])
def test_socket_buffers_are_checked_at_construction(name: str, value: Any) -> None:
    kind = TypeError if not isinstance(value, int) else ValueError
    make = EVERY_CLASS[name]
    refused(lambda: make(rcvbuf=value), kind, "rcvbuf")
    if name != "Collector":  # it has no send buffer
        refused(lambda: make(sndbuf=value), kind, "sndbuf")


def test_server_durations_and_networks_name_their_parameter() -> None:
    refused(lambda: ChatUdpServer(expiry_grace="x"), TypeError, "expiry_grace")  # type: ignore[arg-type]
    refused(lambda: ChatUdpServer(expiry_grace=-1), ValueError, "expiry_grace", ">= 0")
    refused(lambda: ChatUdpServer(interval=0), ValueError, "interval", "> 0")
    refused(lambda: ChatUdpServer(interval=float("nan")), ValueError, "interval")
    refused(lambda: ChatUdpServer(allow=["10.0.0.0/8", "x"]), ValueError, "allow", '"x"')
    refused(lambda: ChatUdpServer(allow=5), TypeError, "allow")  # type: ignore[arg-type]


def test_allow_takes_one_network_as_a_string() -> None:
    with ChatUdpServer("127.0.0.1", 0, allow="10.0.0.0/8") as server, ChatUdpClient(*server.addr) as client:
        client.send("from outside the network")
        deadline = 100
        while server.stats["dropped"]["not_allowed"] == 0 and deadline:
            deadline -= 1
            server.event.wait(0.05)
        assert server.stats["dropped"]["not_allowed"] == 1
        assert server.stats["relayed"] == 0


@pytest.mark.parametrize(
    "start",
    [
        lambda host: ChatUdpServer(host, 0).start(),
        lambda host: ChatUdpClient(host, 9).start(),
        lambda host: EchoServer(host, 0).start(),
        lambda host: EchoClient(host, 9),
        lambda host: QQPeer((host, 0)),
        lambda host: Collector(host, 0).start(),
    ],
    ids=["ChatUdpServer", "ChatUdpClient", "EchoServer", "EchoClient", "QQPeer", "Collector"],
)
@pytest.mark.parametrize("host", ["999.1.1.1", "no-such-host.invalid"])
def test_a_host_that_does_not_resolve_is_a_gaierror_naming_it(start: Callable[[str], Any], host: str) -> None:
    error = refused(lambda: start(host), socket.gaierror, host)
    assert isinstance(error, OSError) and error.errno is not None


@pytest.mark.parametrize(
    "cls, config, callbacks",
    [
        (ChatUdpServer, _core.ServerConfig, {"on_message", "on_join", "on_leave", "on_reject"}),
        (ChatUdpClient, _core.ClientConfig, {"on_message"}),
    ],
)
def test_the_python_signature_is_the_core_config(cls: Any, config: Any, callbacks: Set[str]) -> None:
    """Every setting is spelled once, in the core's config: the Python class takes the same
    parameters (plus its callbacks), with the same defaults, so none can drift."""
    python = dict(inspect.signature(cls.__init__).parameters)
    python.pop("self")
    core = inspect.signature(config).parameters
    assert list(core) == [name for name in python if name not in callbacks]
    for name, parameter in core.items():
        assert python[name].kind == parameter.kind, name
        if parameter.default not in (Ellipsis, None):  # None: the DEFAULT_* constant, below
            assert python[name].default == parameter.default, name
    first, second = list(python)[:2]  # ip, port (rip, rport on the client)
    defaults = {
        first: _core.DEFAULT_HOST,
        second: _core.DEFAULT_CHAT_PORT,
        "interval": _core.DEFAULT_INTERVAL,
        "bufsize": _core.DEFAULT_BUFSIZE,
        "queue_size": _core.DEFAULT_QUEUE_SIZE,
        "backlog": _core.DEFAULT_BACKLOG,
    }
    for name, value in defaults.items():
        assert python[name].default == value, name
    if cls is ChatUdpServer:
        assert python["max_clients"].default == _core.DEFAULT_MAX_CLIENTS
        assert python["workers"].default == 1
