"""``chatudp server`` and ``chatudp client``: the tutorial's interactive group chat."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from typing import Any, Optional

from ._args import (
    EDIT_NOTE,
    EXIT_OK,
    STOP_NOTE,
    Address,
    add_bus,
    add_logging,
    add_program,
    bus_options,
    error_text,
    hostport,
    interval_seconds,
    open_endpoint,
    shown_url,
    started,
)
from ._terminal import chat_input, cleanup, end_main_thread, err, is_tty, out, setup_logging, wait_for_signal

#: The tutorial's log lines: the data received (and, at the server, the address) at INFO.
log = logging.getLogger("chatudp")


def _show_peer(what: str) -> Any:
    """Joins and leaves at INFO, so the server's view shows who comes and goes."""

    def show(addr: Address, reason: Optional[str] = None) -> None:
        log.info("%s %s%s", what, hostport(*addr[:2]), "" if reason is None else f" ({reason})")

    return show


def cmd_server(args: argparse.Namespace) -> int:
    from .. import ChatUdpServer

    setup_logging(args)
    options = bus_options(args)

    def make() -> Any:
        server = ChatUdpServer(
            args.ip,
            args.port,
            args.interval,
            on_join=_show_peer("joined:"),
            on_leave=_show_peer("left:"),
            **options,
        )
        return started(server)  # a message still logs the tutorial's two lines: data, then address

    server = open_endpoint("bind", args.ip, args.port, make)
    where = hostport(*server.addr[:2])
    bus = f"; room {options['room']} on the bus {', '.join(map(shown_url, options['bus']))}" if options else ""
    try:
        if args.no_input:
            out(f"chat server on {where}{bus}; no input: Ctrl-C or SIGTERM stops it")
            wait_for_signal(server.event)
        else:
            out(f"chat server on {where}{bus}; type quit to stop, any other line shows the clients")
            serve_commands(server)
    finally:
        cleanup(server.stop)
    return EXIT_OK


def serve_commands(server: Any) -> None:
    """The tutorial's ``>>`` loop. On a terminal, end of input (Ctrl-D) stops the server too;
    without one (a pipe, ``</dev/null``, a service manager) it serves on until a signal."""
    with chat_input() as read:
        while True:
            cmd = read(">> ")
            if cmd is None:
                if not is_tty(sys.stdin):
                    out("end of input: serving on until Ctrl-C or SIGTERM")
                    wait_for_signal(server.event)
                break
            if cmd == "quit":
                break
            logging.info(threading.enumerate())
            logging.info(server.clients)


class ServerWatch:
    """What the client cannot see in the chat itself, said once each time it changes: the server
    unreachable (the network reported its port closed: ``stats['unreachable']`` grew), reachable
    again (datagrams went out, or came in, with no new report for `QUIET` seconds), stopped (its
    ``Bye!``)."""

    QUIET = 1.0
    POLL = 0.2

    def __init__(self, where: str, stay: bool) -> None:
        self.where = where
        self.stay = stay
        self.client: Any = None
        self.bye = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatudp-watch", daemon=True)

    def message(self, data: bytes, addr: Address) -> None:
        """The client's ``on_message``: the tutorial's log line, and the server's ``Bye!``."""
        log.info("%s", data)
        if bytes(data) == b"Bye!":  # only the server itself sends it raw (members' text is Acked)
            if self.stay:
                out(f"the server at {self.where} stopped (it said Bye!); waiting for it to come back (--stay)")
                return
            out(f"the server at {self.where} stopped (it said Bye!); exiting")
            self.bye = True  # the watch thread ends the main thread's input loop

    def start(self, client: Any) -> None:
        self.client = client
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(timeout=2)

    def _run(self) -> None:
        unreachable = False
        reports = sent = received = 0
        quiet_since: Optional[float] = None
        while not self._stop.wait(self.POLL):
            if self.bye:
                # Until the main thread has left its input loop (then `close` stops this thread):
                # readline sees a signal only while it waits, so one sent just before is repeated.
                end_main_thread()
                continue
            try:
                stats = self.client.stats
            except Exception:
                return
            if not stats:
                return
            if stats["unreachable"] > reports:
                reports = stats["unreachable"]
                sent, received, quiet_since = stats["sent"], stats["received"], None
                if not unreachable:
                    unreachable = True
                    err(
                        f"server {self.where} unreachable: the network reports its port closed (is the server "
                        "running?); what is sent meanwhile is lost"
                    )
                continue
            if not unreachable:
                continue
            if stats["received"] > received:
                quiet_since = 0.0  # the server answered: back at once
            elif stats["sent"] > sent and quiet_since is None:
                quiet_since = time.monotonic()
            if quiet_since is not None and time.monotonic() - quiet_since >= self.QUIET:
                unreachable = False
                err(f"server {self.where} reachable again")


def cmd_client(args: argparse.Namespace) -> int:
    from .. import ChatUdpClient

    setup_logging(args)
    watch = ServerWatch(hostport(args.ip, args.port), args.stay)
    client = open_endpoint(
        "connect to",
        args.ip,
        args.port,
        # announce: join the server's table at once, so the others' messages reach us from the start
        lambda: started(ChatUdpClient(args.ip, args.port, args.interval, on_message=watch.message, announce=True)),
    )

    def leave() -> None:
        client.send("quit")  # as the tutorial does before stop(), so the server forgets us now

    try:
        out(f"chat client of the server at {watch.where}, from {hostport(*client.addr[:2])}; type quit to leave")
        watch.start(client)
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
        cleanup(watch.close, leave, client.stop)
    return EXIT_OK


def register(sub: Any) -> None:
    parser = add_program(
        sub,
        "server",
        "the tutorial's group-chat server (ChatUdpServer) with its '>> ' prompt",
        "Type quit to stop; any other line shows the live threads and the clients table. "
        "Received messages, joins and leaves are logged to stdout" + EDIT_NOTE + STOP_NOTE + " Without a terminal "
        "(a pipe, </dev/null, a service manager) end of input does not stop it: it serves until Ctrl-C or SIGTERM, "
        "as with --no-input.",
        cmd_server,
        "127.0.0.1",
        9999,
        "server",
    )
    parser.add_argument(
        "--interval", type=interval_seconds, default=10, help="seconds of silence before a client expires (default 10)"
    )
    parser.add_argument(
        "--no-input", action="store_true", help="read no commands: serve until Ctrl-C or SIGTERM (for services)"
    )
    add_bus(parser, room=True)
    add_logging(parser)

    parser = add_program(
        sub,
        "client",
        "the tutorial's group-chat client (ChatUdpClient) with its '>> ' prompt",
        "Each line is sent to the server; quit (and Ctrl-D, Ctrl-C) sends quit to the server and stops. "
        "It announces itself at start (a first heartbeat at once), says when the server is unreachable and "
        "when it is back, and exits (status 0) when the server stops (its Bye!) unless --stay. "
        "Received messages are logged to stdout" + EDIT_NOTE.rstrip(),
        cmd_client,
        "127.0.0.1",
        9999,
        "client",
    )
    parser.add_argument("--interval", type=interval_seconds, default=10, help="seconds between heartbeats (default 10)")
    parser.add_argument("--stay", action="store_true", help="when the server stops (Bye!), keep waiting for it")
    add_logging(parser)
