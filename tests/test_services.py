"""The echo and time servers, their clients and the QQ peer, on real loopback sockets.

Each library server is driven by a client written with the stdlib ``socket`` module, and each
chatudp client talks to a server written with it. Every wait is bounded.
"""

from __future__ import annotations

import _thread
import errno
import logging
import socket
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from chatudp import ClosedError
from chatudp.errors import ChatUdpError, NoReplyError
from chatudp.services import EchoClient, EchoServer, QQPeer, TimeClient, TimeServer

LOOPBACK = "127.0.0.1"
MAX_DATAGRAM = 65507

# Every strftime directive, glibc's extras, and the flags and widths glibc accepts.
DIRECTIVES = (
    "%a %A %b %B %c %d %H %I %j %m %M %p %S %U %w %W %x %X %y %Y %Z %% "
    "%e %F %T %s %z %G %g %u %V %C %D %h %n %t %R %r %k %l %P %+"
).split(" ")
EXTRA_FORMATS = [
    "",  # never sent as a format: an empty datagram means %Y-%m-%d %X (tested apart)
    "plain literal text",
    "时间: %Y年%m月%d日 %H:%M:%S",
    "%Q",  # unknown directive
    "%Q%q%J%K%L%N%O%E%i%o%v",
    "trailing %",
    "%",
    "%%%",
    "100% sure %",
    "%-d %-m %_H %05Y %^a %#Z %10A| %Ey %EY %Od %Om %OH",
    "%5é %3中",  # a width before a non-ASCII character
    "\t\n\r\x0b\x0c",
    "%2000Y",  # CPython's buffer: 1024 characters, doubled up to 256 x len(format)
    "%3000Y",  # ... past that it answers ''
    "ee%2000Y",
    "ee%2100Y",
    "éé%2100Y",  # counted in characters, not bytes
    "%c" * 100,
]


# -- helpers ---------------------------------------------------------------------------------


