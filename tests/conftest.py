"""Shared fixtures: loopback sockets, port 0 everywhere, every wait bounded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Iterator, List, Tuple

import pytest
from brokers import broker, nats_cluster, nats_server, redis_server  # noqa: F401  (fixtures)

LOOPBACK = "127.0.0.1"


def run_script(script: Path, cwd: Path, timeout: float) -> Tuple[int, str, str]:
    """Runs `script` as a user does (`python script.py` in `cwd`, chatudp from the installed
    package, no stdin); returns its exit status, stdout and stderr, or fails the test after
    `timeout` seconds with what it printed."""
    env = dict(os.environ, PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    try:
        proc = subprocess.run(
            [sys.executable, str(script)], cwd=cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{script.name} did not exit within {timeout} s; output so far:\n{exc.stdout!r}\n{exc.stderr!r}")
    return proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")


def wait_for(condition: Callable[[], object], timeout: float = 5.0, what: str = "condition") -> None:
    """Polls `condition` until it is true; fails the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


class Peer:
    """A stdlib UDP socket standing in for a tutorial client."""

    def __init__(self, family: int = socket.AF_INET, host: str = LOOPBACK) -> None:
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.bind((host, 0))
        self.sock.settimeout(3.0)
        self.addr = self.sock.getsockname()

    @property
    def port(self) -> int:
        return int(self.addr[1])

    def send(self, data: bytes, to: tuple) -> None:
        self.sock.sendto(data, to)

    def recv(self, timeout: float = 3.0) -> bytes:
        self.sock.settimeout(timeout)
        data, _ = self.sock.recvfrom(65535)
        return data

    def recv_nothing(self, timeout: float = 0.3) -> bool:
        """True when nothing arrives within `timeout` seconds."""
        self.sock.settimeout(timeout)
        try:
            self.sock.recvfrom(65535)
        except socket.timeout:
            return True
        return False

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def peers() -> Iterator[Callable[..., Peer]]:
    made: List[Peer] = []

    def make(*args: object) -> Peer:
        peer = Peer(*args)  # type: ignore[arg-type]
        made.append(peer)
        return peer

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def stopper() -> Iterator[Callable[[object], object]]:
    """Registers servers and clients to stop at the end of the test, whatever happens."""
    started: List[object] = []

    def register(obj: object) -> object:
        started.append(obj)
        return obj

    yield register
    for obj in reversed(started):
        obj.stop()  # type: ignore[attr-defined]


def thread_count() -> int:
    """Threads of this process as the kernel sees them (Rust threads included)."""
    import os

    return len(os.listdir("/proc/self/task"))
