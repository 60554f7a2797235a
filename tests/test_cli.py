"""The command line, ``python -m chatudp SUBCOMMAND``, driven as a subprocess.

Every program runs in a child process with scripted stdin (a pty only where the prompt must go to
a terminal); stdlib sockets play the other end. Every wait is bounded and every child is killed in
teardown if it is still alive.
"""

from __future__ import annotations

import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

LOOPBACK = "127.0.0.1"
TIMEOUT = 20.0
QQ_PROMPT_NAME = "请选择聊天对象: "
QQ_PROMPT_MSG = "请输入消息,回车发送: "
QQ_PROMPT_REPLY = "回复消息: "
TIME_PROMPT = "请输入时间格式(例%Y %m %d)>>: "
SUBCOMMANDS = (
    "demo",
    "server",
    "client",
    "echo-server",
    "echo-client",
    "time-server",
    "time-client",
    "qq-server",
    "qq-client",
)

ENV = dict(os.environ, PYTHONIOENCODING="utf-8", TERM="dumb", PYTHONDONTWRITEBYTECODE="1")
ENV.pop("PYTHONSTARTUP", None)

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # Started from a background job of a shell script: SIGINT is ignored here and in every child,
    # and Python then keeps it ignored. Give the children Python's usual Ctrl-C back, so the
    # Ctrl-C tests test the CLI rather than the environment.
    COMMAND = [
        sys.executable,
        "-c",
        "import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "sys.argv[0] = 'chatudp'; runpy.run_module('chatudp', run_name='__main__', alter_sys=True)",
    ]
else:
    COMMAND = [sys.executable, "-m", "chatudp"]


def qq_line(ip: str, port: int, text: str, colour: bool = False) -> str:
    """The tutorial's QQ line; its colour codes only on a terminal."""
    if colour:
        return "来自[%s:%s]的一条消息:\033[1;44m%s\033[0m" % (ip, port, text)
    return "来自[%s:%s]的一条消息:%s" % (ip, port, text)


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


class Cli:
    """One ``python -m chatudp ...`` child; stdout and stderr are collected by reader threads."""

    def __init__(self, args: Tuple[str, ...], use_pty: bool = False) -> None:
        self.args = args
        self.use_pty = use_pty
        self._out = bytearray()
        self._err = bytearray()
        self._lock = threading.Lock()
        self._readers: List[threading.Thread] = []
        cmd = [*COMMAND, *args]
        if use_pty:
            import pty

            self._master, slave = pty.openpty()
            try:
                self.proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=ENV, bufsize=0)
            finally:
                os.close(slave)
            self._spawn_reader(lambda: _read_fd(self._master), self._out)
        else:
            self._master = -1
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=ENV,
                bufsize=0,
            )
            stdout = self.proc.stdout
            assert stdout is not None
            self._spawn_reader(lambda: stdout.read(65536), self._out)
        stderr = self.proc.stderr
        assert stderr is not None
        self._spawn_reader(lambda: stderr.read(65536), self._err)

    def _spawn_reader(self, read: Callable[[], Optional[bytes]], into: bytearray) -> None:
        def loop() -> None:
            while True:
                try:
                    chunk = read()
                except OSError:  # EIO from a pty whose child has gone
                    return
                if not chunk:
                    return
                with self._lock:
                    into.extend(chunk)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        self._readers.append(thread)

    @property
    def out(self) -> str:
        with self._lock:
            return self._out.decode("utf-8", "replace")

    @property
    def err(self) -> str:
        with self._lock:
            return self._err.decode("utf-8", "replace")

    def expect(self, text: str, count: int = 1, timeout: float = 10.0) -> str:
        """Waits until stdout holds ``text`` (``count`` times); returns stdout."""
        try:
            wait_for(lambda: self.out.count(text) >= count, timeout, f"{text!r} x{count} on stdout")
        except AssertionError:
            raise AssertionError(f"{text!r} not seen; stdout={self.out!r} stderr={self.err!r}") from None
        return self.out

    def expect_err(self, text: str, timeout: float = 10.0) -> str:
        try:
            wait_for(lambda: text in self.err, timeout, f"{text!r} on stderr")
        except AssertionError:
            raise AssertionError(f"{text!r} not seen; stdout={self.out!r} stderr={self.err!r}") from None
        return self.err

    def bound(self) -> Tuple[str, int]:
        """The address a server subcommand reports on its first line (``... on IP:PORT; ...``)."""
        match = re.search(r" on (\S+):(\d+);", self.expect(";"))
        assert match, self.out
        return match.group(1), int(match.group(2))

    def write(self, text: str) -> None:
        data = text.encode("utf-8")
        if self.use_pty:
            os.write(self._master, data)
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()

    def end_input(self) -> None:
        """Ctrl-D: end of input."""
        if self.use_pty:
            os.write(self._master, b"\x04")
        else:
            assert self.proc.stdin is not None
            self.proc.stdin.close()

    def interrupt(self) -> None:
        self.proc.send_signal(signal.SIGINT)

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Waits for the child to exit and for its output; returns the exit status."""
        rc = self.proc.wait(timeout=timeout)
        for thread in self._readers:
            thread.join(timeout=5)
        return rc

    def cleanup(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        for thread in self._readers:
            thread.join(timeout=5)
        if self._master >= 0:
            os.close(self._master)
            self._master = -1


def _read_fd(fd: int) -> bytes:
    return os.read(fd, 65536)


def run(args: Tuple[str, ...], stdin: str = "", timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """A one-shot run with all of stdin given at once."""
    return subprocess.run(
        [*COMMAND, *args],
        input=stdin.encode("utf-8"),
        capture_output=True,
        env=ENV,
        timeout=timeout,
    )


def text(completed: subprocess.CompletedProcess) -> Tuple[str, str]:
    return completed.stdout.decode("utf-8", "replace"), completed.stderr.decode("utf-8", "replace")


@pytest.fixture
def cli() -> Iterator[Callable[..., Cli]]:
    started: List[Cli] = []

    def start(*args: str, use_pty: bool = False) -> Cli:
        child = Cli(args, use_pty=use_pty)
        started.append(child)
        return child

    yield start
    for child in started:
        child.cleanup()


class Udp:
    """A stdlib UDP socket on loopback, the other end of a client or server subcommand."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.port: int = self.sock.getsockname()[1]

    def recv(self, timeout: float = 10.0) -> Tuple[bytes, Tuple[str, int]]:
        self.sock.settimeout(timeout)
        return self.sock.recvfrom(65535)

    def recv_chat(self, timeout: float = 10.0) -> Tuple[bytes, Tuple[str, int]]:
        """The next datagram that is not a heartbeat."""
        deadline = time.monotonic() + timeout
        while True:
            data, addr = self.recv(max(0.01, deadline - time.monotonic()))
            if data != b"^hb^":
                return data, addr

    def request(self, data: bytes, to: Tuple[str, int], timeout: float = 10.0) -> bytes:
        self.sock.sendto(data, to)
        return self.recv(timeout)[0]

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp() -> Iterator[Callable[[], Udp]]:
    made: List[Udp] = []

    def make() -> Udp:
        sock = Udp()
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close()