class StdClient:
    """The tutorial's client: a stdlib socket that sends and reads with recvfrom."""

    def __init__(self, family: int = socket.AF_INET, host: str = LOOPBACK, rcvbuf: Optional[int] = None) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((host, 0))
        self.sock.settimeout(3.0)
        self.addr = self.sock.getsockname()

    def ask(self, data: bytes, to: Tuple[Any, ...], timeout: float = 3.0) -> bytes:
        self.sock.sendto(data, to)
        self.sock.settimeout(timeout)
        reply, source = self.sock.recvfrom(65535)
        assert source[:2] == to[:2]
        return reply

    def drain(self, quiet: float = 0.2) -> int:
        """Reads until nothing arrives for `quiet` seconds; returns how many datagrams came."""
        count = 0
        self.sock.settimeout(quiet)
        try:
            while True:
                self.sock.recvfrom(65535)
                count += 1
        except socket.timeout:
            return count

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def std_client() -> Iterator[Callable[..., StdClient]]:
    made: List[StdClient] = []

    def make(*args: Any, **kwargs: Any) -> StdClient:
        client = StdClient(*args, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


class StdServer:
    """A stdlib UDP server on a thread: answers each datagram with `handler(data)` (None: stay
    silent), and records what it received."""

    def __init__(self, handler: Callable[[bytes], Optional[bytes]], family: int = socket.AF_INET) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind(("::1" if family == socket.AF_INET6 else LOOPBACK, 0))
        self.sock.settimeout(0.05)
        self.addr = self.sock.getsockname()
        self.received: List[bytes] = []
        self._handler = handler
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except socket.timeout:
                continue
            except OSError:
                return
            self.received.append(data)
            reply = self._handler(data)
            if reply is not None:
                self.sock.sendto(reply, addr)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def std_server() -> Iterator[Callable[..., StdServer]]:
    made: List[StdServer] = []

    def make(*args: Any, **kwargs: Any) -> StdServer:
        server = StdServer(*args, **kwargs)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


@pytest.fixture
def serve() -> Iterator[Callable[..., Any]]:
    """Starts a chatudp server on a free loopback port and stops it at the end of the test."""
    made: List[Any] = []

    def make(cls: Any, **kwargs: Any) -> Any:
        server = cls(LOOPBACK, 0, **kwargs)
        made.append(server)
        server.start()
        return server

    yield make
    for server in made:
        server.stop()


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def assert_time_answer(ask: Callable[[bytes], bytes], fmt: str, request: Optional[bytes] = None) -> None:
    """The answer equals `time.strftime(fmt)` taken in the same second: read the clock before and
    after the request, and try again when the two differ (no sleeps)."""
    for _ in range(50):
        before = time.strftime(fmt)
        reply = ask(fmt.encode("utf-8") if request is None else request)
        after = time.strftime(fmt)
        if before == after:
            assert reply == before.encode("utf-8"), fmt
            return
    pytest.fail(f"the clock kept changing under {fmt!r}")


def settled(stats: dict, total: int) -> bool:
    """Every datagram of a burst was read (or dropped by the kernel) and answered (or counted)."""
    seen = stats["received"] + (stats["kernel_drops"] or 0)
    answered = stats["sent"] + stats["dropped"]["send_error"]
    return seen >= total and answered == stats["received"]


# -- echo server -----------------------------------------------------------------------------


def test_echo_server_defaults_match_the_tutorial() -> None:
    server = EchoServer()
    assert (server.addr, server.bufsize, server.stats, server.running) == (("127.0.0.1", 9000), 1024, {}, False)
    assert not server.event.is_set()
    assert TimeServer().addr == ("127.0.0.1", 9000)


def test_echo_server_answers_upper_to_a_stdlib_client(serve: Any, std_client: Any) -> None:
    server = serve(EchoServer)
    ip, port = server.addr
    assert ip == LOOPBACK and port > 0 and server.running
    client = std_client()
    every_byte = bytes(range(256))
    for data in [b"hello", b"Hello, World! 123", "héllo wörld 你好".encode(), every_byte[:200], b"\xff\xfe\x00", b""]:
        assert client.ask(data, server.addr) == data.upper()
    # The answer can arrive before the server has counted it as sent.
    wait_for(lambda: server.stats["sent"] == 6, what="six answers counted")
    stats = server.stats
    assert (stats["received"], stats["answered"], stats["sent"], stats["truncated"]) == (6, 6, 6, 0)


def test_echo_server_cuts_long_datagrams_like_recvfrom_1024(serve: Any, std_client: Any) -> None:
    server = serve(EchoServer)
    client = std_client()
    assert client.ask(b"a" * MAX_DATAGRAM, server.addr) == b"A" * 1024
    assert client.ask(b"b" * 1025, server.addr) == b"B" * 1024
    assert client.ask(b"c" * 1024, server.addr) == b"C" * 1024
    assert server.stats["truncated"] == 2
    big = serve(EchoServer, bufsize=MAX_DATAGRAM)
    assert client.ask(b"z" * MAX_DATAGRAM, big.addr) == b"Z" * MAX_DATAGRAM
    assert big.stats["truncated"] == 0


def test_echo_server_over_ipv6(std_client: Any) -> None:
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        probe.bind(("::1", 0))
        probe.close()
    except OSError:
        pytest.skip("no IPv6 loopback")
    with EchoServer("::1", 0) as server:
        assert server.addr[0] == "::1" and len(server.addr) == 4
        client = std_client(socket.AF_INET6, "::1")
        assert client.ask(b"six", server.addr) == b"SIX"
        with EchoClient("::1", server.addr[1], timeout=2) as echo:
            assert echo.addr[0] == "::"
            assert echo.request("over v6") == b"OVER V6"


def test_on_request_sees_every_request_and_a_failing_callback_is_reported(
    serve: Any, std_client: Any, caplog: Any
) -> None:
    seen: List[Tuple[bytes, Tuple[Any, ...]]] = []

    def on_request(data: bytes, addr: Tuple[Any, ...]) -> None:
        seen.append((data, addr))
        if data == b"boom":
            raise RuntimeError("callback failed")

    server = serve(EchoServer, on_request=on_request)
    client = std_client()
    with caplog.at_level(logging.ERROR, logger="chatudp.services"):
        for data in [b"one", b"boom", b"two"]:
            assert client.ask(data, server.addr) == data.upper()
        wait_for(lambda: len(seen) == 3, what="three callbacks")
    assert seen == [(b"one", client.addr), (b"boom", client.addr), (b"two", client.addr)]
    assert any("callback failed" in r.getMessage() or r.exc_info for r in caplog.records)
    server.stop()
    assert not server.running


# -- time server -----------------------------------------------------------------------------


@pytest.fixture
def time_server(serve: Any) -> Any:
    return serve(TimeServer, bufsize=MAX_DATAGRAM)


@pytest.mark.parametrize("directive", DIRECTIVES)
def test_time_server_matches_time_strftime_per_directive(time_server: Any, std_client: Any, directive: str) -> None:
    client = std_client()
    ask = lambda data: client.ask(data, time_server.addr)  # noqa: E731
    assert_time_answer(ask, directive)
    assert_time_answer(ask, f"<{directive}>")


@pytest.mark.parametrize("fmt", EXTRA_FORMATS[1:])
def test_time_server_matches_time_strftime_on_odd_formats(time_server: Any, std_client: Any, fmt: str) -> None:
    client = std_client()
    assert_time_answer(lambda data: client.ask(data, time_server.addr), fmt)


def test_time_server_matches_every_directive_at_once(time_server: Any, std_client: Any) -> None:
    client = std_client()
    assert_time_answer(lambda data: client.ask(data, time_server.addr), "|".join(DIRECTIVES) + " and text %Q %")


def test_empty_datagram_means_the_default_format(serve: Any, std_client: Any) -> None:
    server = serve(TimeServer)  # the tutorial's bufsize
    client = std_client()
    assert_time_answer(lambda data: client.ask(data, server.addr), "%Y-%m-%d %X", request=b"")
    # A blank format is not empty: it is answered as itself.
    assert client.ask(b" ", server.addr) == b" "


def test_time_server_answers_bad_formats_with_an_error_and_goes_on(serve: Any, std_client: Any) -> None:
    server = serve(TimeServer)
    big = serve(TimeServer, bufsize=MAX_DATAGRAM)
    client = std_client()
    for request in [b"\xff\xfe", b"%Y \xe4\xb8", b"\x80"]:
        assert client.ask(request, server.addr) == b"error: format is not UTF-8"
    assert client.ask(b"%Y\x00%m", server.addr) == b"error: format contains a NUL byte"
    assert client.ask(b"\x00", server.addr) == b"error: format contains a NUL byte"
    # An answer longer than one datagram (CPython would return 65,900 characters).
    too_long = ("%65600Y" + "x" * 300).encode()
    assert client.ask(too_long, big.addr) == b"error: answer does not fit in one datagram"
    # The largest datagram: cut to 1024 bytes by default (as recvfrom(1024)), whole otherwise.
    assert client.ask(b"a" * MAX_DATAGRAM, server.addr) == b"a" * 1024
    assert client.ask(b"a" * MAX_DATAGRAM, big.addr) == b"a" * MAX_DATAGRAM
    # A cut that splits a character is no longer UTF-8.
    assert client.ask("中".encode() * 400, server.addr) == b"error: format is not UTF-8"
    assert client.ask(b"\xff" * MAX_DATAGRAM, big.addr) == b"error: format is not UTF-8"
    stats = server.stats
    assert (stats["bad_requests"], stats["truncated"], stats["answered"]) == (6, 2, 1)
    assert_time_answer(lambda data: client.ask(data, server.addr), "%H:%M:%S still serving")
    assert server.running and big.running


# -- bad input to every server ---------------------------------------------------------------


@pytest.mark.parametrize("cls", [EchoServer, TimeServer])
def test_odd_datagrams_are_answered_and_the_server_goes_on(serve: Any, std_client: Any, cls: Any) -> None:
    server = serve(cls)
    client = std_client()
    for request in [b"\xff\xfe\xfd", b"", b"x" * MAX_DATAGRAM, b"\x00" * 10]:
        reply = client.ask(request, server.addr)
        assert isinstance(reply, bytes)
    wait_for(lambda: server.stats["sent"] == 4, what="four answers counted")
    assert server.stats["received"] == 4
    assert client.ask(b"ok", server.addr) == (b"OK" if cls is EchoServer else b"ok")


@pytest.mark.parametrize("cls", [EchoServer, TimeServer])
def test_a_burst_of_10000_datagrams_is_answered_or_counted(serve: Any, std_client: Any, cls: Any) -> None:
    server = serve(cls)
    client = std_client(rcvbuf=4 << 20)
    requests = [b"burst", b"\xff", b"", b"%Y\x00"]
    for i in range(10_000):
        client.sock.sendto(requests[i % 4], server.addr)
    wait_for(lambda: settled(server.stats, 10_000), what="the burst to be handled")
    stats = server.stats
    if stats["kernel_drops"] is not None:
        # Every datagram is accounted for: read by the server, or dropped by the kernel.
        assert stats["received"] + stats["kernel_drops"] == 10_000
    assert stats["answered"] + stats["bad_requests"] == stats["received"]
    answers = client.drain()
    assert 0 < answers <= stats["sent"]
    assert client.ask(b"after", server.addr) == (b"AFTER" if cls is EchoServer else b"after")


# -- server life cycle -----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [EchoServer, TimeServer])
def test_server_life_cycle(cls: Any, std_client: Any) -> None:
    server = cls(LOOPBACK, 0)
    server.start()
    with pytest.raises(RuntimeError):
        server.start()
    port = server.addr[1]
    assert server.running and not server.event.is_set()
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 0.5
    server.stop()
    assert server.event.is_set() and not server.running
    with pytest.raises(RuntimeError):
        server.start()
    # The port is free again.
    std_client().sock.close()
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, port))
    probe.close()
    with cls(LOOPBACK, 0) as entered:
        assert entered.running
        client = std_client()
        assert client.ask(b"x", entered.addr) in (b"X", b"x")
    assert not entered.running and entered.event.is_set()


