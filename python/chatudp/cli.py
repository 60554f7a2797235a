"""The chatudp command line: every program of the tutorial, on chatudp's Rust core.

``python -m chatudp SUBCOMMAND`` (or the ``chatudp`` console script) runs:

* ``demo``: a server and three clients chat for a few seconds on loopback, then it exits 0;
* ``server`` / ``client``: the tutorial's interactive group chat (``>> `` prompt, ``quit`` stops);
* ``echo-server`` / ``echo-client``: the upper-casing echo (port 9000);
* ``time-server`` / ``time-client``: the strftime time server (port 9000);
* ``qq-server`` / ``qq-client``: the "QQ" one-to-one chat (port 8081).

Conventions shared by every subcommand: ``--ip``/``--port`` (servers bind there, clients talk to
that address; defaults as in the tutorial); prompts and program output on stdout, errors on
stderr; end of input (Ctrl-D), Ctrl-C and SIGTERM end the program with status 0 and no traceback;
a port in use or a bad address is one line on stderr and status 2.

On a terminal, the chat's ``server`` and ``client`` edit the input line with prompt_toolkit (the
``cli`` extra) when it is installed: messages logged while a line is half typed are printed above
the prompt, and the line stays as typed. Without it, when stdin or stdout is not a terminal, when
``TERM`` is ``dumb``, or when ``CHATUDP_PLAIN`` is set (to anything but ``0``), they read plain lines.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import os
import queue
import re
import select
import signal
import socket
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

__all__ = ["main"]

PROG = "chatudp"
EXIT_OK = 0
EXIT_USAGE = 2

LOG_FORMAT = "%(asctime)s %(threadName)s %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

QQ_LINE = "来自[%s:%s]的一条消息:\033[1;44m%s\033[0m"
QQ_NAMES = ("狗哥", "猴哥", "武大郎", "一棵树")
TIME_PROMPT = "请输入时间格式(例%Y %m %d)>>: "

Address = Tuple[Any, ...]


class Fatal(Exception):
    """An error that ends the program with one line on stderr and exit status 2."""


# -- small helpers ---------------------------------------------------------------------------


def _hostport(ip: str, port: object) -> str:
    """``127.0.0.1:9999``, or ``[::1]:9999`` for an IPv6 address."""
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


_RUST_OS_ERROR = re.compile(r"^(?P<text>.*?) \(os error (?P<errno>\d+)\)$")


def _error_text(exc: BaseException) -> str:
    """The text Python's own socket module would show: ``[Errno 98] Address already in use``."""
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.strerror:
            return f"[Errno {exc.errno}] {exc.strerror}"
        match = _RUST_OS_ERROR.match(str(exc))
        if match:
            return f"[Errno {match['errno']}] {match['text']}"
    text = str(exc)
    return text if text else type(exc).__name__


