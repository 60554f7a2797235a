"""``chatudp server`` and ``chatudp client``: the tutorial's interactive group chat."""

from __future__ import annotations

import argparse
import logging
import threading
from typing import Any

from ._args import (
    EDIT_NOTE,
    EXIT_OK,
    STOP_NOTE,
    add_logging,
    add_program,
    error_text,
    hostport,
    open_endpoint,
    positive_seconds,
    started,
)
from ._terminal import chat_input, cleanup, err, out, setup_logging


def cmd_server(args: argparse.Namespace) -> int:
    from .. import ChatUdpServer

    setup_logging(args)
    server = open_endpoint("bind", args.ip, args.port, lambda: started(ChatUdpServer(args.ip, args.port, args.interval)))
    try:
        out(f"chat server on {hostport(*server.addr[:2])}; type quit to stop, any other line shows the clients")
        with chat_input() as read:
            while True:
                cmd = read(">> ")
                if cmd is None or cmd == "quit":
                    break
                logging.info(threading.enumerate())
                logging.info(server.clients)
    finally:
        cleanup(server.stop)
    return EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    from .. import ChatUdpClient

    setup_logging(args)
    client = open_endpoint(
        "connect to", args.ip, args.port, lambda: started(ChatUdpClient(args.ip, args.port, args.interval))
    )

    def leave() -> None:
        client.send("quit")  # as the tutorial does before stop(), so the server forgets us now

    try:
        with chat_input() as read:
            while True:
                cmd = read(">> ")
                if cmd is None or cmd == "quit":
                    break
                try:
                    client.send(cmd)
                except OSError as exc:
                    err(f"cannot send: {error_text(exc)}")
    finally:
        cleanup(leave, client.stop)
    return EXIT_OK


def register(sub: Any) -> None:
    parser = add_program(
        sub,
        "server",
        "the tutorial's group-chat server (ChatUdpServer) with its '>> ' prompt",
        "Type quit to stop; any other line shows the live threads and the clients table. "
        "Received messages are logged to stdout" + EDIT_NOTE + STOP_NOTE,
        cmd_server,
        "127.0.0.1",
        9999,
        "server",
    )
    parser.add_argument(
        "--interval", type=positive_seconds, default=10, help="seconds of silence before a client expires (default 10)"
    )
    add_logging(parser)

    parser = add_program(
        sub,
        "client",
        "the tutorial's group-chat client (ChatUdpClient) with its '>> ' prompt",
        "Each line is sent to the server; quit (and Ctrl-D, Ctrl-C) sends quit to the server and stops. "
        "Received messages are logged to stdout" + EDIT_NOTE.rstrip(),
        cmd_client,
        "127.0.0.1",
        9999,
        "client",
    )
    parser.add_argument("--interval", type=positive_seconds, default=10, help="seconds between heartbeats (default 10)")
    add_logging(parser)