@pytest.mark.parametrize("cls", [EchoServer, TimeServer])
def test_server_errors(cls: Any) -> None:
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind((LOOPBACK, 0))
    try:
        server = cls(LOOPBACK, busy.getsockname()[1])
        with pytest.raises(OSError) as info:
            server.start()
        assert info.value.errno == errno.EADDRINUSE
        assert not server.running
    finally:
        busy.close()
    for bad_host in ["no-such-host.invalid", "999.1.2.3"]:
        with pytest.raises(OSError):
            cls(bad_host, 0).start()
    for bufsize in [0, MAX_DATAGRAM + 1, -1]:
        with pytest.raises(ValueError):
            cls(LOOPBACK, 0, bufsize=bufsize)
    with pytest.raises(TypeError):
        cls(LOOPBACK, 0, bufsize="1024")


# -- clients against stdlib servers ----------------------------------------------------------


def test_echo_client_against_a_stdlib_echo_server(std_server: Any) -> None:
    server = std_server(lambda data: data.upper())  # the tutorial's echo server
    with EchoClient(*server.addr, timeout=2) as client:
        assert (client.raddr, client.timeout, client.retries) == (server.addr, 2.0, 2)
        assert client.request("hello") == b"HELLO"
        assert client.request(b"bytes \xff") == b"BYTES \xff"
        assert client.request(bytearray(b"ba")) == b"BA"
        assert client.request("") == b""
        assert client.request("x" * MAX_DATAGRAM) == b"X" * MAX_DATAGRAM
        with pytest.raises(TypeError):
            client.request(42)  # type: ignore[arg-type]
        with pytest.raises(OSError):
            client.request(b"y" * (MAX_DATAGRAM + 1))
    assert server.received[:2] == [b"hello", b"bytes \xff"]
    assert client.closed
    client.close()
    with pytest.raises(ClosedError):
        client.request("late")


