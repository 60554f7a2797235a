"""Terminal helpers shared by every program: output, standard input read without blocking
Ctrl-C, the chat's line editor, logging, signals and shutdown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import os
import select
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

from ._args import PLAIN_ENV, PROG, Fatal, error_text

Reader = Callable[[str], Optional[str]]


def out(*parts: object) -> None:
    print(*parts, flush=True)


def err(message: str) -> None:
    print(f"{PROG}: {message}", file=sys.stderr, flush=True)


class Stdin:
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


_STDIN: Optional[Stdin] = None


def stdin() -> Stdin:
    global _STDIN
    if _STDIN is None:
        _STDIN = Stdin()
    return _STDIN


def read(prompt: str) -> Optional[str]:
    """``input(prompt).strip()`` as the tutorial does, the prompt on stdout; None at end of input."""
    sys.stdout.write(prompt)
    sys.stdout.flush()
    source = stdin()
    line = source.readline()
    if line is None:
        if source.tty:
            out()  # leave the terminal on a fresh line after Ctrl-D
        return None
    return line.strip()


def plain_forced() -> bool:
    return os.environ.get(PLAIN_ENV, "") not in ("", "0")


def is_tty(stream: Any) -> bool:
    try:
        return stream is not None and bool(stream.isatty())
    except (OSError, ValueError, AttributeError):
        return False


class LineEditor:
    """Lines read with prompt_toolkit, for a chat whose messages are logged while the user types.

    Every prompt runs on one event loop, kept open until :meth:`close`: the writer thread of
    ``patch_stdout`` hands text to the loop of the prompt it saw running, and a loop closed under
    it (as ``PromptSession.prompt`` closes its own after each line) would lose that text.
    prompt_toolkit is imported by name, at run time only, so that the package (and type checks of
    it) work where it is not installed.
    """

    #: Set once a prompt has ended on Ctrl-C or SIGTERM: prompt_toolkit leaves the cursor on a
    #: fresh line then, so `main` need not print one.
    interrupted_at_prompt = False

    def __init__(self) -> None:
        self._session: Any = importlib.import_module("prompt_toolkit").PromptSession()
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
                LineEditor.interrupted_at_prompt = True
            raise
        return str(line).strip()

    def close(self) -> None:
        """Runs what the writer thread handed to the loop last, then closes the loop."""
        try:
            for _ in range(3):
                self._loop.run_until_complete(asyncio.sleep(0))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()


class ReadlineInput:
    """Lines read with readline (``input()``), for a chat on a terminal without prompt_toolkit.

    While the prompt is up, what other threads print or log is written above it: the prompt line
    is cleared (ANSI ``CR``, erase line), the text printed, then the prompt drawn again with the
    line typed so far (``readline.get_line_buffer()``), so a message never lands inside a
    half-typed line. This keeps the default install free of dependencies; prompt_toolkit (the
    ``cli`` extra) does the same more thoroughly (a cursor moved left within the line is put
    back at its end here). readline acts on a signal only while it waits for a key: a Ctrl-C
    that lands in between is seen at the next key or signal.
    """

    _CLEAR = "\r\x1b[K"

    def __init__(self, readline: Any) -> None:
        self._readline = readline
        self._lock = threading.RLock()
        self._prompt: Optional[str] = None
        self._partial: Dict[int, str] = {}
        self._stdout = sys.stdout

    def read(self, prompt: str) -> Optional[str]:
        """``input(prompt).strip()``; None at Ctrl-D, KeyboardInterrupt at Ctrl-C."""
        with self._lock:
            self._prompt = prompt
        try:
            line: Optional[str] = input(prompt)
        except EOFError:
            line = None
        finally:
            with self._lock:
                self._prompt = None
        if line is None:
            out()  # Ctrl-D leaves the cursor after the prompt
            return None
        return line.strip()

    def write(self, stream: Any, text: str) -> int:
        """Writes ``text`` to ``stream``; complete lines go above the prompt while it is up."""
        with self._lock:
            if self._prompt is None:
                return int(stream.write(text))
            pending = self._partial.pop(id(stream), "") + text
            lines, newline, rest = pending.rpartition("\n")
            if rest:
                self._partial[id(stream)] = rest
            if newline:
                stream.write(self._CLEAR + lines + newline)
                stream.flush()
                self._stdout.write(self._prompt + self._readline.get_line_buffer())
                self._stdout.flush()
            return len(text)


class RedrawingStream:
    """``sys.stdout`` or ``sys.stderr`` while a `ReadlineInput` prompt is up."""

    def __init__(self, stream: Any, editor: ReadlineInput) -> None:
        self._stream = stream
        self._editor = editor

    def write(self, text: str) -> int:
        return self._editor.write(self._stream, text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _can_edit() -> bool:
    return not plain_forced() and is_tty(sys.stdin) and is_tty(sys.stdout)


def _line_editor() -> Optional[Any]:
    """``(editor, patch_stdout)`` where prompt_toolkit can drive this terminal, else None."""
    if not _can_edit():
        return None
    try:
        patch_stdout = importlib.import_module("prompt_toolkit.patch_stdout").patch_stdout
        if importlib.import_module("prompt_toolkit.utils").is_dumb_terminal():
            return None
        return LineEditor(), patch_stdout
    except Exception:  # not installed, or cannot drive this terminal: readline or plain lines
        return None


def _readline_input() -> Optional[ReadlineInput]:
    if not _can_edit() or os.environ.get("TERM", "") in ("", "dumb", "unknown"):
        return None
    try:
        return ReadlineInput(importlib.import_module("readline"))
    except ImportError:
        return None


@contextlib.contextmanager
def chat_input() -> Iterator[Reader]:
    """The line reader of the interactive chat on a terminal: prompt_toolkit's where it is
    installed, with ``patch_stdout`` so that what is printed or logged meanwhile goes above the
    input line; else readline's, redrawing the line the same way (`ReadlineInput`). Without a
    terminal (or with CHATUDP_PLAIN set), `read`: plain lines."""
    found = _line_editor()
    stdout, stderr = sys.stdout, sys.stderr
    if found is None:
        editor = _readline_input()
        if editor is None:
            yield read
            return
        try:
            sys.stdout = RedrawingStream(stdout, editor)
            if is_tty(stderr):
                sys.stderr = RedrawingStream(stderr, editor)
            yield editor.read
        finally:
            sys.stdout, sys.stderr = stdout, stderr
        return
    line_editor, patch = found
    try:
        with patch():
            if not is_tty(stderr):
                sys.stderr = stderr  # errors stay on their own stream when it is not the terminal
            yield line_editor.read
    finally:
        line_editor.close()


def cleanup(*steps: Callable[[], object]) -> None:
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
                err(f"while stopping: {error_text(exc)}")
    finally:
        for sig, handler in saved:
            signal.signal(sig, handler)


def wait_for_signal(event: Optional[threading.Event] = None) -> None:
    """Blocks until Ctrl-C or SIGTERM (raised as KeyboardInterrupt), or until ``event`` is set."""
    while not (event is not None and event.is_set()):
        time.sleep(0.2)


class StdoutHandler(logging.StreamHandler):  # type: ignore[type-arg]
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


def setup_logging(args: argparse.Namespace) -> None:
    """The tutorial's ``logging.basicConfig``, on stdout (it is the program's output)."""
    try:
        logging.Formatter(args.log_format).format(logging.makeLogRecord({"msg": "check"}))
    except (ValueError, KeyError, TypeError) as exc:
        raise Fatal(f"bad --log-format {args.log_format!r}: {exc}") from None
    logging.basicConfig(format=args.log_format, level=getattr(logging, args.log_level), handlers=[StdoutHandler()])


def stats_line(stats: Dict[str, Any], keys: Sequence[str] = ("received", "relayed", "sent")) -> str:
    return ", ".join(f"{key} {stats[key]}" for key in keys if key in stats)


def interrupt(signum: int, frame: object) -> None:
    """SIGTERM handler: ends the program as Ctrl-C does."""
    raise KeyboardInterrupt


def end_main_thread() -> None:
    """From any thread: ends what the main thread waits for (input, a prompt, a sleep) as
    SIGTERM does, by sending SIGTERM to that thread alone."""
    ident = threading.main_thread().ident
    if ident is not None:
        signal.pthread_kill(ident, signal.SIGTERM)


def prepare_streams() -> None:
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
