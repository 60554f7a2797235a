"""``chatudp echo-server`` and ``chatudp echo-client``: the upper-casing echo (port 9000)."""

from __future__ import annotations

import argparse
from typing import Any

from ._args import SERVICE_NOTE, STOP_NOTE, add_program, add_request_options
from ._requests import make_client, run_requests, run_service
from ._terminal import out


def cmd_echo_server(args: argparse.Namespace) -> int:
    from ..services import EchoServer

    return run_service("echo", EchoServer, args, lambda data, addr: out(data, tuple(addr)))


def cmd_echo_client(args: argparse.Namespace) -> int:
    from ..services import EchoClient

    client = make_client(EchoClient, args)
    return run_requests(args, client, ">> ", lambda reply: bytes(reply).decode("utf-8", "replace"))


def register(sub: Any) -> None:
    add_program(
        sub,
        "echo-server",
        "the upper-casing echo server: answers each datagram with data.upper()",
        "Prints each request as the tutorial does. " + SERVICE_NOTE,
        cmd_echo_server,
        "127.0.0.1",
        9000,
        "server",
    )
    parser = add_program(
        sub,
        "echo-client",
        "the echo client: sends each line typed at '>> ' and prints the answer",
        "A lost reply is reported on stderr and the next line is read. " + STOP_NOTE,
        cmd_echo_client,
        "127.0.0.1",
        9000,
        "client",
    )
    add_request_options(parser)
