"""Start, stop, context managers and interpreter exit: nothing hangs, nothing is left behind."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, List, Tuple

import pytest

from chatudp import ChatUdpClient, ChatUdpServer
from conftest import wait_for


def run_python(code: str, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def chatudp_threads() -> Tuple[int, int]:
    """(Rust socket threads, Python dispatcher threads) of chatudp alive in this process."""
    rust = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                rust += comm.read().startswith("chatudp-")
        except FileNotFoundError:  # the thread ended while we looked
            pass
    python = sum(t.name.startswith("chatudp-") for t in threading.enumerate())
    return rust, python


def test_stop_joins_every_thread() -> None:
    assert chatudp_threads() == (0, 0)
    srv = ChatUdpServer(port=0)
    srv.start()
    clients = [ChatUdpClient(*srv.addr, interval=0.05) for _ in range(3)]
    for c in clients:
        c.start()
        c.send("hi")
    assert chatudp_threads() == (4, 4)  # a socket thread and a dispatcher each
    for c in clients:
        c.stop()
    srv.stop()
    assert chatudp_threads()[1] == 0
    # A joined thread may linger in /proc for a moment while the kernel finishes its exit.
    wait_for(lambda: chatudp_threads() == (0, 0), timeout=2, what="every thread to exit")


def test_stop_is_prompt_and_idempotent() -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    cli = ChatUdpClient(*srv.addr, interval=10)
    cli.start()
    started = time.monotonic()
    cli.stop()
    srv.stop()
    assert time.monotonic() - started < 0.5
    srv.stop()
    cli.stop()
    assert srv.event.is_set() and cli.event.is_set()
    assert not srv.running and not cli.running


@pytest.mark.parametrize("workers", [1, 2])
def test_an_idle_socket_thread_wakes_at_once_for_stop_and_sendto(workers: int) -> None:
    # An idle relay thread sleeps in its receive (workers=1) or in epoll (a group), at most
    # 100 ms at a time: a wake-up that did not reach it would show as medians near 100 ms.
    stops, sends = [], []
    for _ in range(9):
        srv = ChatUdpServer(port=0, workers=workers)
        srv.start()
        peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5)
        time.sleep(0.03)  # the thread is asleep again
        started = time.monotonic()
        srv.sendto(b"ping", peer.getsockname())
        assert peer.recvfrom(64)[0] == b"ping"
        sends.append(time.monotonic() - started)
        # The wake-ups were datagrams to the relay's own socket (workers=1): none is a message.
        assert srv.stats["received"] == 0
        time.sleep(0.03)
        started = time.monotonic()
        srv.stop()
        stops.append(time.monotonic() - started)
        peer.close()
    assert statistics.median(stops) < 0.05, stops
    assert statistics.median(sends) < 0.05, sends


def test_stop_before_start_and_concurrent_stops() -> None:
    never = ChatUdpServer(port=0)
    never.stop()
    assert never.event.is_set()
    srv = ChatUdpServer(port=0)
    srv.start()
    threads = [threading.Thread(target=srv.stop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert not any(t.is_alive() for t in threads)
    assert srv.event.is_set()


def test_context_managers_start_and_stop() -> None:
    got: List[bytes] = []
    with ChatUdpServer(port=0) as srv:
        assert srv.running
        with ChatUdpClient(*srv.addr, on_message=lambda d, a: got.append(d)) as cli:
            cli.send("ctx")
            wait_for(lambda: got, what="Ack")
        assert cli.event.is_set()
    assert srv.event.is_set() and not srv.running
    already = ChatUdpServer(port=0)
    already.start()
    with already as same:  # a started object is not started twice
        assert same is already
    assert already.event.is_set()


def test_wait_on_event_has_a_way_out() -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    threading.Timer(0.1, srv.stop).start()
    assert srv.event.wait(5)


@pytest.mark.parametrize("stop", [True, False], ids=["explicit-stop", "exit-without-stop"])
def test_process_exits_on_its_own(stop: bool) -> None:
    code = f"""
        import time
        from chatudp import ChatUdpServer, ChatUdpClient
        srv = ChatUdpServer(port=0, interval=1)
        srv.start()
        cli = ChatUdpClient(*srv.addr, interval=0.05)
        cli.start()
        cli.send("hello")
        time.sleep(0.2)
        if {stop}:
            cli.send("quit")
            cli.stop()
            srv.stop()
        print("done", flush=True)
    """
    started = time.monotonic()
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "done"
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 10


def test_stop_sends_bye_at_interpreter_exit() -> None:
    import socket

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(10)
    try:
        # The child serves until its table holds the listener, then exits without stop().
        code = """
            import sys, time
            from chatudp import ChatUdpServer
            srv = ChatUdpServer(port=0)
            srv.start()
            print(srv.addr[1], flush=True)
            deadline = time.time() + 5
            while not srv.clients and time.time() < deadline:
                time.sleep(0.01)
        """
        with subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        ) as proc:
            try:
                assert proc.stdout is not None
                port = int(proc.stdout.readline())
                listener.sendto(b"^hb^", ("127.0.0.1", port))
                assert listener.recvfrom(100)[0] == b"Bye!"
                assert proc.wait(10) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    finally:
        listener.close()


def test_many_threads_use_one_client_at_once(stopper: Any) -> None:
    srv = ChatUdpServer(port=0, on_message=lambda d, a: None)
    srv.start()
    stopper(srv)
    cli = ChatUdpClient(*srv.addr, on_message=lambda d, a: None)
    cli.start()
    stopper(cli)
    errors: List[BaseException] = []

    def hammer() -> None:
        try:
            for i in range(200):
                cli.send(f"m{i}")
                srv.clients
                srv.stats
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    wait_for(lambda: srv.stats["received"] == 1600, what="all 1600 messages")


def test_a_panic_in_the_socket_thread_is_reported_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    srv = ChatUdpServer(port=0)
    srv.start()
    with caplog.at_level(logging.ERROR, logger="chatudp"):
        srv._core._inject_panic()
        wait_for(lambda: not srv.running, what="the socket thread to die")
        wait_for(lambda: any("socket thread failed" in r.getMessage() for r in caplog.records), what="report")
    report = next(r.getMessage() for r in caplog.records if "socket thread failed" in r.getMessage())
    assert "panic injected" in report
    srv.stop()
    assert srv.event.is_set()


def test_a_client_whose_thread_died_raises_runtime_error() -> None:
    srv = ChatUdpServer(port=0)
    srv.start()
    cli = ChatUdpClient(*srv.addr)
    cli.start()
    try:
        cli._core._inject_panic()
        wait_for(lambda: not cli.running, what="the socket thread to die")
        with pytest.raises(RuntimeError, match="socket thread failed"):
            cli.send("anyone?")
    finally:
        cli.stop()
        srv.stop()
