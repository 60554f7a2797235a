"""Bad input: random datagrams of 0 to 65507 bytes, sent to chatudp's server and to the pure-Python
model of the tutorial's server (tests/original_model.py) side by side. What each answers must be
byte-identical (the sender's port aside), and the server must keep serving.

Bounded: ``max_examples`` is 200 per test by default (examples derived from a fixed seed, so a run
repeats); ``CHATUDP_FUZZ=1`` runs 2,000 per test with fresh randomness.
"""

from __future__ import annotations

import os
import random
import re
import socket
import threading
import time
import warnings
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

hypothesis = pytest.importorskip("hypothesis")

# When an example fails, Hypothesis's pytest plugin imports libcst to suggest a patch, and libcst
# (through mypy_extensions) warns about a deprecation, which this suite's filterwarnings=error
# turns into an INTERNALERROR that hides the real failure. Import it once here, quietly.
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    try:
        import libcst.metadata  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or broken: then there is nothing to hide
        pass
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import original_model  # noqa: E402
from chatudp import ChatUdpClient, ChatUdpServer  # noqa: E402
from conftest import LOOPBACK  # noqa: E402
from faultproxy import record_figures  # noqa: E402

Address = Tuple[str, int]
MAX_DATAGRAM = 65507
LONG = os.environ.get("CHATUDP_FUZZ") == "1"