def test_time_client_against_a_stdlib_time_server(std_server: Any) -> None:
    def tutorial_time_server(msg: bytes) -> bytes:
        time_fmt = "%Y-%m-%d %X" if not msg else msg.decode("utf-8")
        return time.strftime(time_fmt).encode("utf-8")

    server = std_server(tutorial_time_server)
    with TimeClient(*server.addr) as client:
        assert_time_answer(lambda data: client.request(data.decode()).encode(), "%Y %m %d")
        assert_time_answer(lambda data: client.request().encode(), "%Y-%m-%d %X", request=b"")
        assert client.request("时间 %%") == "时间 %"
    assert server.received[1] == b""


@pytest.mark.parametrize("cls", [EchoClient, TimeClient])
def test_clients_give_up_after_retries(std_server: Any, cls: Any) -> None:
    silent = std_server(lambda data: None)
    client = cls(*silent.addr, timeout=0.2, retries=2)
    started = time.monotonic()
    with pytest.raises(NoReplyError) as info:
        client.request("anyone?")
    elapsed = time.monotonic() - started
    assert 0.55 < elapsed < 3
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, ChatUdpError)
    wait_for(lambda: len(silent.received) == 3, what="three tries")
    assert silent.received == [b"anyone?"] * 3
    assert client.stats["retries"] == 2
    client.close()
    client.close()


