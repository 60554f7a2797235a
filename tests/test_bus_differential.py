"""The differential tests in bus mode: the tutorial's model server alone against two chatudp
relays joined through a real broker, with the clients split between the relays (in the
`nats_workers` and `redis_workers` runs the sender's relay has four and two socket threads).
Every client's bytes must be those the single model server sends, whichever relay it is on."""

from __future__ import annotations

import tempfile
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from brokers import Broker, NatsServer, RedisServer
from conftest import wait_for
from test_differential import (
    END,
    HOST,
    LONG_INTERVAL,
    MARKER,
    PAYLOAD_CASES,
    PAYLOAD_IDS,
    new_socket,
    normalise,
    read_until,
    register,
    run_script,
    script_for,
    spec_ack,
    start_server,
)

from chatudp import ChatUdpServer

# The helpers' fixtures, used here under the same names.
__all__ = ["new_socket", "start_server"]

WHOLE_SCRIPT = [payload for case in PAYLOAD_CASES for payload in (case[0], MARKER)]


def federation(broker: Broker, workers: int = 1) -> Iterator[Tuple[ChatUdpServer, ChatUdpServer]]:
    """Two relays; the first (the sender's) with `workers` socket threads."""
    relays = [
        ChatUdpServer(HOST, 0, LONG_INTERVAL, bus=broker.url, room="differential", workers=count)
        for count in (workers, 1)
    ]
    try:
        for relay in relays:
            relay.start()
        for relay in relays:
            wait_for(lambda: len(relay.peers) == 1, 10, "the two relays to meet on the bus")
        yield relays[0], relays[1]
    finally:
        for relay in relays:
            relay.stop()
        broker.kill()


@pytest.fixture(scope="module")
def nats_relays() -> Iterator[Tuple[ChatUdpServer, ChatUdpServer]]:
    yield from federation(NatsServer().start())


@pytest.fixture(scope="module")
def nats_workers_relays() -> Iterator[Tuple[ChatUdpServer, ChatUdpServer]]:
    yield from federation(NatsServer().start(), workers=4)


@pytest.fixture(scope="module")
def redis_workers_relays() -> Iterator[Tuple[ChatUdpServer, ChatUdpServer]]:
    with tempfile.TemporaryDirectory(prefix="chatudp-redis-") as directory:
        yield from federation(RedisServer(directory).start(), workers=2)


@pytest.fixture(scope="module")
def redis_relays() -> Iterator[Tuple[ChatUdpServer, ChatUdpServer]]:
    with tempfile.TemporaryDirectory(prefix="chatudp-redis-") as directory:
        yield from federation(RedisServer(directory).start())


def run_federated(relays: Tuple[ChatUdpServer, ChatUdpServer], script: List[bytes], new_socket: Any) -> Dict[str, List[bytes]]:
    """`run_script` across two relays: the sender and listener0 on the first, listener1 and
    listener2 on the second; the same names and normalisation as the single-server run."""
    first, second = relays
    receivers = {name: new_socket() for name in ("listener0", "listener1", "listener2", "sender")}
    register(first, [receivers["listener0"], receivers["sender"]])
    register(second, [receivers["listener1"], receivers["listener2"]])
    sender = receivers["sender"]
    for payload in list(script) + [END]:
        sender.sendto(payload, first.addr)
    port = str(sender.getsockname()[1]).encode()
    suffix = b" from " + HOST.encode() + b":" + port
    end_ack = spec_ack(END, port)
    return {name: [normalise(data, suffix) for data in read_until(sock, end_ack)] for name, sock in receivers.items()}


@pytest.mark.parametrize("payload, acked", PAYLOAD_CASES, ids=PAYLOAD_IDS)
def test_payload_across_nats_relays_matches_model(
    payload: bytes, acked: bool, nats_relays: Any, start_server: Any, new_socket: Any
) -> None:
    script = script_for(payload)
    want = run_script(start_server("model"), script, new_socket)
    assert run_federated(nats_relays, script, new_socket) == want


@pytest.mark.parametrize("backend", ["nats", "redis", "nats_workers", "redis_workers"])
def test_whole_script_across_relays_matches_model(
    backend: str, request: pytest.FixtureRequest, start_server: Any, new_socket: Any
) -> None:
    relays = request.getfixturevalue(f"{backend}_relays")
    want = run_script(start_server("model"), WHOLE_SCRIPT, new_socket)
    assert run_federated(relays, WHOLE_SCRIPT, new_socket) == want