def _check_port(verb: str, ip: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise Fatal(f"cannot {verb} {_hostport(ip, port)}: port must be 0-65535")


def _resolve(verb: str, ip: str, port: int) -> Address:
    """Checks and resolves a remote address up front, so a bad one is reported at once."""
    _check_port(verb, ip, port)
    try:
        infos = socket.getaddrinfo(ip, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise Fatal(f"cannot {verb} {_hostport(ip, port)}: {_error_text(exc)}") from None
    if not infos:
        raise Fatal(f"cannot {verb} {_hostport(ip, port)}: no address found")
    return tuple(infos[0][4][:2])


def _open(verb: str, ip: str, port: int, factory: Callable[[], Any]) -> Any:
    """Runs ``factory`` (which binds or connects), turning its failure into a `Fatal` line."""
    if ip == "":
        _check_port(verb, ip, port)  # '' is the wildcard address, as in socket.bind
    else:
        _resolve(verb, ip, port)
    try:
        return factory()
    except (OSError, OverflowError, ValueError, UnicodeError) as exc:
        raise Fatal(f"cannot {verb} {_hostport(ip, port)}: {_error_text(exc)}") from None


def _out(*parts: object) -> None:
    print(*parts, flush=True)


def _err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class _Stdin:
    """Standard input, read a line at a time without ever blocking Ctrl-C.

    ``input()`` blocks in ``read(2)``; a signal that lands after the prompt is written but before
    that ``read`` starts is only acted on once a line arrives, so Ctrl-C or SIGTERM could be lost.
    Here every wait is a ``select`` of at most ``_SLICE`` seconds, and Python runs its signal
    handlers between two waits. Lines are read from the file descriptor itself (no hidden
    buffer), so :meth:`poll` can take type-ahead without blocking.
    """

    _SLICE = 0.2

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.eof = False
        stream = sys.stdin
        self._fd: Optional[int] = None
        self.tty = False
        self._encoding = "utf-8"
        if stream is not None:
            try:
                self._fd = stream.fileno()
                self.tty = stream.isatty()
            except (OSError, ValueError, AttributeError):
                self._fd = None
            self._encoding = getattr(stream, "encoding", None) or "utf-8"

    def _fill(self, timeout: Optional[float]) -> None:
        """Reads what is ready within ``timeout`` seconds (None: a slice) into the buffer."""
        if self._fd is None:
            try:
                line = input()
            except EOFError:
                self.eof = True
                return
            self._buffer.extend(line.encode(self._encoding, "replace") + b"\n")
            return
        try:
            ready, _, _ = select.select([self._fd], [], [], self._SLICE if timeout is None else timeout)
        except (OSError, ValueError):
            ready = [self._fd]  # not selectable: read, blocking
        if not ready:
            return
        data = os.read(self._fd, 65536)
        if data:
            self._buffer.extend(data)
        else:
            self.eof = True

    def _take_line(self) -> Optional[str]:
        end = self._buffer.find(b"\n")
        if end < 0:
            if not (self.eof and self._buffer):
                return None
            end = len(self._buffer)  # the last line, without its newline
        raw = bytes(self._buffer[:end])
        del self._buffer[: end + 1]
        return raw.decode(self._encoding, "replace").rstrip("\r")

    def readline(self) -> Optional[str]:
        """The next line without its line end; None at end of input."""
        while True:
            line = self._take_line()
            if line is not None:
                return line
            if self.eof:
                return None
            self._fill(None)

    def poll(self) -> List[str]:
        """The complete lines ready now, without waiting."""
        lines: List[str] = []
        while not self.eof:
            before = len(self._buffer)
            self._fill(0)
            if len(self._buffer) == before:
                break
        while True:
            line = self._take_line()
            if line is None:
                return lines
            lines.append(line)


_STDIN: Optional[_Stdin] = None


def _stdin() -> _Stdin:
    global _STDIN
    if _STDIN is None:
        _STDIN = _Stdin()
    return _STDIN


def _read(prompt: str) -> Optional[str]:
    """``input(prompt).strip()`` as the tutorial does, the prompt on stdout; None at end of input."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    stdin = _stdin()
    line = stdin.readline()
    if line is None:
        if stdin.tty:
            _out()  # leave the terminal on a fresh line after Ctrl-D
        return None
    return line.strip()


Reader = Callable[[str], Optional[str]]
PLAIN_ENV = "CHATUDP_PLAIN"


def _plain_forced() -> bool:
    return os.environ.get(PLAIN_ENV, "") not in ("", "0")


def _is_tty(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (OSError, ValueError, AttributeError):
        return False


class _LineEditor:
    """Lines read with prompt_toolkit, for a chat whose messages are logged while the user types.

    Every prompt runs on one event loop, kept open until :meth:`close`: the writer thread of
    ``patch_stdout`` hands text to the loop of the prompt it saw running, and a loop closed under
    it (as ``PromptSession.prompt`` closes its own after each line) would lose that text.
    """

    #: Set once a prompt has ended on Ctrl-C or SIGTERM: prompt_toolkit leaves the cursor on a
    #: fresh line then, so `main` need not print one.
    interrupted_at_prompt = False

    def __init__(self) -> None:
        from prompt_toolkit import PromptSession

        self._session: "PromptSession[str]" = PromptSession()
        self._loop = asyncio.new_event_loop()

    def read(self, prompt: str) -> Optional[str]:
        """``input(prompt).strip()``; None at Ctrl-D, KeyboardInterrupt at Ctrl-C."""
        task = self._loop.create_task(self._session.prompt_async(prompt))
        try:
            line = self._loop.run_until_complete(task)
        except EOFError:
            return None
        except BaseException as exc:
            # SIGTERM raises KeyboardInterrupt out of the loop, past the prompt: cancel it, so it
            # puts the terminal back the way it was.
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    self._loop.run_until_complete(task)
            if isinstance(exc, KeyboardInterrupt):
                _LineEditor.interrupted_at_prompt = True
            raise
        return line.strip()

    def close(self) -> None:
        """Runs what the writer thread handed to the loop last, then closes the loop."""
        try:
            for _ in range(3):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()


@contextlib.contextmanager
def _chat_input() -> Iterator[Reader]:
    """The line reader of the interactive chat: prompt_toolkit's, with ``patch_stdout`` so that
    what is printed or logged meanwhile goes above the input line, on a terminal where it is
    installed; else `_read`, plain lines."""
    editor: Optional[_LineEditor] = None
    patch: Any = None
    if not _plain_forced() and _is_tty(sys.stdin) and _is_tty(sys.stdout):
        try:
            from prompt_toolkit.patch_stdout import patch_stdout
            from prompt_toolkit.utils import is_dumb_terminal

            if not is_dumb_terminal():
                editor = _LineEditor()
                patch = patch_stdout
        except Exception:  # not installed, or cannot drive this terminal: plain lines
            editor = None
    if editor is None:
        yield _read
        return
    stderr = sys.stderr
    try:
        with patch():
            if not _is_tty(stderr):
                sys.stderr = stderr  # errors stay on their own stream when it is not the terminal
            yield editor.read
    finally:
        editor.close()


def _cleanup(*steps: Callable[[], object]) -> None:
    """Runs shutdown steps with Ctrl-C and SIGTERM held off, so a second Ctrl-C cannot leave a
    traceback or half-stopped threads behind."""
    in_main = threading.current_thread() is threading.main_thread()
    saved = []
    if in_main:
        for sig in (signal.SIGINT, signal.SIGTERM):
            saved.append((sig, signal.signal(sig, signal.SIG_IGN)))
    try:
        for step in steps:
            try:
                step()
            except Exception as exc:  # a failing stop must not hide the others
                _err(f"while stopping: {_error_text(exc)}")
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def _wait_for_signal(event: Optional[threading.Event] = None) -> None:
    """Blocks until Ctrl-C or SIGTERM (raised as KeyboardInterrupt), or until ``event`` is set."""
    while not (event is not None and event.is_set()):
        time.sleep(0.2)


class _StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A StreamHandler on whatever ``sys.stdout`` is when a record is written, so that records
    go through prompt_toolkit's ``patch_stdout`` while a prompt is up."""

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> Any:
        return sys.stdout

    @stream.setter
    def stream(self, value: Any) -> None:
        pass  # always sys.stdout


def _setup_logging(args: argparse.Namespace) -> None:
    """The tutorial's ``logging.basicConfig``, on stdout (it is the program's output)."""
    try:
        logging.Formatter(args.log_format).format(logging.makeLogRecord({"msg": "check"}))
    except (ValueError, KeyError, TypeError) as exc:
        raise Fatal(f"bad --log-format {args.log_format!r}: {exc}") from None
    logging.basicConfig(format=args.log_format, level=getattr(logging, args.log_level), handlers=[_StdoutHandler()])


def _stats_line(stats: Dict[str, Any], keys: Sequence[str] = ("received", "relayed", "sent")) -> str:
    return ", ".join(f"{key} {stats[key]}" for key in keys if key in stats)


# -- demo ------------------------------------------------------------------------------------

DEMO_NAMES = ("alice", "bob", "carol")
DEMO_SCRIPT = (
    ("alice", "Hello from alice"),
    ("bob", "hi alice, bob here"),
    ("carol", "hey all, carol too"),
    ("alice", "what's new?"),
    ("bob", "UDP: no connection, no guarantee"),
    ("carol", "你好"),
)


def cmd_demo(args: argparse.Namespace) -> int:
    from . import ChatUdpClient, ChatUdpServer

    events: "queue.Queue[Tuple[str, Any, Any]]" = queue.Queue()
    names: Dict[Address, str] = {}
    server = _open(
        "bind",
        args.ip,
        args.port,
        lambda: _started(
            ChatUdpServer(
                args.ip,
                args.port,
                10,
                on_message=lambda data, addr: None,  # the demo shows what the clients receive
                on_join=lambda addr: events.put(("join", addr, None)),
                on_leave=lambda addr, reason: events.put(("leave", addr, reason)),
                **({"bus": args.bus, "room": args.room} if args.bus else {}),
            )
        ),
    )
    relays = [server]
    if args.bus:
        relays.append(
            _open(
                "bind",
                args.ip,
                0,
                lambda: _started(
                    ChatUdpServer(
                        args.ip,
                        0,
                        10,
                        on_message=lambda data, addr: None,
                        on_join=lambda addr: events.put(("join", addr, None)),
                        on_leave=lambda addr, reason: events.put(("leave", addr, reason)),
                        bus=args.bus,
                        room=args.room,
                    )
                ),
            )
        )
    clients: Dict[str, Any] = {}

    def receiver(name: str) -> Callable[[bytes, Address], None]:
        return lambda data, addr: events.put(("got", name, data))

    def collect(expected_messages: int, expected_server: int = 0, timeout: float = 2.0) -> None:
        """Waits for one step's events, then prints them in a fixed order: server first, then
        the clients by name, so the output does not depend on thread timing."""
        got: List[Tuple[str, Any, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            messages = sum(1 for kind, _, _ in got if kind == "got")
            if messages >= expected_messages and len(got) - messages >= expected_server:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                got.append(events.get(timeout=min(remaining, 0.2)))
            except queue.Empty:
                continue
        for kind, who, detail in got:
            if kind == "join":
                _out(f"  server: {names.get(who, who)} joined from {_hostport(*who[:2])}")
            elif kind == "leave":
                _out(f"  server: {names.get(who, who)} left ({detail})")
        received = [(who, detail) for kind, who, detail in got if kind == "got"]
        for name in DEMO_NAMES:
            for who, data in received:
                if who == name:
                    _out(f"  {name} got: {data.decode('utf-8', 'replace')}")
                    counts[name] += 1
        missing = expected_messages - len(received)
        if missing > 0:
            _out(f"  ({missing} datagram(s) not seen within {timeout:g} s: UDP may lose them)")

    counts = {name: 0 for name in DEMO_NAMES}
    try:
        host, port = server.addr[0], server.addr[1]
        _out(f"chatudp demo: ChatUdpServer on {_hostport(host, port)}, clients {', '.join(DEMO_NAMES)}")
        if args.bus:
            _wait_federated(relays)
        for name in DEMO_NAMES:
            relay = relays[-1] if name == DEMO_NAMES[-1] else server
            client = ChatUdpClient(relay.addr[0], relay.addr[1], 1, on_message=receiver(name))
            clients[name] = client
            client.start()
            names[tuple(client.addr or ())] = name
        # A first heartbeat registers every client at once, as the heartbeat loop would.
        _out("each client sends a heartbeat (^hb^) to join")
        for name in DEMO_NAMES:
            clients[name].send("^hb^")
        collect(0, expected_server=len(DEMO_NAMES))

        steps = len(DEMO_SCRIPT) + 2
        slot = args.seconds / steps
        members = len(DEMO_NAMES)

        def say(name: str, text: str, expected: int, expected_server: int = 0) -> None:
            started = time.monotonic()
            client = clients[name]
            client.send(text)
            if text == "quit":
                client.stop()  # the tutorial's client stops right after sending quit
                _out(f"{name} says: quit, and stops")
            else:
                _out(f"{name} says: {text}")
            collect(expected, expected_server)
            rest = slot - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)

        for name, text in DEMO_SCRIPT:
            say(name, text, members)
        say("carol", "quit", 0, expected_server=1)
        members -= 1
        say("alice", "bye, bob", members)

        _out(f"server stops: Bye! to {members} clients")
        for relay in reversed(relays):
            relay.stop()
        collect(members)
        for client in clients.values():
            client.stop()
        _out(
            f"summary: server {_stats_line(server.stats)}; "
            + ", ".join(f"{name} got {counts[name]}" for name in DEMO_NAMES)
        )
    finally:
        _cleanup(*(client.stop for client in clients.values()), *(relay.stop for relay in relays))
    return EXIT_OK


def _wait_federated(relays: List[Any], timeout: float = 10.0) -> None:
    """Waits until the two relays of the demo see each other on the bus."""
    deadline = time.monotonic() + timeout
    while not all(relay.peers for relay in relays):
        if time.monotonic() > deadline:
            raise Fatal(f"the relays did not meet on the bus within {timeout:g} s: is the broker running?")
        time.sleep(0.05)
    second = relays[-1]
    backend = second.stats["bus"]["backend"]
    _out(f"a second relay on {_hostport(*second.addr[:2])} (carol's) joined the first through {backend}")


# -- the group chat --------------------------------------------------------------------------


def cmd_server(args: argparse.Namespace) -> int:
    from . import ChatUdpServer

    _setup_logging(args)
    federation: Dict[str, Any] = {"bus": args.bus, "room": args.room} if args.bus else {}
    server = _open(
        "bind", args.ip, args.port, lambda: _started(ChatUdpServer(args.ip, args.port, args.interval, **federation))
    )
    try:
        _out(f"chat server on {_hostport(*server.addr[:2])}; type quit to stop, any other line shows the clients")
        if args.bus:
            _out(f"room {args.room!r} on {', '.join(args.bus)}: other relays show as peers")
        with _chat_input() as read:
            while True:
                cmd = read(">> ")
                if cmd is None or cmd == "quit":
                    break
                logging.info(threading.enumerate())
                logging.info(server.clients)
                if args.bus:
                    logging.info("peers: %s; bus: %s", server.peers, server.stats["bus"])
    finally:
        _cleanup(server.stop)
    return EXIT_OK


def cmd_client(args: argparse.Namespace) -> int:
    from . import ChatUdpClient

    _setup_logging(args)
    client = _open("connect to", args.ip, args.port, lambda: _started(ChatUdpClient(args.ip, args.port, args.interval)))

    def leave() -> None:
        client.send("quit")  # as the tutorial does before stop(), so the server forgets us now

    try:
        with _chat_input() as read:
            while True:
                cmd = read(">> ")
                if cmd is None or cmd == "quit":
                    break
                try:
                    client.send(cmd)
                except OSError as exc:
                    _err(f"cannot send: {_error_text(exc)}")
    finally:
        _cleanup(leave, client.stop)
    return EXIT_OK


def _started(endpoint: Any) -> Any:
    endpoint.start()
    return endpoint


# -- echo and time ---------------------------------------------------------------------------


def _run_service(kind: str, cls: Any, args: argparse.Namespace, show: Callable[[bytes, Address], None]) -> int:
    """Runs an echo or time server until Ctrl-C or SIGTERM, printing each request as the tutorial
    does (from the server's callback thread; the answers do not wait for the printing)."""
    server = _open("bind", args.ip, args.port, lambda: _started(cls(args.ip, args.port, on_request=show)))
    try:
        _out(f"{kind} server on {_hostport(*server.addr[:2])}; Ctrl-C or SIGTERM stops it")
        _wait_for_signal(server.event)
    finally:
        _cleanup(server.stop)
        stats = getattr(server, "stats", None)
        if stats:
            _out(f"{kind} server stopped: {_stats_line(stats, ('received', 'answered', 'bad_requests', 'sent'))}")
    return EXIT_OK


def cmd_echo_server(args: argparse.Namespace) -> int:
    from .services import EchoServer

    return _run_service("echo", EchoServer, args, lambda data, addr: _out(data, tuple(addr)))


def cmd_time_server(args: argparse.Namespace) -> int:
    from .services import TimeServer

    return _run_service("time", TimeServer, args, lambda data, addr: _out("===>", data))


def _run_requests(args: argparse.Namespace, client: Any, prompt: str, show: Callable[[Any], str]) -> int:
    where = _hostport(args.ip, args.port)
    try:
        while True:
            line = _read(prompt)
            if line is None:
                break
            try:
                reply = client.request(line)
            except TimeoutError as exc:
                detail = str(exc) or f"no reply from {where} (--timeout {args.timeout:g} s, --retries {args.retries})"
                _err(f"{detail}: the request or its reply was lost")
                continue
            except OSError as exc:
                _err(f"request to {where} failed: {_error_text(exc)}")
                continue
            _out(show(reply))
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            _cleanup(close)
    return EXIT_OK


def _make_client(cls: Any, args: argparse.Namespace) -> Any:
    return _open(
        "talk to", args.ip, args.port, lambda: cls(args.ip, args.port, timeout=args.timeout, retries=args.retries)
    )


def cmd_echo_client(args: argparse.Namespace) -> int:
    from .services import EchoClient

    client = _make_client(EchoClient, args)
    return _run_requests(args, client, ">> ", lambda reply: bytes(reply).decode("utf-8", "replace"))


def cmd_time_client(args: argparse.Namespace) -> int:
    from .services import TimeClient

    client = _make_client(TimeClient, args)
    return _run_requests(args, client, TIME_PROMPT, str)


# -- QQ chat ---------------------------------------------------------------------------------


def _qq_show(data: bytes, addr: Address) -> None:
    _out(QQ_LINE % (addr[0], addr[1], bytes(data).decode("utf-8", "replace")))


def _qq_recv(peer: Any, timeout: Optional[float]) -> Tuple[bytes, Address]:
    """``peer.recvfrom`` in short slices, so Ctrl-C is seen at once; TimeoutError after
    ``timeout`` seconds (never, for None)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        if deadline is None:
            wait = 0.2
        else:
            wait = min(0.2, deadline - time.monotonic())
            if wait <= 0:
                raise TimeoutError(f"no datagram within {timeout:g} s")
        try:
            data, source = peer.recvfrom(timeout=max(wait, 0.001))
        except TimeoutError:
            continue
        return bytes(data), tuple(source)


class _TypeAhead:
    """Standard input while the QQ server waits on the network.

    Lines typed before there is a message to answer are kept, in order, and answer the next
    messages (what the tutorial's program does with type-ahead); end of input (Ctrl-D) is seen at
    once, not only at the next prompt.
    """

    def __init__(self) -> None:
        self.pending: "collections.deque[str]" = collections.deque()
        self._stdin = _stdin()

    @property
    def eof(self) -> bool:
        return self._stdin.eof

    def poll(self) -> None:
        """Takes the lines standard input has ready, without blocking."""
        for line in self._stdin.poll():
            self.pending.append(line.strip())
            if self._stdin.tty:
                _err("nothing to answer yet: this line will answer the next message")

    def reply(self, prompt: str) -> Optional[str]:
        """The next reply: a line typed ahead, else one read at ``prompt``; None at end of input."""
        if self.pending:
            line = self.pending.popleft()
            sys.stdout.write(prompt + (line + "\n" if self._stdin.tty else ""))
            sys.stdout.flush()
            return line
        return _read(prompt)


def cmd_qq_server(args: argparse.Namespace) -> int:
    from .services import QQPeer

    peer = _open("bind", args.ip, args.port, lambda: QQPeer(bind=(args.ip, args.port)))
    typed = _TypeAhead()
    try:
        _out(f"qq server on {_hostport(*peer.addr[:2])}; answer each message, Ctrl-D or Ctrl-C stops it")
        while True:
            typed.poll()
            if typed.eof and not typed.pending:
                break  # end of input: nothing left to answer with
            try:
                data, addr = peer.recvfrom(timeout=0.2)
            except TimeoutError:
                continue
            _qq_show(data, addr)
            reply = typed.reply("回复消息: ")
            if reply is None:
                break
            try:
                peer.sendto(reply.encode("utf-8"), addr)
            except OSError as exc:
                _err(f"cannot answer {_hostport(*addr[:2])}: {_error_text(exc)}")
    finally:
        _cleanup(peer.close)
    return EXIT_OK


def _parse_contact(text: str) -> Tuple[str, str, int]:
    """``NAME=IP:PORT`` (``NAME=[v6]:PORT`` for IPv6) -> (name, ip, port)."""
    name, sep, where = text.partition("=")
    name = name.strip()
    host, colon, port = where.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not name or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=IP:PORT, got {text!r}")
    return name, host, int(port)


def cmd_qq_client(args: argparse.Namespace) -> int:
    from .services import QQPeer

    table = args.contact or [(name, args.ip, args.port) for name in QQ_NAMES]
    contacts: Dict[str, Address] = {}
    for name, host, port in table:
        contacts[name] = _resolve("talk to", host, port)
    families = {":" in str(addr[0]) for addr in contacts.values()}
    if len(families) > 1:
        raise Fatal("contacts mix IPv4 and IPv6 addresses; use one family")
    bind = ("::", 0) if families == {True} else ("", 0)
    peer = _open("bind", bind[0], bind[1], lambda: QQPeer(bind=bind))
    try:
        while True:
            name = _read("请选择聊天对象: ")
            if name is None:
                break
            if name and name not in contacts:
                _err(f"unknown contact {name!r} (known: {', '.join(contacts)}); type quit to choose again")
            while True:
                msg = _read("请输入消息,回车发送: ")
                if msg is None:
                    return EXIT_OK
                if msg == "quit":
                    break
                if not msg or not name or name not in contacts:
                    continue
                _qq_exchange(peer, name, contacts[name], msg, args.timeout)
    finally:
        _cleanup(peer.close)
    return EXIT_OK


def _qq_exchange(peer: Any, name: str, addr: Address, msg: str, timeout: float) -> None:
    # Replies that came after their wait ran out are shown now, so they are not mistaken for
    # the answer to this message.
    while True:
        try:
            data, source = peer.recvfrom(timeout=0.001)
        except TimeoutError:
            break
        except OSError:
            break
        _qq_show(data, source)
    try:
        peer.sendto(msg.encode("utf-8"), addr)
    except OSError as exc:
        _err(f"cannot send to {name} at {_hostport(*addr[:2])}: {_error_text(exc)}")
        return
    try:
        data, source = _qq_recv(peer, timeout)
    except TimeoutError:
        _err(f"no reply from {name} at {_hostport(*addr[:2])} within {timeout:g} s: the message or its reply was lost")
        return
    except OSError as exc:
        _err(f"no reply from {name} at {_hostport(*addr[:2])}: {_error_text(exc)}")
        return
    _qq_show(data, source)


# -- argument parsing ------------------------------------------------------------------------

_STOP_NOTE = "Ctrl-D (end of input) or Ctrl-C ends it with status 0."
_EDIT_NOTE = (
    "; on a terminal, with prompt_toolkit installed (the 'cli' extra), above the line being typed, which "
    f"stays as it is ({PLAIN_ENV}=1 reads plain lines instead). "
)
_SERVICE_NOTE = (
    "It has no input loop: it runs until Ctrl-C or SIGTERM (status 0) and ignores standard input. "
    "A port in use or a bad address: one line on stderr, status 2."
)


def _port(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None


def _seconds(text: str) -> float:
    """A finite number of seconds, >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text!r}")
    return value


def _add_request_options(parser: argparse.ArgumentParser) -> None:
    """--timeout and --retries of the echo and time clients."""
    parser.add_argument("--timeout", type=_positive_seconds, default=2.0, help="seconds to wait for a reply (default 2)")
    parser.add_argument(
        "--retries", type=_count, default=2, help="times a request is sent again when no reply comes (default 2)"
    )


def _add_bus_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--bus",
        action="append",
        metavar="URL",
        help="join the relays of --room on this broker: nats://host:4222 (repeat for the nodes of a cluster) "
        "or redis://host:6379/0",
    )
    parser.add_argument("--room", default="chatudp", help="relays on the same bus and room form one chat")


def _positive_seconds(text: str) -> float:
    """A finite number of seconds, > 0."""
    value = _seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


def _count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(LOG_LEVELS)}")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Every UDP program of the tutorial, on chatudp's Rust core.",
        epilog="Run 'chatudp SUBCOMMAND --help' for the options of each. Start with: chatudp demo",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")

    def add(
        name: str, summary: str, details: str, func: Callable[[argparse.Namespace], int], ip: str, port: int, role: str
    ) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {details}")
        where = "address to bind" if role == "server" else "address of the server"
        p.add_argument("--ip", default=ip, help=f"{where} (default {ip})")
        p.add_argument(
            "--port",
            type=_port,
            default=port,
            help=f"port (default {port}{', 0 picks a free one' if role == 'server' else ''})",
        )
        p.set_defaults(func=func)
        return p

    def add_logging(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-level", type=_log_level, default="INFO", help="logging level (default INFO)")
        p.add_argument("--log-format", default=LOG_FORMAT, help="logging format (default %(default)r)")

    p = add(
        "demo",
        "a server and three clients chat for a few seconds on loopback, then exit",
        "Shows the Acks each client receives and the server's counters.",
        cmd_demo,
        "127.0.0.1",
        0,
        "server",
    )
    p.add_argument("--seconds", type=_seconds, default=3.0, help="how long the chat lasts (default 3)")
    p.add_argument(
        "--bus", action="append", metavar="URL", help="run two relays joined through this broker; carol uses the second"
    )
    p.add_argument("--room", default="chatudp-demo", help="the room of the two relays (default chatudp-demo)")

    p = add(
        "server",
        "the tutorial's group-chat server (ChatUdpServer) with its '>> ' prompt",
        "Type quit to stop; any other line shows the live threads and the clients table. "
        "Received messages are logged to stdout" + _EDIT_NOTE + _STOP_NOTE,
        cmd_server,
        "127.0.0.1",
        9999,
        "server",
    )
    p.add_argument(
        "--interval", type=_positive_seconds, default=10, help="seconds of silence before a client expires (default 10)"
    )
    _add_bus_options(p)
    add_logging(p)

    p = add(
        "client",
        "the tutorial's group-chat client (ChatUdpClient) with its '>> ' prompt",
        "Each line is sent to the server; quit (and Ctrl-D, Ctrl-C) sends quit to the server and stops. "
        "Received messages are logged to stdout" + _EDIT_NOTE.rstrip(),
        cmd_client,
        "127.0.0.1",
        9999,
        "client",
    )
    p.add_argument("--interval", type=_positive_seconds, default=10, help="seconds between heartbeats (default 10)")
    add_logging(p)

    add(
        "echo-server",
        "the upper-casing echo server: answers each datagram with data.upper()",
        "Prints each request as the tutorial does. " + _SERVICE_NOTE,
        cmd_echo_server,
        "127.0.0.1",
        9000,
        "server",
    )

    p = add(
        "echo-client",
        "the echo client: sends each line typed at '>> ' and prints the answer",
        "A lost reply is reported on stderr and the next line is read. " + _STOP_NOTE,
        cmd_echo_client,
        "127.0.0.1",
        9000,
        "client",
    )
    _add_request_options(p)

    add(
        "time-server",
        "the time server: answers time.strftime(format) of local time",
        "An empty datagram means '%Y-%m-%d %X'. Prints each request ('===> b...'). " + _SERVICE_NOTE,
        cmd_time_server,
        "127.0.0.1",
        9000,
        "server",
    )

    p = add(
        "time-client",
        "the time client: asks the time in the strftime format you type",
        "Prompt '请输入时间格式(例%Y %m %d)>>: '; an empty line asks for '%Y-%m-%d %X'. A lost reply is "
        "reported on stderr and the next line is read. " + _STOP_NOTE,
        cmd_time_client,
        "127.0.0.1",
        9000,
        "client",
    )
    _add_request_options(p)

    add(
        "qq-server",
        "the 'QQ' chat server: shows each message and sends back the reply you type",
        "Prompt '回复消息: '; lines typed before a message arrives answer the next messages in order. "
        "Ctrl-D (end of input), Ctrl-C or SIGTERM ends it with status 0; with replies typed ahead, it ends once "
        "they are used.",
        cmd_qq_server,
        "127.0.0.1",
        8081,
        "server",
    )

    p = add(
        "qq-client",
        "the 'QQ' chat client: pick a contact by name, then chat with it",
        "Prompts '请选择聊天对象: ' then '请输入消息,回车发送: ' (quit goes back to choosing). A lost reply "
        "is reported on stderr after --timeout seconds and the next message is read. " + _STOP_NOTE,
        cmd_qq_client,
        "127.0.0.1",
        8081,
        "client",
    )
    p.add_argument(
        "--contact",
        action="append",
        type=_parse_contact,
        metavar="NAME=IP:PORT",
        help="a contact (repeatable); default: the tutorial's four names, all on --ip:--port",
    )
    p.add_argument("--timeout", type=_positive_seconds, default=5.0, help="seconds to wait for a reply (default 5)")
    from ._collect_cli import register as add_collect_commands

    add_collect_commands(sub)
    return parser


# -- entry point -----------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _prepare_streams() -> None:
    for stream, options in (
        (sys.stdout, {"line_buffering": True, "errors": "backslashreplace"}),
        (sys.stderr, {"errors": "backslashreplace"}),
        (sys.stdin, {"errors": "replace"}),
    ):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            try:
                reconfigure(**options)
            except (ValueError, OSError):
                pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``chatudp`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    _prepare_streams()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if sys.stdout is not None and sys.stdout.isatty() and not _LineEditor.interrupted_at_prompt:
            _out()
        return EXIT_OK
    except Fatal as exc:
        _err(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        # stdout went away (e.g. piped into head): nothing more to say.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except OSError as exc:
        # A network failure nothing above expected: one line, no traceback.
        _err(_error_text(exc))
        return 1