FUZZ = settings(
    max_examples=2000 if LONG else 200,
    deadline=None,
    database=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


def original_ack(data: bytes, addr: Address) -> bytes:
    return "Ack {}. from {}:{}".format(data.upper(), *addr).encode()


def _socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
    sock.bind((LOOPBACK, 0))
    sock.settimeout(5)
    return sock


SENTINEL_ACK = re.compile(rb"Ack b'SENTINEL \d+'. from 127.0.0.1:L\Z")


class Side:
    """One server (chatudp's or the model's) with a registered listener and a few senders."""

    def __init__(self, name: str, server: Any, senders: int = 3) -> None:
        self.name = name
        self.server = server
        self.addr: Address = server.addr
        self.listener = _socket()
        self.senders = [_socket() for _ in range(senders)]
        self.roles: Dict[int, bytes] = {self.listener.getsockname()[1]: b"L"}
        for i, s in enumerate(self.senders):
            self.roles[s.getsockname()[1]] = b"S%d" % i
        self.sent = 0
        self.sentinels = 0
        self.listener.sendto(b"^hb^", self.addr)
        self.sent += 1

    def send(self, sender: int, data: bytes) -> None:
        self.senders[sender].sendto(data, self.addr)
        self.sent += 1

    def collect(self) -> Dict[bytes, List[bytes]]:
        """Everything each socket received since the last call, with ports replaced by roles.

        The listener is in the table for good: it says a sentinel, and once its own Ack is back,
        every datagram the server sent before it is already queued at its destination (loopback
        delivers at send time, and the server sends in the order it reads)."""
        self.sentinels += 1
        sentinel = b"sentinel %d" % self.sentinels
        self.listener.sendto(sentinel, self.addr)
        self.sent += 1
        expected = original_ack(sentinel, self.listener.getsockname())
        got: Dict[bytes, List[bytes]] = {b"L": []}
        while True:
            data = self.listener.recv(65535)
            if data == expected:
                break
            got[b"L"].append(self._normalise(data))
        for i, s in enumerate(self.senders):
            mine = got.setdefault(b"S%d" % i, [])
            s.setblocking(False)
            try:
                while True:
                    data = self._normalise(s.recv(65535))
                    # A sentinel's Ack reaches the listener first and the senders in the table
                    # a moment later: which sender has it yet is a race, so none is compared
                    # (the tables are, by table()).
                    if not SENTINEL_ACK.match(data):
                        mine.append(data)
            except BlockingIOError:
                pass
            finally:
                s.settimeout(5)
        return got

    def _normalise(self, data: bytes) -> bytes:
        match = re.search(rb":(\d+)\Z", data)
        if match and data.startswith(b"Ack ") and int(match.group(1)) in self.roles:
            return data[: match.start()] + b":" + self.roles[int(match.group(1))]
        return data

    def table(self) -> List[bytes]:
        if isinstance(self.server, ChatUdpServer):
            keys = list(self.server.clients)
        else:
            with self.server.lock:
                keys = list(self.server.clients)
        return sorted(self.roles.get(port, b"?") for _, port in keys)

    def close(self) -> None:
        for s in (self.listener, *self.senders):
            s.close()


@pytest.fixture(scope="module")
def sides() -> Iterator[Dict[int, Tuple[Side, Side]]]:
    """For bufsize 1024 (the tutorial's, which cuts longer datagrams) and 65507: chatudp's
    server and the model's, started once for the module."""
    made: Dict[int, Tuple[Side, Side]] = {}
    servers: List[Any] = []
    try:
        for bufsize in (1024, MAX_DATAGRAM):
            ours = ChatUdpServer(port=0, interval=3600, bufsize=bufsize, on_message=lambda d, a: None)
            ours.start()
            servers.append(ours)
            model = original_model.ChatUdpServer(port=0, interval=3600, bufsize=bufsize)
            model.start()
            servers.append(model)
            made[bufsize] = (Side("chatudp", ours), Side("model", model))
        for ours_side, model_side in made.values():
            ours_side.collect()
            model_side.collect()
        yield made
        for bufsize, (ours_side, model_side) in made.items():
            # After everything: still serving, and nothing the kernel accepted was lost.
            assert ours_side.collect() == model_side.collect()
            assert ours_side.server.running
            stats = ours_side.server.stats
            assert stats["received"] == ours_side.sent, (stats, ours_side.sent)
            record_figures(
                f"test_fuzz::sides[bufsize={bufsize}]",
                datagrams=ours_side.sent,
                received=stats["received"],
                truncated=stats["truncated"],
                relayed=stats["relayed"],
                send_errors=stats["send_errors"],
                single_datagram_examples=len(SIZES),
                over_1024_bytes=sum(n > 1024 for n in SIZES),
                over_60000_bytes=sum(n > 60000 for n in SIZES),
                largest=max(SIZES, default=0),
            )
    finally:
        for server in servers:
            server.stop()
        for pair in made.values():
            for side in pair:
                side.close()


# -- strategies ---------------------------------------------------------------------------------

PIECES = [
    b" ", b"\t", b"\n", b"\r", b"\x0b", b"\x0c", b"\x1c", b"\x85", b"\xa0",
    b"^hb^", b"quit", b"QUIT", b"Quit", b"^HB^",
    b"'", b'"', b"\\", b"\x00", b"\x1f", b"\x7f", b"\x80", b"\xff",
    b"a", b"z", b"A", b"{", b"`", b"@", b"[", b"~", "你好".encode(), "é".encode(),
]  # fmt: skip
structured = st.lists(st.sampled_from(PIECES), max_size=16).map(b"".join)
small = st.binary(max_size=300)


@st.composite
def large(draw: Any) -> bytes:
    """Up to 65507 bytes: random, printable (whose Ack may just fit in one datagram, or not),
    or made of the bytes that repr escapes; sizes near the edges come often."""
    size = draw(
        st.one_of(
            st.integers(0, MAX_DATAGRAM),
            st.sampled_from([1023, 1024, 1025, 4096, 65_470, 65_476, 65_477, 65_478, 65_500, MAX_DATAGRAM]),
        )
    )
    kind = draw(st.sampled_from(["random", "printable", "escapes"]))
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    if kind == "random":
        return rng.randbytes(size)
    alphabet = bytes(range(0x20, 0x7F)) if kind == "printable" else b"'\"\\\t\n\r\x00\xffaZ "
    return bytes(rng.choices(alphabet, k=size))


@st.composite
def datagrams(draw: Any) -> bytes:
    """Mostly small, some large."""
    which = draw(st.integers(0, 9))
    if which < 4:
        return draw(structured)
    if which < 8:
        return draw(small)
    return draw(large())


# -- tests --------------------------------------------------------------------------------------


SIZES: List[int] = []  # of the datagrams the single-datagram test sent, for the figures


def _both(sides: Dict[int, Tuple[Side, Side]], bufsize: int, sends: List[Tuple[int, bytes]]) -> None:
    ours, model = sides[bufsize]
    for sender, data in sends:
        ours.send(sender, data)
        model.send(sender, data)
    got_ours, got_model = ours.collect(), model.collect()
    assert got_ours == got_model
    assert ours.table() == model.table()


@FUZZ
@given(data=datagrams())
def test_one_random_datagram_gets_the_same_answer_as_the_original(
    sides: Dict[int, Tuple[Side, Side]], data: bytes
) -> None:
    SIZES.append(len(data))
    for bufsize in (1024, MAX_DATAGRAM):  # the tutorial's recvfrom(1024) cuts; 65507 reads it all
        _both(sides, bufsize, [(0, data)])


@FUZZ
@given(
    steps=st.lists(
        st.tuples(
            st.integers(0, 2),
            st.one_of(st.sampled_from([b"^hb^", b" ^hb^\n", b"quit", b"quit\r\n", b"\x0bquit"]), structured, small),
        ),
        max_size=12,
    )
)
def test_random_sequences_from_several_sources_match_the_original(
    sides: Dict[int, Tuple[Side, Side]], steps: List[Tuple[int, bytes]]
) -> None:
    """Joins, quits and chat from three sources in a random order: the same Acks reach the same
    sockets, and both tables hold the same sources afterwards."""
    _both(sides, 1024, steps)
    # Start the next example from an empty table (the listener aside).
    _both(sides, 1024, [(i, b"quit") for i in range(3)])


@FUZZ
@given(data=datagrams())
def test_a_client_delivers_any_datagram_unchanged(data: bytes) -> None:
    """Whatever a server sends, a client hands it to on_message as it is (cut at bufsize)."""
    _client_fixture.check(data)


class _ClientFixture:
    """One fake server socket and two chatudp clients (bufsize 1024 and 65507), made lazily."""

    def __init__(self) -> None:
        self.server: Optional[socket.socket] = None
        self.clients: List[Tuple[ChatUdpClient, List[bytes], threading.Event]] = []
        self.sent = 0

    def ensure(self) -> None:
        if self.server is not None:
            return
        self.server = _socket()
        for bufsize in (1024, MAX_DATAGRAM):
            box: List[bytes] = []
            end = threading.Event()

            def on_message(data: bytes, addr: Any, box: List[bytes] = box, end: threading.Event = end) -> None:
                box.append(data)
                if data == b"end":
                    end.set()

            cli = ChatUdpClient(*self.server.getsockname(), interval=3600, bufsize=bufsize, on_message=on_message)
            cli.start()
            cli.send(b"hello")
            self.clients.append((cli, box, end))
        for _ in self.clients:
            self.server.recvfrom(100)

    def check(self, data: bytes) -> None:
        self.ensure()
        assert self.server is not None
        for cli, box, end in self.clients:
            box.clear()
            end.clear()
            self.server.sendto(data, cli.addr)
            self.server.sendto(b"end", cli.addr)
            self.sent += 2
            assert end.wait(5), "the end marker never came"
            assert box == [data[: cli.bufsize], b"end"]
            assert cli.running

    def close(self) -> None:
        for cli, _, _ in self.clients:
            received = cli.stats["received"]
            cli.stop()
            assert received == self.sent // len(self.clients)
        if self.server is not None:
            self.server.close()


_client_fixture = _ClientFixture()


@pytest.fixture(scope="module", autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    _client_fixture.close()


def test_the_servers_keep_serving_after_the_fuzz(sides: Dict[int, Tuple[Side, Side]]) -> None:
    started = time.monotonic()
    for bufsize in sides:
        _both(sides, bufsize, [(1, b"still serving?"), (2, b"")])
    assert time.monotonic() - started < 2
