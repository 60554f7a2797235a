"""``chatudp qq-server`` and ``chatudp qq-client``: the "QQ" one-to-one chat (port 8081)."""

from __future__ import annotations

import argparse
import collections
import queue
import sys
import threading
import time
from typing import Any, Dict, Optional, Tuple

from ._args import (
    EXIT_OK,
    STOP_NOTE,
    Address,
    Fatal,
    add_program,
    error_text,
    hostport,
    open_endpoint,
    positive_seconds,
    resolve,
)
from ._terminal import chat_input, cleanup, err, is_tty, out, read, stdin

QQ_LINE = "来自[%s:%s]的一条消息:\033[1;44m%s\033[0m"
QQ_PLAIN = "来自[%s:%s]的一条消息:%s"
QQ_NAMES = ("狗哥", "猴哥", "武大郎", "一棵树")


def qq_show(data: bytes, addr: Address) -> None:
    """The tutorial's line; its colour codes only when stdout is a terminal."""
    line = QQ_LINE if is_tty(sys.stdout) else QQ_PLAIN
    out(line % (addr[0], addr[1], bytes(data).decode("utf-8", "replace")))


class TypeAhead:
    """Standard input while the QQ server waits on the network.

    Lines typed before there is a message to answer are kept, in order, and answer the next
    messages (what the tutorial's program does with type-ahead); end of input (Ctrl-D) is seen at
    once, not only at the next prompt.
    """

    def __init__(self) -> None:
        self.pending: "collections.deque[str]" = collections.deque()
        self._stdin = stdin()

    @property
    def eof(self) -> bool:
        return self._stdin.eof

    def poll(self) -> None:
        """Takes the lines standard input has ready, without blocking."""
        for line in self._stdin.poll():
            self.pending.append(line.strip())
            if self._stdin.tty:
                err("nothing to answer yet: this line will answer the next message")

    def reply(self, prompt: str) -> Optional[str]:
        """The next reply: a line typed ahead, else one read at ``prompt``; None at end of input."""
        if self.pending:
            line = self.pending.popleft()
            sys.stdout.write(prompt + (line + "\n" if self._stdin.tty else ""))
            sys.stdout.flush()
            return line
        return read(prompt)


def cmd_qq_server(args: argparse.Namespace) -> int:
    from ..services import QQPeer

    peer = open_endpoint("bind", args.ip, args.port, lambda: QQPeer(bind=(args.ip, args.port)))
    typed = TypeAhead()
    try:
        out(f"qq server on {hostport(*peer.addr[:2])}; answer each message, Ctrl-D or Ctrl-C stops it")
        while True:
            typed.poll()
            if typed.eof and not typed.pending:
                break  # end of input: nothing left to answer with
            try:
                data, addr = peer.recvfrom(timeout=0.2)
            except TimeoutError:
                continue
            qq_show(data, addr)
            reply = typed.reply("回复消息: ")
            if reply is None:
                break
            try:
                peer.sendto(reply.encode("utf-8"), addr)
            except OSError as exc:
                err(f"cannot answer {hostport(*addr[:2])}: {error_text(exc)}")
    finally:
        cleanup(peer.close)
    return EXIT_OK


def parse_contact(text: str) -> Tuple[str, str, int]:
    """``NAME=IP:PORT`` (``NAME=[v6]:PORT`` for IPv6) -> (name, ip, port)."""
    name, sep, where = text.partition("=")
    name = name.strip()
    host, colon, port = where.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not name or not colon or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=IP:PORT, got {text!r}")
    return name, host, int(port)


def _contacts(args: argparse.Namespace) -> Dict[str, Address]:
    table = args.contact or [(name, args.ip, args.port) for name in QQ_NAMES]
    contacts: Dict[str, Address] = {}
    for name, host, port in table:
        contacts[name] = resolve("talk to", host, port)
    return contacts


class Replies:
    """The QQ client's receiver: a thread that shows every datagram as it arrives, so that a
    reply that comes after ``--timeout`` is shown when it comes instead of being lost, and tells
    the main thread which sources were heard."""

    def __init__(self, peer: Any) -> None:
        self._peer = peer
        self._heard: "queue.Queue[Address]" = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chatudp-qq-receive", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, source = self._peer.recvfrom(timeout=0.2)
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            qq_show(data, source)
            self._heard.put(tuple(source))

    def forget(self) -> None:
        """Forgets the sources heard so far (replies already shown)."""
        while True:
            try:
                self._heard.get_nowait()
            except queue.Empty:
                return

    def wait_from(self, addr: Address, timeout: float) -> bool:
        """Waits (in short slices, so Ctrl-C is seen at once) until ``addr`` was heard."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            try:
                source = self._heard.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if same_address(source, addr):
                return True

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def same_address(source: Address, addr: Address) -> bool:
    return source[1] == addr[1] and (source[0] == addr[0] or str(addr[0]) in ("0.0.0.0", "::"))


def cmd_qq_client(args: argparse.Namespace) -> int:
    from ..services import QQPeer

    contacts = _contacts(args)
    families = {":" in str(addr[0]) for addr in contacts.values()}
    if len(families) > 1:
        raise Fatal("contacts mix IPv4 and IPv6 addresses; use one family")
    bind = ("::", 0) if families == {True} else ("", 0)
    peer = open_endpoint("bind", bind[0], bind[1], lambda: QQPeer(bind=bind))
    replies = Replies(peer)
    names = ", ".join(contacts)
    try:
        with chat_input() as read:
            out(f"contacts: {names}")
            while True:
                name = read("请选择聊天对象: ")
                if name is None:
                    break
                if name not in contacts:
                    if name:
                        err(f"unknown contact {name!r}; choose one of: {names}")
                    continue
                if not qq_chat(read, peer, replies, name, contacts[name], args.timeout):
                    break
    finally:
        cleanup(replies.close, peer.close)
    return EXIT_OK


def qq_chat(read: Any, peer: Any, replies: Replies, name: str, addr: Address, timeout: float) -> bool:
    """Messages to one contact until quit (True: choose again) or end of input (False)."""
    where = hostport(*addr[:2])
    while True:
        msg = read("请输入消息,回车发送: ")
        if msg is None:
            return False
        if msg == "quit":
            return True
        if not msg:
            continue
        replies.forget()
        try:
            peer.sendto(msg.encode("utf-8"), addr)
        except OSError as exc:
            err(f"cannot send to {name} at {where}: {error_text(exc)}")
            continue
        if not replies.wait_from(addr, timeout):
            err(f"no reply from {name} at {where} within {timeout:g} s yet; a late reply is shown when it comes")


def register(sub: Any) -> None:
    add_program(
        sub,
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
    parser = add_program(
        sub,
        "qq-client",
        "the 'QQ' chat client: pick a contact by name, then chat with it",
        "Lists the contacts, then prompts '请选择聊天对象: ' (an unknown name asks again) and '请输入消息,回车发送: ' "
        "(quit goes back to choosing). Replies are shown as they come; when none came within --timeout seconds "
        "that is said on stderr, the next message is read, and a late reply is still shown. " + STOP_NOTE,
        cmd_qq_client,
        "127.0.0.1",
        8081,
        "client",
    )
    parser.add_argument(
        "--contact",
        action="append",
        type=parse_contact,
        metavar="NAME=IP:PORT",
        help="a contact (repeatable); default: the tutorial's four names, all on --ip:--port",
    )
    parser.add_argument("--timeout", type=positive_seconds, default=5.0, help="seconds to wait for a reply (default 5)")
