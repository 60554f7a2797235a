"""Argument and address helpers shared by every program of the command line."""

from __future__ import annotations

import argparse
import re
import socket
from typing import Any, Callable, Dict, NoReturn, Tuple

PROG = "chatudp"
EXIT_OK = 0
EXIT_USAGE = 2

LOG_FORMAT = "%(asctime)s %(threadName)s %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
PLAIN_ENV = "CHATUDP_PLAIN"

Address = Tuple[Any, ...]
Command = Callable[[argparse.Namespace], int]

STOP_NOTE = "Ctrl-D (end of input) or Ctrl-C ends it with status 0."
EDIT_NOTE = (
    "; on a terminal, above the line being typed, which stays as it is (prompt_toolkit edits it when installed, "
    f"the 'cli' extra; readline otherwise; {PLAIN_ENV}=1 reads plain lines instead). "
)
SERVICE_NOTE = (
    "It has no input loop: it runs until Ctrl-C or SIGTERM (status 0) and ignores standard input. "
    "A port in use or a bad address: one line on stderr, status 2."
)


class Fatal(Exception):
    """An error that ends the program with one line on stderr and exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error said in one line on stderr (status 2), not the whole usage."""

    def error(self, message: str) -> "NoReturn":
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# -- addresses and errors --------------------------------------------------------------------


def hostport(ip: str, port: object) -> str:
    """``127.0.0.1:9999``, or ``[::1]:9999`` for an IPv6 address."""
    return f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"


_RUST_OS_ERROR = re.compile(r"^(?P<text>.*?) \(os error (?P<errno>\d+)\)$")


def error_text(exc: BaseException) -> str:
    """The text Python's own socket module would show: ``[Errno 98] Address already in use``."""
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.strerror:
            return f"[Errno {exc.errno}] {exc.strerror}"
        match = _RUST_OS_ERROR.match(str(exc))
        if match:
            return f"[Errno {match['errno']}] {match['text']}"
    text = str(exc)
    return text if text else type(exc).__name__


def check_port(verb: str, ip: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise Fatal(f"cannot {verb} {hostport(ip, port)}: port must be 0-65535")


def resolve(verb: str, ip: str, port: int) -> Address:
    """Checks and resolves a remote address up front, so a bad one is reported at once."""
    check_port(verb, ip, port)
    try:
        infos = socket.getaddrinfo(ip, port, type=socket.SOCK_DGRAM)
    except (OSError, UnicodeError) as exc:
        raise Fatal(f"cannot {verb} {hostport(ip, port)}: {error_text(exc)}") from None
    if not infos:
        raise Fatal(f"cannot {verb} {hostport(ip, port)}: no address found")
    return tuple(infos[0][4][:2])


def open_endpoint(verb: str, ip: str, port: int, factory: Callable[[], Any]) -> Any:
    """Runs ``factory`` (which binds or connects), turning its failure into a `Fatal` line."""
    if ip == "":
        check_port(verb, ip, port)  # '' is the wildcard address, as in socket.bind
    else:
        resolve(verb, ip, port)
    try:
        return factory()
    except (OSError, OverflowError, ValueError, UnicodeError) as exc:
        raise Fatal(f"cannot {verb} {hostport(ip, port)}: {error_text(exc)}") from None


def started(endpoint: Any) -> Any:
    endpoint.start()
    return endpoint


# -- argument types --------------------------------------------------------------------------


def port_number(text: str) -> int:
    try:
        return int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None


#: The longest wait any option takes: the library's bound on every number of seconds.
MAX_SECONDS = 1e9


def _number_of_seconds(text: str, zero_allowed: bool) -> float:
    low = ">= 0" if zero_allowed else "> 0"
    accepted = f"a number of seconds {low} and at most {MAX_SECONDS:.0f}"
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {accepted}, not {text!r}") from None
    if not (value >= 0 if zero_allowed else value > 0) or not value <= MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"must be {accepted}, not {text!r}")
    return value


def seconds(text: str) -> float:
    """A number of seconds, >= 0 (and finite, at most `MAX_SECONDS`)."""
    return _number_of_seconds(text, zero_allowed=True)


def positive_seconds(text: str) -> float:
    """A number of seconds, > 0 (and at most `MAX_SECONDS`): timeouts, intervals."""
    return _number_of_seconds(text, zero_allowed=False)


interval_seconds = positive_seconds


def count(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {value}")
    return value


def log_level(text: str) -> str:
    level = text.upper()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(LOG_LEVELS)}")
    return level


# -- subcommands -----------------------------------------------------------------------------


def add_program(
    sub: Any, name: str, summary: str, details: str, func: Command, ip: str, port: int, role: str
) -> argparse.ArgumentParser:
    """One subcommand with the options every program has: ``--ip`` and ``--port``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=summary, description=f"{summary[0].upper()}{summary[1:]}. {details}"
    )
    where = "address to bind" if role == "server" else "address of the server"
    parser.add_argument("--ip", default=ip, help=f"{where} (default {ip})")
    free = ", 0 picks a free one" if role == "server" else ""
    parser.add_argument("--port", type=port_number, default=port, help=f"port (default {port}{free})")
    parser.set_defaults(func=func)
    return parser


def add_logging(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log-level", type=log_level, default="INFO", help="logging level (default INFO)")
    parser.add_argument("--log-format", default=LOG_FORMAT, help="logging format (default %(default)r)")


def add_request_options(parser: argparse.ArgumentParser) -> None:
    """--timeout and --retries of the echo and time clients."""
    parser.add_argument("--timeout", type=positive_seconds, default=2.0, help="seconds to wait for a reply (default 2)")
    parser.add_argument(
        "--retries", type=count, default=2, help="times a request is sent again when no reply comes (default 2)"
    )


def add_bus(parser: argparse.ArgumentParser, room: bool) -> None:
    parser.add_argument(
        "--bus",
        metavar="URL",
        help="join relays through this broker: nats://host:port or redis://host:port/db (several NATS URLs of "
        "one cluster: comma-separated); see docs/FEDERATION.md",
    )
    if room:
        parser.add_argument("--room", metavar="NAME", help="the room on the bus (default chatudp); needs --bus")


def bus_options(args: argparse.Namespace, room: str = "chatudp") -> Dict[str, Any]:
    """``bus=``/``room=`` for ChatUdpServer from --bus and --room, checked here so that a bad URL
    is said as such (not as a failure to bind)."""
    from .. import _core

    room = getattr(args, "room", None) or room
    if args.bus is None:
        if getattr(args, "room", None) is not None:
            raise Fatal("--room needs --bus URL (the broker the relays of the room share)")
        return {}
    urls = [url.strip() for url in args.bus.split(",") if url.strip()]
    try:
        _core.ServerConfig(bus=urls, room=room)  # checks the URLs and the room, nothing else
    except (TypeError, ValueError) as exc:
        raise Fatal(f"bad --bus {args.bus!r}: {exc}") from None
    return {"bus": urls, "room": room}


def shown_url(url: str) -> str:
    """A bus URL as it may be printed: a password (or token) in it replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at:
        return url
    user, colon, _ = userinfo.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}" if user and colon else f"{scheme}://***@{host}"