@pytest.mark.parametrize("cls", [EchoClient, TimeClient])
def test_a_closed_port_is_reported_refused_not_lost(cls: Any) -> None:
    # Bound (so no other socket takes the port) but connected elsewhere: the datagrams sent to
    # it are answered with ICMP port unreachable, as for a closed port.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as hold:
        hold.bind(("127.0.0.1", 0))
        hold.connect(("127.0.0.1", 9))
        closed = hold.getsockname()[1]
        with cls("127.0.0.1", closed, timeout=0.1, retries=1) as client:
            with pytest.raises(NoReplyError, match="refused, the network reports its port closed") as info:
                client.request("anyone?")
            assert info.value.refused
            assert client.stats["refused"] == 2 and client.stats["send_errors"] == 0
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        with cls(*silent.getsockname(), timeout=0.1, retries=0) as client:
            with pytest.raises(NoReplyError) as info:
                client.request("anyone?")
            assert not info.value.refused and "refused" not in str(info.value)
    finally:
        silent.close()


def test_a_lost_reply_is_recovered_by_a_retry(std_server: Any) -> None:
    count = {"n": 0}

    def lossy(data: bytes) -> Optional[bytes]:
        count["n"] += 1
        return None if count["n"] == 1 else data.upper()

    server = std_server(lossy)
    with EchoClient(*server.addr, timeout=0.2, retries=1) as client:
        assert client.request("again") == b"AGAIN"
        assert client.stats["retries"] == 1
    assert server.received == [b"again", b"again"]


def test_replies_from_other_addresses_and_late_replies_are_ignored(std_server: Any, std_client: Any) -> None:
    stranger = std_client()
    holder: dict = {}

    def answer(data: bytes) -> bytes:
        # Someone else writes to the client first; the real reply follows.
        stranger.sock.sendto(b"NOISE", holder["client_addr"])
        return data.upper()

    server = std_server(answer)
    with EchoClient(*server.addr, timeout=2) as client:
        holder["client_addr"] = (LOOPBACK, client.addr[1])
        assert client.request("real") == b"REAL"
        # A late reply already queued is not taken for the answer to the next request.
        std_client().sock.sendto(b"LATE", holder["client_addr"])
        server.sock.sendto(b"STALE", holder["client_addr"])
        assert client.request("next") == b"NEXT"
        assert client.stats["ignored"] >= 2


