"""The awaitable service clients: ``await EchoClient.arequest()``, ``await
TimeClient.arequest()``, ``await QQPeer.arecvfrom()``. Each keeps the event loop running while it
waits (a ticker coroutine proves it), retries and gives up as the blocking form does, and ends at
once when cancelled or when the socket is closed. Real sockets on loopback."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any, Awaitable, Callable, List, Optional, TypeVar

import pytest
from conftest import LOOPBACK
from test_services import StdServer

from chatudp import ClosedError, EchoClient, EchoServer, NoReplyError, QQPeer, TimeClient, TimeServer

T = TypeVar("T")


async def while_ticking(awaitable: Awaitable[T]) -> "tuple[T, int]":
    """Awaits `awaitable` while a coroutine ticks every 10 ms; returns its result and the ticks."""
    ticks = 0
    done = False

    async def ticker() -> None:
        nonlocal ticks
        while not done:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.ensure_future(ticker())
    try:
        return await awaitable, ticks
    finally:
        done = True
        await task


def delayed_echo(delay: float) -> Callable[[bytes], Optional[bytes]]:
    def answer(data: bytes) -> bytes:
        time.sleep(delay)
        return data.upper()

    return answer


def test_echo_arequest_keeps_the_loop_running() -> None:
    server = StdServer(delayed_echo(0.3))
    try:
        with EchoClient(*server.addr[:2], timeout=5) as client:
            reply, ticks = asyncio.run(while_ticking(client.arequest("hello")))
            assert reply == b"HELLO"
            assert ticks >= 5, f"the event loop ticked {ticks} times in 0.3 s: it was blocked"
            assert client.stats["sent"] == 1 and client.stats["retries"] == 0
    finally:
        server.close()


def test_arequest_against_chatudp_servers_with_validation() -> None:
    async def scenario(echo: EchoServer, clock: TimeServer) -> "tuple[bytes, str, str]":
        with EchoClient(*echo.addr[:2]) as e, TimeClient(*clock.addr[:2]) as t:
            got = await asyncio.gather(e.arequest(b"abc"), t.arequest("%Y"), t.arequest())
            assert e.stats["challenges"] == 1
            return got[0], got[1], got[2]

    with EchoServer(LOOPBACK, 0, validate=True) as echo, TimeServer(LOOPBACK, 0) as clock:
        reply, year, default = asyncio.run(scenario(echo, clock))
    assert reply == b"ABC"
    assert year == time.strftime("%Y")
    assert len(default) == len(time.strftime("%Y-%m-%d %X"))


def test_arequest_resends_then_gives_up() -> None:
    seen: List[bytes] = []

    def second_try_only(data: bytes) -> Optional[bytes]:
        seen.append(data)
        return data.upper() if len(seen) == 2 else None

    server = StdServer(second_try_only)
    silent = StdServer(lambda data: None)
    try:
        with EchoClient(*server.addr[:2], timeout=0.2, retries=2) as client:
            assert asyncio.run(client.arequest(b"again")) == b"AGAIN"
            assert client.stats["retries"] == 1
        with EchoClient(*silent.addr[:2], timeout=0.1, retries=1) as client:
            started = time.monotonic()
            with pytest.raises(NoReplyError, match="after 2 tries"):
                asyncio.run(client.arequest(b"anyone?"))
            assert time.monotonic() - started >= 0.2
            assert len(silent.received) == 2
    finally:
        server.close()
        silent.close()


def test_arequest_is_cancellable_and_the_client_stays_usable() -> None:
    silent = StdServer(lambda data: None)
    echo = EchoServer(LOOPBACK, 0)
    echo.start()

    async def scenario() -> bytes:
        with EchoClient(*silent.addr[:2], timeout=30) as client:
            task = asyncio.ensure_future(client.arequest(b"never answered"))
            await asyncio.sleep(0.05)
            started = time.monotonic()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert time.monotonic() - started < 1
            client.raddr, client._remote = echo.addr, echo.addr  # the same socket, another server
            return await client.arequest(b"now")

    try:
        assert asyncio.run(scenario()) == b"NOW"
    finally:
        silent.close()
        echo.stop()


def test_arequest_under_asyncio_wait_for_timeout() -> None:
    silent = StdServer(lambda data: None)

    async def scenario() -> None:
        with EchoClient(*silent.addr[:2], timeout=30) as client:
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(client.arequest(b"x"), 0.1)

    try:
        asyncio.run(scenario())
    finally:
        silent.close()


def test_arecvfrom_receives_times_out_and_keeps_the_loop_running() -> None:
    async def scenario() -> None:
        with QQPeer((LOOPBACK, 0)) as me, QQPeer((LOOPBACK, 0)) as other:
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, other.sendto, b"late hello", me.addr)
            (data, source), ticks = await while_ticking(me.arecvfrom(timeout=5))
            assert (data, source) == (b"late hello", other.addr)
            assert ticks >= 5, f"the event loop ticked {ticks} times in 0.2 s: it was blocked"
            started = time.monotonic()
            with pytest.raises(TimeoutError):
                await me.arecvfrom(timeout=0.1)
            assert time.monotonic() - started >= 0.1
            # Several datagrams queued: one each, in order.
            for n in range(3):
                other.sendto(b"%d" % n, me.addr)
            assert [(await me.arecvfrom(5))[0] for _ in range(3)] == [b"0", b"1", b"2"]
            with pytest.raises(ValueError):
                await me.arecvfrom(timeout=-1)

    asyncio.run(scenario())


def test_arecvfrom_is_cancellable() -> None:
    async def scenario() -> None:
        with QQPeer((LOOPBACK, 0)) as me, QQPeer((LOOPBACK, 0)) as other:
            task = asyncio.ensure_future(me.arecvfrom())
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            other.sendto(b"after", me.addr)
            assert (await me.arecvfrom(5))[0] == b"after"

    asyncio.run(scenario())


def test_close_from_another_thread_ends_arecvfrom_and_frees_the_port() -> None:
    async def scenario(peer: QQPeer) -> None:
        closer = threading.Timer(0.1, peer.close)
        closer.start()
        started = time.monotonic()
        with pytest.raises(ClosedError):
            await peer.arecvfrom()
        assert time.monotonic() - started < 2
        closer.join()

    peer = QQPeer((LOOPBACK, 0))
    addr = peer.addr
    asyncio.run(scenario(peer))
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind(addr)
    finally:
        probe.close()


def test_close_on_the_loop_ends_a_waiting_arecvfrom() -> None:
    async def scenario() -> None:
        peer = QQPeer((LOOPBACK, 0))
        task = asyncio.ensure_future(peer.arecvfrom())
        await asyncio.sleep(0.05)
        peer.close()
        with pytest.raises(ClosedError):
            await asyncio.wait_for(task, 2)
        with pytest.raises(ClosedError):
            await peer.arecvfrom(1)

    asyncio.run(scenario())


def test_works_under_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> Any:
        with EchoServer(LOOPBACK, 0) as echo, EchoClient(*echo.addr[:2]) as client:
            with QQPeer((LOOPBACK, 0)) as me, QQPeer((LOOPBACK, 0)) as other:
                asyncio.get_running_loop().call_later(0.05, other.sendto, b"uv", me.addr)
                return await client.arequest(b"loop"), (await me.arecvfrom(5))[0]

    assert uvloop.run(scenario()) == (b"LOOP", b"uv")


def test_arequest_to_a_closed_port_says_refused_without_spinning() -> None:
    """The network's report of a closed port wakes the event loop's watch once, is read, and
    the request goes on waiting quietly: no busy loop while the retries run out."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port = probe.getsockname()[1]
    probe.close()
    with EchoClient(LOOPBACK, port, timeout=0.2, retries=1) as client:
        cpu, wall = time.process_time(), time.monotonic()
        with pytest.raises(NoReplyError) as caught:
            asyncio.run(client.arequest(b"anyone?"))
        cpu, wall = time.process_time() - cpu, time.monotonic() - wall
    assert caught.value.refused, caught.value
    assert wall >= 0.4 and cpu < 0.2, f"{cpu:.3f} s of CPU in {wall:.3f} s: the event loop spun"
