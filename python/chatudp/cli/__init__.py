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
every error (a bad option, a port in use, a bad address) is one line on stderr and status 2.

On a terminal, the chat's ``server`` and ``client`` (and the QQ client) edit the input line with
prompt_toolkit when it is installed, else with readline: messages logged while a line is half
typed are printed above the prompt, and the line stays as typed. When stdin or stdout is not a
terminal, when ``TERM`` is ``dumb``, or when ``CHATUDP_PLAIN`` is set (to anything but ``0``),
they read plain lines. Without a terminal, end of input does not stop the chat ``server``: it
serves until a signal, as with ``--no-input``.

Layout: one module per program (`demo`, `chat`, `echo`, `clock`, `qq`), each with a
``register(subparsers)`` that adds its subcommands; `_args` (addresses, errors, argument types)
and `_terminal` (standard input, line editor, logging, signals) are shared by all.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from typing import Optional, Sequence

from . import chat, clock, collect, demo, echo, qq
from ._args import EXIT_OK, EXIT_USAGE, PROG, Fatal, Parser, error_text
from ._terminal import LineEditor, err, interrupt, out, prepare_streams

__all__ = ["build_parser", "main"]

#: The programs, in the order ``--help`` lists them; each adds its subcommands.
PROGRAMS = (demo, chat, echo, clock, qq, collect)


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``chatudp``: one subcommand per program of the tutorial, plus ``demo``."""
    from .. import __version__

    parser = Parser(
        prog=PROG,
        description="Every UDP program of the tutorial, on chatudp's Rust core.",
        epilog="Run 'chatudp SUBCOMMAND --help' for the options of each. Start with: chatudp demo",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="SUBCOMMAND")
    for program in PROGRAMS:
        program.register(sub)
    return parser


def _quiet_stdout() -> None:
    """stdout went away (e.g. piped into head): send what is still written to /dev/null."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs ``chatudp`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prepare_streams()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        if sys.stdout is not None and sys.stdout.isatty() and not LineEditor.interrupted_at_prompt:
            out()
        return EXIT_OK
    except Fatal as exc:
        err(str(exc))
        return EXIT_USAGE
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except OSError as exc:
        # A network failure nothing above expected: one line, no traceback.
        err(error_text(exc))
        return 1
