"""Argument and address helpers shared by every program of the command line."""

from __future__ import annotations

import argparse
import re
import socket
from typing import Any, Callable, Tuple

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
    "; on a terminal, with prompt_toolkit installed (the 'cli' extra), above the line being typed, which "
    f"stays as it is ({PLAIN_ENV}=1 reads plain lines instead). "
)
SERVICE_NOTE = (
    "It has no input loop: it runs until Ctrl-C or SIGTERM (status 0) and ignores standard input. "
    "A port in use or a bad address: one line on stderr, status 2."
)


class Fatal(Exception):
    """An error that ends the program with one line on stderr and exit status 2."""


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


def seconds(text: str) -> float:
    """A finite number of seconds, >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds >= 0, not {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """A finite number of seconds, > 0."""
    value = seconds(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0 seconds")
    return value


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