def test_client_errors() -> None:
    with pytest.raises(ValueError):
        EchoClient(timeout=-1)
    with pytest.raises(ValueError):
        TimeClient(retries=-1)
    with pytest.raises(TypeError):
        EchoClient(timeout="2")  # type: ignore[arg-type]
    with pytest.raises(OSError):
        EchoClient("no-such-host.invalid", 9000)
    with pytest.raises(TypeError):
        TimeClient().request(b"%Y")  # type: ignore[arg-type]


# -- QQ peer ---------------------------------------------------------------------------------


def test_qq_peer_talks_to_a_stdlib_qq_server(std_server: Any) -> None:
    server = std_server(lambda data: ("回复: " + data.decode("utf-8")).encode("utf-8"))
    with QQPeer() as peer:
        assert peer.addr[0] == "0.0.0.0" and peer.addr[1] > 0
        peer.sendto("你好".encode("utf-8"), server.addr)
        data, addr = peer.recvfrom(timeout=3)
        assert (data.decode("utf-8"), addr) == ("回复: 你好", server.addr)
        with pytest.raises(TypeError):
            peer.sendto("str is not bytes", server.addr)  # type: ignore[arg-type]
    assert peer.closed
    peer.close()
    with pytest.raises(ClosedError):
        peer.recvfrom(timeout=0.1)


def test_qq_peer_as_a_server_for_a_stdlib_client(std_client: Any) -> None:
    with QQPeer(bind=(LOOPBACK, 0)) as server:
        assert server.addr[0] == LOOPBACK
        client = std_client()
        client.sock.sendto("在吗".encode("utf-8"), server.addr)
        data, addr = server.recvfrom(timeout=3)
        assert (data, addr) == ("在吗".encode("utf-8"), client.addr)
        server.sendto(b"zai", addr)
        assert client.sock.recvfrom(1024) == (b"zai", server.addr)
        client.sock.sendto(b"q" * 2000, server.addr)
        data, _ = server.recvfrom(timeout=3)
        assert data == b"q" * 1024  # recvfrom(1024), as the tutorial
        assert server.stats["truncated"] == 1
        port = server.addr[1]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, port))  # close() freed the port
    probe.close()


def test_qq_peer_timeout_and_close_from_another_thread() -> None:
    peer = QQPeer()
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        peer.recvfrom(timeout=0.2)
    assert 0.18 < time.monotonic() - started < 2
    errors: List[BaseException] = []

    def wait_forever() -> None:
        try:
            peer.recvfrom()
        except BaseException as exc:  # noqa: B902
            errors.append(exc)

    waiter = threading.Thread(target=wait_forever)
    waiter.start()
    time.sleep(0.1)
    started = time.monotonic()
    peer.close()
    waiter.join(5)
    assert not waiter.is_alive() and time.monotonic() - started < 1
    assert len(errors) == 1 and isinstance(errors[0], ClosedError) and isinstance(errors[0], OSError)
    with pytest.raises(ValueError):
        QQPeer().recvfrom(timeout=-1)
    with pytest.raises(ValueError):
        QQPeer(bufsize=0)
    with pytest.raises(OSError):
        QQPeer(bind=("no-such-host.invalid", 0))


# -- Ctrl-C ----------------------------------------------------------------------------------


def test_ctrl_c_interrupts_waits(std_server: Any) -> None:
    silent = std_server(lambda data: None)
    # Made before the timer starts, so the interrupt can only land in the wait itself (on a
    # loaded machine a construction can take longer than the timer).
    peer, client = QQPeer(), EchoClient(*silent.addr, timeout=30, retries=0)
    for wait in (
        lambda: peer.recvfrom(),
        lambda: client.request("x"),
    ):
        timer = threading.Timer(0.2, _thread.interrupt_main)
        timer.start()
        started = time.monotonic()
        try:
            with pytest.raises(KeyboardInterrupt):
                wait()
        finally:
            timer.cancel()
        assert time.monotonic() - started < 2
    peer.close()
    client.close()
