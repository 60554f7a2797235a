"""Pull and asyncio consumers: recv_message, iteration, arecv, async for, async with."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, List

import pytest

from chatudp import ChatUdpClient, ChatUdpServer, ClosedError
from conftest import wait_for


def ack(text: bytes, port: int) -> bytes:
    return b"Ack b'" + text + b"'. from 127.0.0.1:" + str(port).encode()


@pytest.fixture
def pair(stopper: Any) -> Any:
    srv = ChatUdpServer(port=0)
    srv.start()
    stopper(srv)
    cli = ChatUdpClient(*srv.addr)
    cli.start()
    stopper(cli)
    return srv, cli


def test_recv_message_returns_data_and_address(pair: Any) -> None:
    srv, cli = pair
    cli.send("pull")
    assert srv.recv_message(timeout=5) == (b"pull", cli.addr)
    assert cli.recv_message(timeout=5) == (ack(b"PULL", cli.addr[1]), srv.addr)


def test_recv_message_times_out(pair: Any) -> None:
    srv, _ = pair
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        srv.recv_message(timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2


def test_iteration_ends_when_stopped(pair: Any) -> None:
    srv, cli = pair
    for i in range(5):
        cli.send(f"m{i}")
    got: List[bytes] = []
    for data, addr in srv:
        got.append(data)
        assert addr == cli.addr
        if len(got) == 5:
            threading.Timer(0.05, srv.stop).start()
    assert got == [b"m0", b"m1", b"m2", b"m3", b"m4"]
    with pytest.raises(ClosedError):
        srv.recv_message(timeout=1)


def test_backlog_keeps_the_newest_and_counts_the_rest(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, backlog=3)
    srv.start()
    stopper(srv)
    cli = ChatUdpClient(*srv.addr, on_message=lambda d, a: None)
    cli.start()
    stopper(cli)
    for i in range(10):
        cli.send(f"m{i}")
    wait_for(lambda: srv.stats["dropped"]["backlog_full"] == 7, what="7 overflowed messages")
    assert [srv.recv_message(1)[0] for _ in range(3)] == [b"m7", b"m8", b"m9"]


def test_on_message_takes_messages_instead_of_the_backlog(stopper: Any) -> None:
    seen: List[bytes] = []
    srv = ChatUdpServer(port=0, on_message=lambda d, a: seen.append(d))
    srv.start()
    stopper(srv)
    cli = ChatUdpClient(*srv.addr)
    cli.start()
    stopper(cli)
    cli.send("cb")
    wait_for(lambda: seen == [b"cb"], what="callback")
    with pytest.raises(TimeoutError):
        srv.recv_message(timeout=0.1)


def test_recv_message_before_start_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="start"):
        ChatUdpServer(port=0).recv_message(timeout=0)


def test_arecv_and_async_for() -> None:
    async def scenario() -> List[bytes]:
        async with ChatUdpServer(port=0) as srv:
            async with ChatUdpClient(*srv.addr) as cli:
                cli.send("a1")
                data, addr = await srv.arecv(timeout=5)
                assert (data, addr) == (b"a1", cli.addr)
                assert (await cli.arecv(timeout=5))[0] == ack(b"A1", cli.addr[1])
                with pytest.raises(TimeoutError):
                    await srv.arecv(timeout=0.1)
                for i in range(3):
                    cli.send(f"x{i}")
                got = []
                async for data, _ in srv:
                    got.append(data)
                    if len(got) == 3:
                        asyncio.get_running_loop().call_later(0.05, srv.stop)
            assert cli.event.is_set()
        return got

    assert asyncio.run(scenario()) == [b"x0", b"x1", b"x2"]


def test_arecv_does_not_block_the_event_loop(pair: Any) -> None:
    srv, cli = pair

    async def scenario() -> int:
        ticks = 0
        waiter = asyncio.ensure_future(srv.arecv(timeout=5))
        while not waiter.done():
            ticks += 1
            if ticks == 20:
                cli.send("late")
            await asyncio.sleep(0.005)
        assert (await waiter)[0] == b"late"
        return ticks

    assert asyncio.run(scenario()) >= 20


def test_works_under_uvloop(pair: Any) -> None:
    uvloop = pytest.importorskip("uvloop")
    srv, cli = pair

    async def scenario() -> bytes:
        cli.send("uv")
        return (await srv.arecv(timeout=5))[0]

    assert uvloop.run(scenario()) == b"uv"


def test_ctrl_c_interrupts_a_blocking_recv() -> None:
    code = """
        import signal
        import sys
        from chatudp import ChatUdpServer
        srv = ChatUdpServer(port=0)
        srv.start()
        print("ready", flush=True)
        try:
            srv.recv_message()
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            print("interrupted", flush=True)
            srv.stop()
    """
    with subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            time.sleep(0.2)
            started = time.monotonic()
            # On a loaded machine the child may not be in recv_message() yet when the first
            # Ctrl-C comes (and Python may spend it elsewhere): press it again, as a user would.
            for _ in range(10):
                proc.send_signal(signal.SIGINT)
                try:
                    out, err = proc.communicate(timeout=1)
                    break
                except subprocess.TimeoutExpired:
                    continue
            else:
                out, err = proc.communicate(timeout=10)
            assert "interrupted" in out, err
            assert proc.returncode == 0
            assert time.monotonic() - started < 3
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