class Responder:
    """A stdlib UDP server in a thread: answers each datagram with ``answer(data)`` (None: no answer)."""

    def __init__(self, answer: Callable[[bytes], Optional[bytes]]) -> None:
        self.udp = Udp()
        self.port = self.udp.port
        self.received: List[bytes] = []
        self._answer = answer
        self._stop = threading.Event()
        self.udp.sock.settimeout(0.05)
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.udp.sock.recvfrom(65535)
            except (socket.timeout, OSError):
                continue
            self.received.append(data)
            reply = self._answer(data)
            if reply is not None:
                self.udp.sock.sendto(reply, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.udp.close()


@pytest.fixture
def responder() -> Iterator[Callable[[Callable[[bytes], Optional[bytes]]], Responder]]:
    made: List[Responder] = []

    def make(answer: Callable[[bytes], Optional[bytes]]) -> Responder:
        server = Responder(answer)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback UDP port held by this process for the whole test."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback UDP port where nothing listens, held for the whole test so no other socket can
    take it: a socket bound there but connected elsewhere gets none of the datagrams sent to it,
    and the kernel answers them with ICMP port unreachable, as for a closed port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((LOOPBACK, 0))
    sock.connect((LOOPBACK, 9))
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


def services() -> None:
    pytest.importorskip("chatudp.services")


def assert_clean(child: Cli) -> None:
    assert "Traceback" not in child.err, child.err


# -- the parser --------------------------------------------------------------------------------


def test_no_subcommand_prints_help_and_exits_2() -> None:
    completed = run(())
    out, err = text(completed)
    assert completed.returncode == 2
    assert "usage: chatudp" in err
    for name in SUBCOMMANDS:
        assert name in err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_every_subcommand_has_help(name: str) -> None:
    completed = run((name, "--help"))
    out, err = text(completed)
    assert completed.returncode == 0, err
    assert out.startswith(f"usage: chatudp {name}")
    assert "--ip" in out and "--port" in out
    assert err == ""


def test_top_level_help_lists_every_subcommand() -> None:
    out, _ = text(run(("--help",)))
    for name in SUBCOMMANDS:
        assert re.search(rf"^\s+{re.escape(name)}\b", out, re.M), name


def test_console_entry_point_is_main() -> None:
    from chatudp.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0


# -- demo --------------------------------------------------------------------------------------


def test_demo_shows_acks_in_a_fixed_order_and_exits_0() -> None:
    completed = run(("demo", "--seconds", "0.5"))
    out, err = text(completed)
    assert completed.returncode == 0, err
    assert err == ""
    assert "Ack b'" in out
    lines = out.splitlines()
    # Every client receives alice's first message, printed alice, bob, carol.
    acks = [line.strip() for line in lines if "Ack b'HELLO FROM ALICE'" in line]
    assert [line.split(" got:")[0] for line in acks] == ["alice", "bob", "carol"]
    sender = re.search(r"Ack b'HELLO FROM ALICE'\. from (127\.0\.0\.1):(\d+)$", acks[0])
    assert sender, acks[0]
    assert re.search(rf"server: alice joined from 127\.0\.0\.1:{sender.group(2)}$", out, re.M)
    assert 'Ack b"WHAT\'S NEW?".' in out  # Python's quote choice, from the Rust core
    assert "server: carol left (quit)" in out
    bye = [line.strip() for line in lines if line.strip().endswith("got: Bye!")]
    assert bye == ["alice got: Bye!", "bob got: Bye!"]
    summary = lines[-1]
    assert re.match(r"summary: server received \d+, relayed 7, sent \d+; alice got 8, bob got 8, carol got 6$", summary)


def test_demo_port_in_use(busy_port: int) -> None:
    completed = run(("demo", "--port", str(busy_port)))
    out, err = text(completed)
    assert completed.returncode == 2
    assert err.startswith(f"chatudp: cannot bind 127.0.0.1:{busy_port}: [Errno ")
    assert "Address already in use" in err
    assert err.count("\n") == 1
    assert out == ""


def test_demo_ctrl_c_exits_0(cli: Callable[..., Cli]) -> None:
    child = cli("demo", "--seconds", "30")
    child.expect("says:")
    child.interrupt()
    assert child.finish() == 0
    assert_clean(child)


# -- errors common to every subcommand ---------------------------------------------------------


@pytest.mark.parametrize("name", ["server", "demo", "echo-server", "time-server", "qq-server"])
def test_port_in_use_is_one_line_and_status_2(name: str, busy_port: int) -> None:
    if name not in ("server", "demo"):
        services()
    completed = run((name, "--port", str(busy_port)))
    out, err = text(completed)
    assert completed.returncode == 2, (out, err)
    assert err == f"chatudp: cannot bind 127.0.0.1:{busy_port}: [Errno 98] Address already in use\n"


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_bad_address_is_one_line_and_status_2(name: str) -> None:
    if name not in ("server", "client", "demo"):
        services()
    completed = run((name, "--ip", "999.1.1.1", "--port", "9"))
    out, err = text(completed)
    assert completed.returncode == 2, (out, err)
    assert re.fullmatch(r"chatudp: cannot [a-z ]+ 999\.1\.1\.1:9: .+\n", err), err
    assert "Traceback" not in err


@pytest.mark.parametrize("name", ["server", "client"])
def test_port_out_of_range_is_one_line_and_status_2(name: str) -> None:
    completed = run((name, "--port", "70000"))
    _, err = text(completed)
    assert completed.returncode == 2
    assert re.fullmatch(r"chatudp: cannot [a-z ]+ 127\.0\.0\.1:70000: port must be 0-65535\n", err), err


@pytest.mark.parametrize(
    "args, accepted",
    [
        (("demo", "--seconds", "1e308"), "--seconds: must be a number of seconds >= 0 and at most 1000000000, not '1e308'"),
        (("demo", "--seconds", "nan"), "--seconds: must be a number of seconds >= 0"),
        (("server", "--interval", "1e308"), "--interval: must be a number of seconds > 0 and at most 1000000000"),
        (("server", "--interval", "-3"), "--interval: must be a number of seconds > 0 and at most 1000000000, not '-3'"),
        (("client", "--interval", "0"), "--interval: must be a number of seconds > 0"),
        (("echo-client", "--timeout", "inf"), "--timeout: must be a number of seconds > 0"),
        (("qq-client", "--timeout", "x"), "--timeout: must be a number of seconds > 0"),
        (("server", "--port", "http"), "--port: not a port number: 'http'"),
        (("server", "--room", "lobby"), "--room needs --bus URL"),
        (("server", "--bus", "ftp://x"), "bad --bus 'ftp://x': bus must be a nats://"),
        (("demo", "--bus", "mqtt://x"), "bad --bus 'mqtt://x'"),
        (("server", "--no-such-option"), "unrecognized arguments: --no-such-option"),
    ],
)
def test_every_argument_error_is_one_line_and_status_2(args: Tuple[str, ...], accepted: str) -> None:
    completed = run(args)
    out, err = text(completed)
    assert completed.returncode == 2, (out, err)
    assert err.count("\n") == 1 and err.startswith("chatudp"), err
    assert accepted in err
    assert "Traceback" not in err and "cannot bind" not in err
    assert out == ""


# -- the group chat: server --------------------------------------------------------------------


def test_chat_server_relays_logs_and_shows_the_clients_table(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = cli("server", "--port", "0")
    ip, port = server.bound()
    server.expect(">> ")
    peer = udp()
    ack = peer.request(b"hello", (ip, port))
    assert ack == f"Ack b'HELLO'. from {LOOPBACK}:{peer.port}".encode()
    out = server.expect(f"('{LOOPBACK}', {peer.port})")
    # the tutorial's log format, after the prompt the line was logged under
    assert re.search(r"^(>> )*\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \S+ b'hello'$", out, re.M), out
    server.write("\n")  # any other line: the live threads and the clients table
    out = server.expect("<_MainThread(MainThread")
    out = server.expect(f"{{('{LOOPBACK}', {peer.port}): ")
    server.write("quit\n")
    assert server.finish() == 0
    assert peer.recv()[0] == b"Bye!"
    assert server.out.count(">> ") == 2
    assert_clean(server)
    assert server.err == ""


def test_chat_server_without_a_terminal_serves_on_after_end_of_input(
    cli: Callable[..., Cli], udp: Callable[[], Udp]
) -> None:
    server = cli("server", "--port", "0")
    ip, port = server.bound()
    server.expect(">> ")
    server.end_input()  # a pipe, </dev/null, a service manager: end of input is not a stop
    server.expect("end of input: serving on until Ctrl-C or SIGTERM")
    peer = udp()
    assert peer.request(b"still there", (ip, port)).startswith(b"Ack b'STILL THERE'")
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert peer.recv()[0] == b"Bye!"
    assert_clean(server)
    assert server.err == ""


def test_chat_server_with_stdin_from_dev_null_serves_until_sigint(udp: Callable[[], Udp]) -> None:
    with open(os.devnull, "rb") as devnull:
        proc = subprocess.Popen(
            [*COMMAND, "server", "--port", "0"], stdin=devnull, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()
        match = re.search(r" on (\S+):(\d+);", line)
        assert match, line
        peer = udp()
        assert peer.request(b"up", (match.group(1), int(match.group(2)))).startswith(b"Ack b'UP'")
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
        assert b"Traceback" not in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate(timeout=5)


def test_chat_server_no_input_ignores_stdin_and_stops_on_sigterm(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = cli("server", "--port", "0", "--no-input")
    ip, port = server.bound()
    assert "no input: Ctrl-C or SIGTERM stops it" in server.out
    server.write("quit\n")  # not read
    server.end_input()
    peer = udp()
    assert peer.request(b"hello", (ip, port)).startswith(b"Ack b'HELLO'")
    server.expect(" joined: 127.0.0.1:")  # joins and leaves at INFO
    assert ">> " not in server.out
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert_clean(server)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_chat_server_signal_exits_0(cli: Callable[..., Cli], sig: int) -> None:
    server = cli("server", "--port", "0")
    server.expect(">> ")
    server.proc.send_signal(sig)
    assert server.finish() == 0
    assert_clean(server)


def test_chat_server_log_level_warning_hides_messages(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = cli("server", "--port", "0", "--log-level", "warning")
    ip, port = server.bound()
    peer = udp()
    assert peer.request(b"quiet", (ip, port)).startswith(b"Ack b'QUIET'")
    server.write("quit\n")
    assert server.finish() == 0
    assert "quiet" not in server.out


# -- the group chat: client --------------------------------------------------------------------


def test_chat_client_sends_lines_logs_replies_and_quits(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = udp()
    client = cli("client", "--port", str(server.port), "--interval", "0.2")
    client.expect(">> ")
    client.write("hello\n")
    data, addr = server.recv_chat()
    assert data == b"hello"
    assert server.recv()[0] == b"^hb^"  # the heartbeat runs
    server.sock.sendto(f"Ack b'HELLO'. from {addr[0]}:{addr[1]}".encode(), addr)
    out = client.expect("Ack b'HELLO'")
    assert re.search(rf"""^(>> )*\d{{4}}-.* b"Ack b'HELLO'\. from 127\.0\.0\.1:{addr[1]}"$""", out, re.M), out
    client.write("quit\n")
    assert server.recv_chat()[0] == b"quit"
    assert client.finish() == 0
    assert client.err == ""


def test_chat_client_announces_itself_at_start(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = udp()
    client = cli("client", "--port", str(server.port), "--interval", "1000")
    data, addr = server.recv(TIMEOUT)
    assert data == b"^hb^"  # at once, not after --interval seconds
    client.expect(f"chat client of the server at 127.0.0.1:{server.port}, from 127.0.0.1:{addr[1]}; type quit to leave")
    client.end_input()
    assert client.finish() == 0


def test_chat_client_says_once_that_the_server_is_unreachable(cli: Callable[..., Cli], closed_port: int) -> None:
    closed = closed_port
    client = cli("client", "--port", str(closed), "--interval", "0.1")
    client.expect_err(f"chatudp: server 127.0.0.1:{closed} unreachable: the network reports its port closed")
    for line in ("one", "two", "three"):
        client.write(line + "\n")
    client.expect(">> ", count=4)
    time.sleep(0.5)  # heartbeats and messages meet the closed port meanwhile
    client.end_input()
    assert client.finish() == 0
    assert client.err.count("unreachable") == 1, client.err
    assert "reachable again" not in client.err
    assert_clean(client)


def test_chat_client_end_of_input_sends_quit_and_exits_0(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = udp()
    client = cli("client", "--port", str(server.port))
    client.expect(">> ")
    client.end_input()
    assert server.recv_chat()[0] == b"quit"
    assert client.finish() == 0
    assert client.err == ""


def test_chat_client_on_a_terminal_prompts_on_stdout_and_stops_on_ctrl_c(
    cli: Callable[..., Cli], udp: Callable[[], Udp]
) -> None:
    server = udp()
    client = cli("client", "--port", str(server.port), use_pty=True)
    client.expect(">> ")
    client.write("over a tty\r")
    assert server.recv_chat()[0] == b"over a tty"
    client.expect(">> ", count=2)
    client.interrupt()
    assert server.recv_chat()[0] == b"quit"
    assert client.finish() == 0
    assert_clean(client)
    assert ">> " not in client.err


def test_chat_client_ctrl_d_on_a_terminal_exits_0(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    server = udp()
    client = cli("client", "--port", str(server.port), use_pty=True)
    client.expect(">> ")
    client.end_input()
    assert server.recv_chat()[0] == b"quit"
    assert client.finish() == 0
    assert_clean(client)


def test_chat_server_and_client_subcommands_talk(cli: Callable[..., Cli]) -> None:
    server = cli("server", "--port", "0")
    ip, port = server.bound()
    client = cli("client", "--ip", ip, "--port", str(port))
    client.expect(">> ")
    client.write("hi there\n")
    client.expect("Ack b'HI THERE'. from 127.0.0.1:")
    server.expect("b'hi there'")
    server.write("quit\n")
    assert server.finish() == 0
    client.expect("b'Bye!'")
    # The server said Bye!: the client says so and ends by itself, with status 0.
    assert client.finish() == 0
    assert f"the server at {ip}:{port} stopped (it said Bye!); exiting" in client.out
    assert_clean(server)
    assert_clean(client)


def test_chat_client_stay_keeps_waiting_after_bye_and_says_unreachable_then_back(cli: Callable[..., Cli]) -> None:
    server = cli("server", "--port", "0", "--interval", "5")
    ip, port = server.bound()
    client = cli("client", "--ip", ip, "--port", str(port), "--interval", "0.2", "--stay")
    client.expect(f"chat client of the server at {ip}:{port}, from 127.0.0.1:")
    server.expect(" joined: 127.0.0.1:")  # announced at start
    server.write("quit\n")
    assert server.finish() == 0
    client.expect("waiting for it to come back (--stay)")
    client.expect_err(f"server {ip}:{port} unreachable")  # its heartbeats meet a closed port
    again = cli("server", "--ip", ip, "--port", str(port), "--no-input")
    again.expect(" joined: 127.0.0.1:", timeout=TIMEOUT)
    client.expect_err(f"server {ip}:{port} reachable again", timeout=TIMEOUT)
    assert client.err.count("unreachable") == 1  # said once, not per heartbeat
    assert client.proc.poll() is None
    client.end_input()
    assert client.finish() == 0
    again.proc.send_signal(signal.SIGTERM)
    assert again.finish() == 0
    assert_clean(client)


# -- the group chat on a terminal: the input line stays intact ------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PTY_DEADLINE = 8.0  # the whole of one terminal session, well under the 10 s a test may take
HIDE_PROMPT_TOOLKIT = (
    "import runpy, signal, sys; sys.modules['prompt_toolkit'] = None; "
    "signal.signal(signal.SIGINT, signal.default_int_handler); "
    "sys.argv[0] = 'chatudp'; runpy.run_module('chatudp', run_name='__main__', alter_sys=True)"
)


class PtyChat:
    """A ``server`` or ``client`` subcommand on a terminal of its own (a pty, 80x24, TERM=xterm).

    Output is read here with ``select`` and a deadline, never by an unbounded read; it answers the
    cursor position requests prompt_toolkit sends, as a terminal does. ``mode`` "plain" sets
    CHATUDP_PLAIN=1; "no prompt_toolkit" runs it with prompt_toolkit not importable.
    """

    def __init__(self, args: Tuple[str, ...], mode: str = "prompt_toolkit") -> None:
        import fcntl
        import pty
        import struct
        import termios

        self.deadline = time.monotonic() + PTY_DEADLINE
        self.master, self.slave = pty.openpty()
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        self.modes = termios.tcgetattr(self.slave)
        env = dict(ENV, TERM="xterm")
        env.pop("PROMPT_TOOLKIT_NO_CPR", None)
        env.pop("CHATUDP_PLAIN", None)
        command = COMMAND
        if mode == "plain":
            env["CHATUDP_PLAIN"] = "1"
        elif mode == "no prompt_toolkit":
            command = [sys.executable, "-c", HIDE_PROMPT_TOOLKIT]
        self.raw = bytearray()
        self._answered = 0
        self._closed = False
        self.proc = subprocess.Popen(
            [*command, *args], stdin=self.slave, stdout=self.slave, stderr=subprocess.PIPE, env=env
        )

    def _pump(self, wait: float) -> None:
        if self._closed:
            time.sleep(wait)
            return
        ready, _, _ = select.select([self.master], [], [], wait)
        if not ready:
            return
        try:
            data = os.read(self.master, 65536)
        except OSError:  # EIO: no process holds the terminal any more
            data = b""
        if not data:
            self._closed = True
            return
        self.raw.extend(data)
        requests = self.raw.count(b"\x1b[6n")
        while self._answered < requests:
            os.write(self.master, b"\x1b[1;1R")
            self._answered += 1

    def expect(self, text: str, start: int = 0) -> int:
        """Waits until the output from byte ``start`` on holds ``text``; returns where it is."""
        needle = text.encode("utf-8")
        while True:
            found = self.raw.find(needle, start)
            if found >= 0:
                return found
            remaining = self.deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{text!r} not seen on the terminal; output={bytes(self.raw)!r}")
            self._pump(min(remaining, 0.1))

    def settle(self, seconds: float) -> None:
        """Reads (and answers) what comes within ``seconds``."""
        end = min(time.monotonic() + seconds, self.deadline)
        while time.monotonic() < end:
            self._pump(max(0.0, min(end - time.monotonic(), 0.05)))

    def type(self, text: str) -> None:
        os.write(self.master, text.encode("utf-8"))

    def finish(self) -> Tuple[int, str]:
        """Waits (within the deadline) for the exit status; returns it and stderr."""
        while self.proc.poll() is None:
            if time.monotonic() > self.deadline:
                raise AssertionError(f"still running; output={bytes(self.raw)!r}")
            self._pump(0.05)
        self.settle(0.1)
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read().decode("utf-8", "replace")

    def text(self, start: int = 0) -> str:
        """The output from byte ``start`` on, without its escape sequences."""
        return ANSI.sub("", self.raw[start:].decode("utf-8", "replace"))

    def close(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        for fd in (self.master, self.slave):
            os.close(fd)


@pytest.fixture
def pty_chat() -> Iterator[Callable[..., PtyChat]]:
    started: List[PtyChat] = []

    def start(*args: str, mode: str = "prompt_toolkit") -> PtyChat:
        child = PtyChat(args, mode=mode)
        started.append(child)
        return child

    yield start
    for child in started:
        child.close()


def needs_prompt_toolkit() -> None:
    pytest.importorskip("prompt_toolkit")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("mode", ["prompt_toolkit", "plain", "no prompt_toolkit"])
def test_chat_client_on_a_terminal_keeps_the_typed_line_while_a_message_arrives(
    pty_chat: Callable[..., PtyChat], mode: str
) -> None:
    from chatudp import ChatUdpClient, ChatUdpServer

    if mode == "prompt_toolkit":
        needs_prompt_toolkit()
    received: List[bytes] = []
    joined: List[Tuple[str, int]] = []
    left: List[str] = []
    server = ChatUdpServer(
        LOOPBACK,
        0,
        10,
        on_message=lambda data, addr: received.append(bytes(data)),
        on_join=lambda addr: joined.append(tuple(addr)),
        on_leave=lambda addr, reason: left.append(reason),
    )
    server.start()
    peer = ChatUdpClient(LOOPBACK, server.addr[1], 10, on_message=lambda data, addr: None)
    try:
        chat = pty_chat("client", "--port", str(server.addr[1]), "--interval", "0.2", mode=mode)
        chat.expect(">>")
        wait_for(lambda: joined, 5, "the client's first heartbeat")
        chat.type("hel")
        typed = chat.expect("hel")
        peer.start()
        peer.send("hello from peer")
        ack = chat.expect("Ack b'HELLO FROM PEER'. from 127.0.0.1:", typed)
        if mode == "prompt_toolkit":
            # The prompt line is erased, the message printed on a line of its own, then the prompt
            # is drawn again below it with the half-typed line as it was.
            assert b"\x1b[J" in chat.raw[typed:ack], bytes(chat.raw[typed:])
            chat.expect("hel", ack)
            assert re.search(r"PEER'\. from 127\.0\.0\.1:\d+\"\r?\n[^\n]*>> hel", chat.text(typed)), chat.text(typed)
        elif mode == "no prompt_toolkit":
            # readline: the prompt line is cleared (CR, erase line), the message printed on a line
            # of its own, and the prompt drawn again with what was typed so far.
            chat.expect(">> hel", ack)
            after = bytes(chat.raw[typed:])
            assert re.search(rb"hel\r\x1b\[K[^\n]*PEER'\. from 127\.0\.0\.1:\d+\"\r?\n>> hel", after), after
        else:
            assert b"\x1b[" not in chat.raw, bytes(chat.raw)  # no line editing: plain lines
        chat.type("lo world\r")
        wait_for(lambda: received[-1:] == [b"hello world"], 5, "the finished line at the server")
        assert received == [b"hello from peer", b"hello world"]
        done = chat.expect("Ack b'HELLO WORLD'", ack)
        # Ctrl-D once the prompt is back: prompt_toolkit prints a message with the terminal in
        # cooked mode for a moment, where Ctrl-D is the end of a read and not a key.
        if mode == "prompt_toolkit":
            chat.expect(">>", done)
        chat.settle(0.3)
        chat.type("\x04")  # Ctrl-D at an empty prompt: quit sent, status 0
        status, err = chat.finish()
        assert status == 0, err
        assert err == ""
        wait_for(lambda: left, 5, "the client to leave")
        assert left == ["quit"]
    finally:
        peer.stop()
        server.stop()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("key", ["\x03", "\x04"])
def test_chat_client_readline_ctrl_c_and_ctrl_d_send_quit_and_exit_0(
    pty_chat: Callable[..., PtyChat], udp: Callable[[], Udp], key: str
) -> None:
    server = udp()
    chat = pty_chat("client", "--port", str(server.port), mode="no prompt_toolkit")
    chat.deadline += 15  # generous: this test may run beside other work
    chat.expect(">> ")
    assert server.recv(10)[0] == b"^hb^"
    if key == "\x03":
        chat.type("never sent")
        chat.expect("never sent")
    chat.type(key)  # Ctrl-D ends input at an empty prompt only, as in any readline program
    if key == "\x03":
        # A signal that lands just before readline waits is seen at the next key or signal.
        for _ in range(20):
            chat.settle(0.5)
            if chat.proc.poll() is not None:
                break
            chat.proc.send_signal(signal.SIGINT)
    status, err = chat.finish()
    assert status == 0, err
    assert "Traceback" not in err
    assert server.recv_chat(10)[0] == b"quit"


@pytest.mark.timeout(30)
def test_chat_server_readline_logs_above_the_typed_line(pty_chat: Callable[..., PtyChat], udp: Callable[[], Udp]) -> None:
    chat = pty_chat("server", "--port", "0", mode="no prompt_toolkit")
    chat.deadline += 15
    at = chat.expect(">> ")
    match = re.search(r" on (\S+):(\d+);", chat.text())
    assert match, chat.text()
    chat.type("qu")
    typed = chat.expect("qu", at)
    peer = udp()
    assert peer.request(b"hello", (match.group(1), int(match.group(2))), 10).startswith(b"Ack b'HELLO'")
    logged = chat.expect(f"('{LOOPBACK}', {peer.port})", typed)
    chat.expect(">> qu", logged)
    after = bytes(chat.raw[typed:])
    assert re.search(rb"\r\x1b\[K[^\n]* b'hello'\r?\n>> qu", after), after
    chat.type("it\r")  # the two halves make quit
    status, err = chat.finish()
    assert status == 0, err
    assert err == ""
    assert peer.recv(10)[0] == b"Bye!"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode", ["prompt_toolkit", "no prompt_toolkit"])
def test_chat_client_on_a_terminal_exits_0_when_the_server_says_bye(pty_chat: Callable[..., PtyChat], mode: str) -> None:
    from chatudp import ChatUdpServer

    if mode == "prompt_toolkit":
        needs_prompt_toolkit()
    joined: List[Tuple[str, int]] = []
    server = ChatUdpServer(LOOPBACK, 0, 10, on_join=lambda addr: joined.append(tuple(addr)))
    server.start()
    try:
        chat = pty_chat("client", "--port", str(server.addr[1]), mode=mode)
        chat.deadline += 15
        chat.expect(">>")
        wait_for(lambda: joined, 10, "the client's announce")
        chat.type("half typed")
        typed = chat.expect("half typed")
        server.stop()  # Bye! to every client
        chat.expect("stopped (it said Bye!); exiting", typed)
        status, err = chat.finish()
        assert status == 0, err
        assert "Traceback" not in err
    finally:
        server.stop()


@pytest.mark.timeout(10)
def test_chat_client_prompt_toolkit_ctrl_c_sends_quit_and_exits_0(pty_chat: Callable[..., PtyChat]) -> None:
    from chatudp import ChatUdpServer

    needs_prompt_toolkit()
    received: List[bytes] = []
    joined: List[Tuple[str, int]] = []
    left: List[str] = []
    server = ChatUdpServer(
        LOOPBACK,
        0,
        10,
        on_message=lambda data, addr: received.append(bytes(data)),
        on_join=lambda addr: joined.append(tuple(addr)),
        on_leave=lambda addr, reason: left.append(reason),
    )
    server.start()
    try:
        chat = pty_chat("client", "--port", str(server.addr[1]), "--interval", "0.2")
        chat.expect(">>")
        wait_for(lambda: joined, 5, "the client's first heartbeat")
        chat.type("never sent")
        chat.expect("never sent")
        chat.type("\x03")  # Ctrl-C: the terminal is in raw mode, prompt_toolkit reads it as a key
        status, err = chat.finish()
        assert status == 0, err
        assert err == ""
        wait_for(lambda: left, 5, "the client to leave")
        assert left == ["quit"] and received == []
        assert not chat.raw.endswith(b"\r\n\r\n"), bytes(chat.raw[-80:])  # one fresh line, not two
    finally:
        server.stop()


@pytest.mark.timeout(10)
def test_chat_client_prompt_toolkit_sigterm_exits_0_and_restores_the_terminal(
    pty_chat: Callable[..., PtyChat], udp: Callable[[], Udp]
) -> None:
    import termios

    needs_prompt_toolkit()
    server = udp()
    chat = pty_chat("client", "--port", str(server.port))
    chat.expect(">>")
    chat.type("half")
    chat.expect("half")
    assert termios.tcgetattr(chat.slave) != chat.modes  # raw mode while the prompt is up
    chat.proc.send_signal(signal.SIGTERM)
    status, err = chat.finish()
    assert status == 0, err
    assert err == ""
    assert server.recv_chat(5)[0] == b"quit"
    assert termios.tcgetattr(chat.slave) == chat.modes


@pytest.mark.timeout(10)
def test_chat_server_prompt_toolkit_logs_above_the_typed_line(
    pty_chat: Callable[..., PtyChat], udp: Callable[[], Udp]
) -> None:
    needs_prompt_toolkit()
    chat = pty_chat("server", "--port", "0")
    at = chat.expect(">>")
    match = re.search(r" on (\S+):(\d+);", chat.text())
    assert match, chat.text()
    chat.type("qu")
    typed = chat.expect("qu", at)
    peer = udp()
    assert peer.request(b"hello", (match.group(1), int(match.group(2))), 5).startswith(b"Ack b'HELLO'")
    logged = chat.expect(" b'hello'", typed)
    assert b"\x1b[J" in chat.raw[typed:logged]
    chat.expect(f"('{LOOPBACK}', {peer.port})", logged)
    chat.expect("qu", logged)
    chat.type("it\r")  # the two halves make quit
    status, err = chat.finish()
    assert status == 0, err
    assert err == ""
    assert peer.recv(5)[0] == b"Bye!"


# -- echo ------------------------------------------------------------------------------------


def test_echo_server_answers_upper_and_stops_on_ctrl_c(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    services()
    server = cli("echo-server", "--port", "0")
    ip, port = server.bound()
    peer = udp()
    assert peer.request(b"hello, Echo", (ip, port)) == b"HELLO, ECHO"
    assert peer.request(b"", (ip, port)) == b""
    # each request printed as the tutorial's print(msg, addr)
    server.expect(f"b'hello, Echo' ('{LOOPBACK}', {peer.port})\n")
    server.expect(f"b'' ('{LOOPBACK}', {peer.port})\n")
    server.interrupt()
    assert server.finish() == 0
    assert_clean(server)
    assert server.out.splitlines()[-1].startswith("echo server stopped: received 2")


def test_echo_server_stops_on_sigterm_not_on_end_of_input(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    services()
    server = cli("echo-server", "--port", "0")
    ip, port = server.bound()
    server.end_input()  # no input loop: it goes on serving
    peer = udp()
    assert peer.request(b"still there", (ip, port)) == b"STILL THERE"
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert_clean(server)


def test_echo_client_prints_answers_and_survives_a_lost_reply(
    cli: Callable[..., Cli], responder: Callable[..., Responder]
) -> None:
    services()
    server = responder(lambda data: None if data == b"drop me" else data.upper())
    client = cli("echo-client", "--port", str(server.port), "--timeout", "0.3", "--retries", "0")
    client.expect(">> ")
    client.write("hello\n")
    client.expect("HELLO\n")
    client.write("drop me\n")
    err = client.expect_err(f"no reply from 127.0.0.1:{server.port}")
    assert err.count("\n") == 1
    client.write("again\n")
    client.expect("AGAIN\n")
    client.end_input()
    assert client.finish() == 0
    assert client.out.count(">> ") == 4
    assert_clean(client)


def test_echo_client_says_refused_when_the_port_is_closed(cli: Callable[..., Cli], closed_port: int) -> None:
    services()
    closed = closed_port
    client = cli("echo-client", "--port", str(closed), "--timeout", "0.2", "--retries", "0")
    client.write("hello\n")
    client.expect_err(f"no reply from 127.0.0.1:{closed}")
    client.end_input()
    assert client.finish() == 0
    assert "refused, the network reports its port closed" in client.err and "lost" not in client.err, client.err
    assert_clean(client)


def test_echo_client_ctrl_c_while_waiting_for_a_reply_exits_0(
    cli: Callable[..., Cli], responder: Callable[..., Responder]
) -> None:
    services()
    server = responder(lambda data: None)
    client = cli("echo-client", "--port", str(server.port), "--timeout", "30")
    client.write("nobody answers\n")
    wait_for(lambda: server.received, what="the request")
    started = time.monotonic()
    client.interrupt()
    assert client.finish(timeout=5) == 0
    assert time.monotonic() - started < 3
    assert_clean(client)


def test_echo_client_ctrl_c_exits_0(cli: Callable[..., Cli], responder: Callable[..., Responder]) -> None:
    services()
    server = responder(lambda data: data.upper())
    client = cli("echo-client", "--port", str(server.port))
    client.expect(">> ")
    client.interrupt()
    assert client.finish() == 0
    assert_clean(client)


# -- time ------------------------------------------------------------------------------------


def test_time_server_answers_strftime(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    services()
    server = cli("time-server", "--port", "0")
    ip, port = server.bound()
    peer = udp()
    for _ in range(5):  # the same second on both sides: retry across a second boundary
        before = time.strftime("%Y-%m-%d %X")
        answer = peer.request(b"", (ip, port)).decode()
        if before == time.strftime("%Y-%m-%d %X"):
            break
    assert answer == before
    assert peer.request(b"\xff", (ip, port)).startswith(b"error")  # not UTF-8: answered, goes on
    assert peer.request("%m月".encode(), (ip, port)).decode().endswith("月")
    server.expect("===> b''\n")  # each request printed as the tutorial's print('===>', msg)
    server.expect("===> b'\\xff'\n")
    server.end_input()
    server.interrupt()
    assert server.finish() == 0
    assert_clean(server)


def test_time_client_prompts_and_prints_the_answer(
    cli: Callable[..., Cli], responder: Callable[..., Responder]
) -> None:
    services()
    server = responder(lambda data: b"<" + data + b">" if data != b"lost" else None)
    client = cli("time-client", "--port", str(server.port), "--timeout", "0.3", "--retries", "0")
    client.expect(TIME_PROMPT)
    client.write("%Y %m %d\n")
    client.expect("<%Y %m %d>\n")
    client.write("lost\n")
    client.expect_err("no reply from")
    client.write("\n")
    client.expect("<>\n")
    client.end_input()
    assert client.finish() == 0
    assert client.out.count(TIME_PROMPT) == 4
    assert b"" in server.received
    assert_clean(client)


def test_time_client_and_server_subcommands_talk(cli: Callable[..., Cli]) -> None:
    services()
    server = cli("time-server", "--port", "0")
    ip, port = server.bound()
    client = cli("time-client", "--ip", ip, "--port", str(port))
    client.expect(TIME_PROMPT)
    client.write("year %Y\n")
    client.expect(f"year {time.strftime('%Y')[:3]}")
    client.end_input()
    assert client.finish() == 0
    server.interrupt()
    assert server.finish() == 0
    assert_clean(client)
    assert_clean(server)


# -- QQ ----------------------------------------------------------------------------------------


def test_qq_server_shows_messages_and_sends_the_typed_reply(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    services()
    server = cli("qq-server", "--port", "0")
    ip, port = server.bound()
    peer = udp()
    peer.sock.sendto("你好".encode(), (ip, port))
    server.expect(qq_line(LOOPBACK, peer.port, "你好") + "\n")
    server.expect(QQ_PROMPT_REPLY)
    server.write("收到\n")
    assert peer.recv()[0] == "收到".encode()
    peer.sock.sendto(b"\xff bad utf-8", (ip, port))
    server.expect(qq_line(LOOPBACK, peer.port, "\ufffd bad utf-8"))
    server.expect(QQ_PROMPT_REPLY, count=2)
    server.end_input()
    assert server.finish() == 0
    assert_clean(server)


def test_qq_server_answers_with_replies_typed_ahead_then_ends(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    services()
    server = cli("qq-server", "--port", "0")
    ip, port = server.bound()
    server.write("第一\n第二\n")
    server.end_input()  # end of input: it ends once the typed replies are used
    peer = udp()
    assert peer.request(b"one", (ip, port)) == "第一".encode()
    assert peer.request(b"two", (ip, port)) == "第二".encode()
    assert server.finish() == 0
    assert server.out.count(QQ_PROMPT_REPLY) == 2
    assert qq_line(LOOPBACK, peer.port, "two") in server.out
    assert_clean(server)


def test_qq_server_end_of_input_while_waiting_exits_0(cli: Callable[..., Cli]) -> None:
    services()
    server = cli("qq-server", "--port", "0")
    server.bound()
    server.end_input()
    assert server.finish() == 0
    assert_clean(server)


def test_qq_server_ctrl_c_while_waiting_exits_0(cli: Callable[..., Cli]) -> None:
    services()
    server = cli("qq-server", "--port", "0")
    server.bound()
    server.interrupt()
    assert server.finish() == 0
    assert_clean(server)


def test_qq_client_chats_with_a_contact_and_survives_a_lost_reply(
    cli: Callable[..., Cli], responder: Callable[..., Responder]
) -> None:
    services()
    server = responder(lambda data: None if data == "丢".encode() else "回:".encode() + data)
    contact = f"张三=127.0.0.1:{server.port}"
    client = cli("qq-client", "--contact", contact, "--contact", f"李四=127.0.0.1:{server.port}", "--timeout", "0.3")
    client.expect("contacts: 张三, 李四\n")  # the names, before the first question
    client.expect(QQ_PROMPT_NAME)
    client.write("张三\n")
    client.expect(QQ_PROMPT_MSG)
    client.write("你好\n")
    client.expect(qq_line(LOOPBACK, server.port, "回:你好") + "\n")
    client.write("丢\n")
    err = client.expect_err("no reply from 张三 at 127.0.0.1:")
    assert "lost" not in err and "a late reply is shown when it comes" in err
    client.write("\n")  # empty input is ignored
    client.write("再来\n")
    client.expect(qq_line(LOOPBACK, server.port, "回:再来"))
    client.write("quit\n")  # back to choosing a contact
    client.expect(QQ_PROMPT_NAME, count=2)
    client.write("nobody\n")  # an unknown name: said, and back to choosing
    client.expect_err("unknown contact 'nobody'; choose one of: 张三, 李四")
    client.expect(QQ_PROMPT_NAME, count=3)
    client.write("李四\nhi\nquit\n")
    client.expect(qq_line(LOOPBACK, server.port, "回:hi"))
    client.expect(QQ_PROMPT_NAME, count=4)
    client.end_input()
    assert client.finish() == 0
    assert server.received == ["你好".encode(), "丢".encode(), "再来".encode(), b"hi"]
    assert "\033[" not in client.out  # no colour codes when stdout is not a terminal
    assert_clean(client)


def test_qq_client_shows_a_reply_that_comes_after_the_timeout(
    cli: Callable[..., Cli], udp: Callable[[], Udp]
) -> None:
    services()
    human = udp()  # a person who takes longer than --timeout to answer
    client = cli("qq-client", "--contact", f"慢=127.0.0.1:{human.port}", "--timeout", "0.2")
    client.write("慢\n在吗\n")
    data, addr = human.recv()
    assert data == "在吗".encode()
    client.expect_err("no reply from 慢 at 127.0.0.1:")
    human.sock.sendto("在，刚才忙".encode(), addr)  # late, while the client waits at its prompt
    client.expect(qq_line(LOOPBACK, human.port, "在，刚才忙") + "\n")
    client.write("quit\n")
    client.end_input()
    assert client.finish() == 0
    assert_clean(client)


def test_qq_programs_colour_their_lines_on_a_terminal(cli: Callable[..., Cli], udp: Callable[[], Udp]) -> None:
    services()
    human = udp()
    client = cli("qq-client", "--contact", f"友=127.0.0.1:{human.port}", use_pty=True)
    client.expect(QQ_PROMPT_NAME)
    client.write("友\r在吗\r")
    data, addr = human.recv()
    human.sock.sendto(b"yes", addr)
    client.expect(qq_line(LOOPBACK, human.port, "yes", colour=True))
    client.interrupt()
    assert client.finish() == 0
    assert_clean(client)


def test_qq_client_default_contacts_use_ip_and_port(
    cli: Callable[..., Cli], responder: Callable[..., Responder]
) -> None:
    services()
    server = responder(lambda data: b"ok")
    client = cli("qq-client", "--port", str(server.port))
    for name in ("狗哥", "猴哥", "武大郎", "一棵树"):
        client.write(f"{name}\nhi {name}\nquit\n")
    client.expect(qq_line(LOOPBACK, server.port, "ok"), count=4)
    client.end_input()
    assert client.finish() == 0
    assert server.received == [f"hi {name}".encode() for name in ("狗哥", "猴哥", "武大郎", "一棵树")]


def test_qq_client_ctrl_c_while_waiting_for_a_reply_exits_0(
    cli: Callable[..., Cli], responder: Callable[..., Responder]
) -> None:
    services()
    server = responder(lambda data: None)
    client = cli("qq-client", "--port", str(server.port), "--timeout", "30")
    client.write("狗哥\nhello\n")
    wait_for(lambda: server.received, what="the message")
    client.interrupt()
    assert client.finish(timeout=5) == 0
    assert_clean(client)


def test_qq_client_bad_contact_is_a_usage_error() -> None:
    completed = run(("qq-client", "--contact", "no-address"))
    _, err = text(completed)
    assert completed.returncode == 2
    assert "NAME=IP:PORT" in err


def test_qq_server_and_client_subcommands_talk(cli: Callable[..., Cli]) -> None:
    services()
    server = cli("qq-server", "--port", "0")
    ip, port = server.bound()
    client = cli("qq-client", "--contact", f"狗哥={ip}:{port}")
    client.write("狗哥\n在吗\n")
    server.expect("的一条消息:在吗\n")
    server.write("在\n")
    client.expect(qq_line(ip, port, "在"))
    client.end_input()
    server.end_input()
    assert client.finish() == 0
    assert server.finish() == 0
    assert_clean(client)
    assert_clean(server)


# -- federation: --bus ---------------------------------------------------------------------------


def test_server_with_bus_relays_across_a_real_nats_server(
    cli: Callable[..., Cli], udp: Callable[[], Udp], nats_server: Any
) -> None:
    first = cli("server", "--port", "0", "--bus", nats_server.url, "--room", "cli-test", "--no-input")
    second = cli("server", "--port", "0", "--bus", nats_server.url, "--room", "cli-test", "--no-input")
    a, b = first.bound(), second.bound()
    assert f"; room cli-test on the bus {nats_server.url}; no input" in first.out
    alice, bob = udp(), udp()
    bob.sock.sendto(b"^hb^", b)
    second.expect(" joined: 127.0.0.1:")
    # The relays find each other through the broker within a few announce periods.
    deadline = time.monotonic() + TIMEOUT
    while True:
        alice.sock.sendto(b"across", a)
        try:
            data, _ = bob.recv(0.5)
        except socket.timeout:
            assert time.monotonic() < deadline, (first.out, second.out, first.err, second.err)
            continue
        break
    assert data == f"Ack b'ACROSS'. from 127.0.0.1:{alice.port}".encode()
    for child in (first, second):
        child.proc.send_signal(signal.SIGTERM)
        assert child.finish() == 0
        assert_clean(child)


def test_server_with_bus_takes_a_cluster_serves_while_the_broker_is_down_and_hides_passwords(
    cli: Callable[..., Cli], udp: Callable[[], Udp]
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        down = probe.getsockname()[1]  # no broker there
    urls = f"nats://relay:s3cret@127.0.0.1:{down},nats://127.0.0.1:{down}"
    server = cli("server", "--port", "0", "--bus", urls, "--no-input")
    ip, port = server.bound()
    assert f"room chatudp on the bus nats://relay:***@127.0.0.1:{down}, nats://127.0.0.1:{down};" in server.out
    assert "s3cret" not in server.out
    peer = udp()
    assert peer.request(b"local", (ip, port)).startswith(b"Ack b'LOCAL'")  # local chat goes on
    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    assert server.finish() == 0
    assert time.monotonic() - started < 10
    assert_clean(server)


def test_demo_with_bus_shows_two_relays_chatting(nats_server: Any) -> None:
    completed = run(("demo", "--seconds", "0.5", "--bus", nats_server.url), timeout=60)
    out, err = text(completed)
    assert completed.returncode == 0, (out, err)
    assert err == ""
    assert re.search(r"^chatudp demo: relay A on 127\.0\.0\.1:\d+ \(alice\), relay B on 127\.0\.0\.1:\d+", out, re.M)
    assert "  relay A: alice joined from 127.0.0.1:" in out
    assert "  relay B: bob joined from 127.0.0.1:" in out
    acks = [line.strip() for line in out.splitlines() if "Ack b'HELLO FROM ALICE'" in line]
    assert [line.split(" got:")[0] for line in acks] == ["alice", "bob", "carol"]  # across the relays
    assert "  relay B: carol left (quit)" in out
    assert re.search(r"^summary: relay A received \d+, relayed \d+, sent \d+; relay B .*; alice got 8, bob got 8, carol got 6$",
                     out, re.M), out


def test_demo_with_an_unreachable_bus_is_one_line_and_status_2() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        port = probe.getsockname()[1]
    completed = run(("demo", "--bus", f"nats://127.0.0.1:{port}"), timeout=60)
    out, err = text(completed)
    assert completed.returncode == 2, (out, err)
    assert err == f"chatudp: the relays did not meet on the bus nats://127.0.0.1:{port} within 10 s: is the broker running?\n"


# -- docs ------------------------------------------------------------------------------------------


def test_the_package_docstring_and_readme_name_the_same_tutorial_module() -> None:
    import chatudp

    with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as file:
        readme = file.read()
    pattern = r"from (\w+) import ChatUdpServer, ChatUdpClient"
    in_readme = set(re.findall(pattern, readme)) - {"chatudp"}
    in_docstring = set(re.findall(pattern, chatudp.__doc__ or "")) - {"chatudp"}
    assert in_readme == in_docstring == {"chat_server"}, (in_readme, in_docstring)
