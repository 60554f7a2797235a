"""No stop, signal, fork or argument may hang or crash the process; nothing is spent on events
nobody consumes. Each test names the fault it reproduces. ``CHATUDP_SOAK=1`` runs the long
trial loops (hundreds of signal and stop-each-other trials)."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from typing import Any, List

import pytest

from chatudp import ChatUdpClient, ChatUdpServer, ClosedError, _core
from chatudp.services import EchoClient, QQPeer

from conftest import LOOPBACK, wait_for

LONG = os.environ.get("CHATUDP_SOAK") == "1"


def run_script(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter; a hang there is a test failure here, not a hang."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=timeout
    )


def rss_kib() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# -- queue_size: memory follows what is queued; impossible bounds are ValueError -------------------


def test_idle_objects_do_not_preallocate_their_queue() -> None:
    # Before: a bounded channel of 65,536 slots of 64 bytes, 4 MiB per object, touched up front.
    before = rss_kib()
    servers = [ChatUdpServer(port=0, rcvbuf=65536, sndbuf=65536) for _ in range(40)]
    try:
        for srv in servers:
            srv.start()
        grown = rss_kib() - before
    finally:
        for srv in servers:
            srv.stop()
    assert grown < 24 * 1024, f"40 idle servers grew RSS by {grown} KiB"


def test_bounds_that_cannot_be_honoured_are_value_errors() -> None:
    # Before: queue_size=2**62 raised PanicException (a BaseException) at start().
    for kwargs in ({"queue_size": 2**62}, {"backlog": 2**62}, {"queue_size": 0}):
        with pytest.raises(ValueError, match="must be"):
            ChatUdpServer(port=0, **kwargs)
    with pytest.raises(ValueError, match="queue_size must be"):
        _core.ServerConfig(LOOPBACK, 0, 1.0, queue_size=2**62)
    with pytest.raises(ValueError, match="backlog must be"):
        _core.ClientConfig(LOOPBACK, 9, 1.0, backlog=2**62)
    # The largest bound is honoured: nothing is allocated for it.
    before = rss_kib()
    with ChatUdpServer(port=0, queue_size=_core.MAX_QUEUE, backlog=_core.MAX_QUEUE) as srv:
        assert srv.running
        assert rss_kib() - before < 16 * 1024


def test_a_panic_in_an_entry_point_is_a_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="internal error in chatudp"):
        _core._panic_for_test()


# -- timeouts: NaN and negative are ValueError, inf means no limit ---------------------------------


def test_every_timeout_refuses_nan_and_negative_and_takes_inf(stopper: Any) -> None:
    # Before: recv_message(timeout=nan) spun at 100% CPU forever.
    srv = stopper(ChatUdpServer(port=0))
    srv.start()
    peer = stopper(QQPeer((LOOPBACK, 0)))
    peer.stop = peer.close
    for bad in (math.nan, -1.0, -math.inf):
        with pytest.raises(ValueError, match="timeout"):
            srv.recv_message(timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            asyncio.run(srv.arecv(timeout=bad))
        with pytest.raises(ValueError, match="timeout"):
            peer.recvfrom(timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            srv._core.next_events(timeout=bad)
        with pytest.raises(ValueError, match="timeout"):
            EchoClient(timeout=bad)
    with pytest.raises(TimeoutError):
        srv.recv_message(timeout=0)
    # inf: no limit, so only stop()/close() ends the waits.
    threading.Timer(0.2, srv.stop).start()
    with pytest.raises(ClosedError):
        srv.recv_message(timeout=math.inf)
    threading.Timer(0.2, peer.close).start()
    with pytest.raises(ClosedError):
        peer.recvfrom(timeout=math.inf)
    EchoClient(timeout=math.inf).close()


# -- start() returns once its threads run ---------------------------------------------------------


def os_thread_names() -> List[str]:
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as comm:
                names.append(comm.read().strip())
        except FileNotFoundError:
            pass
    return names


def test_start_returns_once_the_socket_thread_runs() -> None:
    # Before: the new thread named itself some time after start() returned.
    for _ in range(30):
        core = _core.Server(_core.ServerConfig(LOOPBACK, 0, 10.0))
        try:
            assert "chatudp-server" in os_thread_names()
        finally:
            core.stop()


# -- a tiny interval must not busy-loop -----------------------------------------------------------


def test_a_tiny_interval_does_not_spin() -> None:
    # Before: interval=1e-9 burnt a whole core (the server's wait was clamped to the interval).
    with ChatUdpServer(port=0, interval=1e-9) as srv:
        with ChatUdpClient(*srv.addr, interval=1e-9):
            time.sleep(0.1)
            cpu, wall = time.process_time(), time.monotonic()
            time.sleep(1.0)
            used = (time.process_time() - cpu) / (time.monotonic() - wall)
    assert used < 0.5, f"idle server and client used {used:.0%} of a core"


# -- IPv6 size limit ------------------------------------------------------------------------------


def ipv6_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not ipv6_available(), reason="no ::1")
def test_ipv6_sends_up_to_the_family_limit(stopper: Any) -> None:
    # Before: 65,508..65,527 bytes over ::1 were refused as "at most 65507".
    receiver = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    receiver.bind(("::1", 0))
    receiver.settimeout(3)
    port = receiver.getsockname()[1]
    try:
        cli = stopper(ChatUdpClient("::1", port, interval=10))
        cli.start()
        cli.send(b"x" * 65527)
        assert len(receiver.recv(70000)) == 65527
        with pytest.raises(OSError) as too_long:
            cli.send(b"x" * 65528)
        assert too_long.value.errno == errno.EMSGSIZE and "65527" in str(too_long.value)
        peer = QQPeer(("::1", 0))
        try:
            peer.sendto(b"y" * 65527, ("::1", port))
            assert len(receiver.recv(70000)) == 65527
        finally:
            peer.close()
    finally:
        receiver.close()


# -- fork -----------------------------------------------------------------------------------------


def test_objects_inherited_by_a_fork_child_are_inert() -> None:
    # Before: running was True in the child, stop() raised PanicException, exit printed a panic.
    result = run_script(
        """
        import os, sys
        from chatudp import ChatUdpServer, ChatUdpClient
        srv = ChatUdpServer(port=0); srv.start()
        cli = ChatUdpClient(*srv.addr, interval=0.05); cli.start()
        cli.send("before"); srv.recv_message(timeout=5)
        pid = os.fork()
        if pid == 0:
            ok = not srv.running and not cli.running
            srv.stop(); cli.stop(); srv.stop()
            sys.exit(0 if ok else 3)   # a normal exit: the atexit hook runs
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert srv.running and cli.running
        cli.send("after"); data, _ = srv.recv_message(timeout=5)
        assert data == b"after", data
        cli.stop(); srv.stop()
        print("parent ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "parent ok"
    assert result.stderr == "", result.stderr


# -- stop from callbacks of each other ------------------------------------------------------------


def stop_each_other_once(order: str) -> bool:
    """A server's and a client's callbacks both call one shutdown() stopping both; True when
    both stopped within 10 s."""
    srv = ChatUdpServer(port=0)
    srv.start()
    cli = ChatUdpClient(*srv.addr, interval=10)

    def shutdown_server_first(*_: object) -> None:
        srv.stop()
        cli.stop()

    def shutdown_client_first(*_: object) -> None:
        cli.stop()
        srv.stop()

    srv.on_message = shutdown_server_first if order == "ss" else shutdown_client_first
    cli.on_message = shutdown_client_first if order in ("ss", "cc") else shutdown_server_first
    cli.start()
    cli.send("go")
    stopped = srv.event.wait(10) and cli.event.wait(10)
    srv.stop()
    cli.stop()
    return stopped


@pytest.mark.parametrize("order", ["ss", "cc", "sc"])
def test_callbacks_may_stop_each_others_objects_in_any_order(order: str) -> None:
    # Before: hung in 3 of 3 runs (each dispatcher joined the other's).
    trials = 100 if LONG else 5
    hung = sum(not stop_each_other_once(order) for _ in range(trials))
    assert hung == 0, f"{hung} of {trials} trials hung"


def test_the_exit_hook_does_not_hang_after_callbacks_stopped_each_other() -> None:
    result = run_script(
        """
        import threading
        from chatudp import ChatUdpServer, ChatUdpClient
        srv = ChatUdpServer(port=0); srv.start()
        cli = ChatUdpClient(*srv.addr, interval=10)
        def shutdown(*_):
            cli.stop(); srv.stop()
        srv.on_message = shutdown
        cli.on_message = shutdown
        cli.start(); cli.send("go")
        srv.event.wait(5)
        # a callback that never returns must not hold the exit either
        other = ChatUdpServer(port=0, on_message=lambda d, a: threading.Event().wait())
        other.start()
        c2 = ChatUdpClient(*other.addr, interval=10); c2.start(); c2.send("block")
        import time; time.sleep(0.3)
        print("exiting")
        """,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exiting"


# -- a signal handler calling stop() while the main thread iterates -------------------------------


def test_a_signal_handler_may_stop_a_server_being_iterated() -> None:
    # Before: hung in 4 of 60 trials (the handler ran while the main thread held the inbox lock).
    trials = 300 if LONG else 25
    result = run_script(
        f"""
        import faulthandler, os, random, signal, sys, threading, time
        from chatudp import ChatUdpServer, ChatUdpClient
        faulthandler.dump_traceback_later(240, exit=True)
        random.seed(7)
        for trial in range({trials}):
            srv = ChatUdpServer(port=0); srv.start()
            clients = [ChatUdpClient(*srv.addr, interval=10) for _ in range(2)]
            for c in clients: c.start()
            done = threading.Event()
            def flood(c):
                while not done.is_set():
                    try: c.send("x" * 16)
                    except OSError: return
            senders = [threading.Thread(target=flood, args=(c,)) for c in clients]
            for t in senders: t.start()
            signal.signal(signal.SIGUSR1, lambda *_: srv.stop())
            threading.Timer(random.uniform(0.005, 0.05), os.kill, (os.getpid(), signal.SIGUSR1)).start()
            got = 0
            for data, addr in srv:
                got += 1
            done.set()
            for t in senders: t.join()
            for c in clients: c.stop()
        print("trials", {trials})
        """,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["trials", str(trials)], result.stdout + result.stderr


# -- events only for someone ----------------------------------------------------------------------


def test_messages_kept_before_recv_message_and_routes_follow_callbacks(stopper: Any) -> None:
    srv = stopper(ChatUdpServer(port=0, backlog=3))
    srv.start()
    cli = stopper(ChatUdpClient(*srv.addr, interval=10))
    cli.start()
    for i in range(5):
        cli.send(f"m{i}")
    wait_for(lambda: srv.stats["relayed"] == 5, what="5 relayed")
    wait_for(lambda: srv.stats["dropped"]["backlog_full"] == 2, what="2 dropped from the backlog")
    assert [srv.recv_message(timeout=5)[0] for _ in range(3)] == [b"m2", b"m3", b"m4"]
    got: List[bytes] = []
    srv.on_message = lambda data, addr: got.append(data)
    cli.send("to the callback")
    wait_for(lambda: got == [b"to the callback"], what="the callback set after start() to run")
    with pytest.raises(TimeoutError):
        srv.recv_message(timeout=0.05)
