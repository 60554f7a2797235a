"""What the echo and time programs share: a server that runs until a signal, and a client that
sends each line typed and prints the answer."""

from __future__ import annotations

import argparse
from typing import Any, Callable

from ._args import EXIT_OK, Address, error_text, hostport, open_endpoint, started
from ._terminal import cleanup, err, out, read, stats_line, wait_for_signal


def run_service(kind: str, cls: Any, args: argparse.Namespace, show: Callable[[bytes, Address], None]) -> int:
    """Runs an echo or time server until Ctrl-C or SIGTERM, printing each request as the tutorial
    does (from the server's callback thread; the answers do not wait for the printing)."""
    server = open_endpoint("bind", args.ip, args.port, lambda: started(cls(args.ip, args.port, on_request=show)))
    try:
        out(f"{kind} server on {hostport(*server.addr[:2])}; Ctrl-C or SIGTERM stops it")
        wait_for_signal(server.event)
    finally:
        cleanup(server.stop)
        stats = getattr(server, "stats", None)
        if stats:
            out(f"{kind} server stopped: {stats_line(stats, ('received', 'answered', 'bad_requests', 'sent'))}")
    return EXIT_OK


def run_requests(args: argparse.Namespace, client: Any, prompt: str, show: Callable[[Any], str]) -> int:
    where = hostport(args.ip, args.port)
    try:
        while True:
            line = read(prompt)
            if line is None:
                break
            try:
                reply = client.request(line)
            except TimeoutError as exc:
                detail = str(exc) or f"no reply from {where} (--timeout {args.timeout:g} s, --retries {args.retries})"
                # Refused: the kernel reported the port closed, so nothing was lost on the way.
                err(detail if getattr(exc, "refused", False) else f"{detail}: the request or its reply was lost")
                continue
            except OSError as exc:
                err(f"request to {where} failed: {error_text(exc)}")
                continue
            out(show(reply))
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            cleanup(close)
    return EXIT_OK


def make_client(cls: Any, args: argparse.Namespace) -> Any:
    return open_endpoint(
        "talk to", args.ip, args.port, lambda: cls(args.ip, args.port, timeout=args.timeout, retries=args.retries)
    )
