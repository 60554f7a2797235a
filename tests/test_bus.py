"""Relays joined through real brokers (nats-server, a three-node NATS cluster, redis-server), on
loopback: the tutorial's own clients chatting across relays, and the faults of the broker."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Dict, List

import original_model as model
import pytest
from brokers import Broker, NatsServer, RedisServer
from conftest import LOOPBACK, wait_for

from chatudp import ChatUdpClient, ChatUdpServer

# A relay announces itself every second; peers and connections settle within a few.
SETTLE = 10.0


@pytest.fixture
def relays(stopper: Callable[[object], object]) -> Callable[..., ChatUdpServer]:
    def start(bus: Any, room: str = "chatudp", **options: Any) -> ChatUdpServer:
        server = ChatUdpServer(LOOPBACK, 0, options.pop("interval", 30), bus=bus, room=room, **options)
        server.start()
        stopper(server)
        return server

    return start


def bus_stats(server: ChatUdpServer) -> Dict[str, Any]:
    stats: Dict[str, Any] = server.stats["bus"]
    return stats


def joined(*servers: ChatUdpServer) -> None:
    """Waits until every relay is connected and sees every other one as a peer."""
    for server in servers:
        wait_for(lambda: bus_stats(server)["connected"], SETTLE, "the relay to connect to its broker")
    for server in servers:
        others = {bus_stats(s)["id"] for s in servers if s is not server}
        wait_for(lambda: others <= {p["id"] for p in server.peers}, SETTLE, "the relays to see each other")


def tutorial_client(server: ChatUdpServer, stopper: Callable[[object], object]) -> model.ChatUdpClient:
    client = model.ChatUdpClient(LOOPBACK, server.addr[1], 30)
    client.start()
    stopper(client)
    client.send("^hb^")
    wait_for(lambda: tuple(client.addr) in server.clients, 5, "the client to join its relay")
    return client


def received(client: model.ChatUdpClient) -> List[bytes]:
    with client.lock:
        return list(client.received)


def ack(text: bytes, sender: Any) -> bytes:
    return b"Ack %r. from %s:%d" % (text.upper(), sender[0].encode(), sender[1])


def test_tutorial_clients_chat_across_two_relays(broker: Broker, relays: Any, stopper: Any) -> None:
    a, b = relays(broker.url), relays(broker.url)
    joined(a, b)
    alice, bob = tutorial_client(a, stopper), tutorial_client(b, stopper)
    alice.send("hello from a")
    bob.send("hi from b")
    expected = {ack(b"hello from a", alice.addr), ack(b"hi from b", bob.addr)}
    for client in (alice, bob):
        wait_for(lambda: set(received(client)) >= expected, 5, "both Acks at both clients")
    time.sleep(0.3)
    for client in (alice, bob):
        assert sorted(received(client)) == sorted(expected), "each Ack exactly once, bytes as the tutorial's"
    assert bus_stats(a)["published"] == 1 and bus_stats(b)["published"] == 1, "heartbeats are never published"
    assert bus_stats(a)["received"] == 1 and bus_stats(b)["received"] == 1
    assert a.clients.keys() == {tuple(alice.addr)} and b.clients.keys() == {tuple(bob.addr)}, "tables stay local"
    wait_for(lambda: [p["clients"] for p in a.peers] == [1], 3, "b's client count in a's peers")


def test_acks_of_one_sender_arrive_once_and_in_order(broker: Broker, relays: Any, peers: Any) -> None:
    a, b = relays(broker.url), relays(broker.url)
    joined(a, b)
    sender, listener = peers(), peers()
    sender.send(b"^hb^", a.addr)
    listener.send(b"^hb^", b.addr)
    wait_for(lambda: len(a.clients) == 1 and len(b.clients) == 1, 5, "both clients to join")
    got = []
    for burst in range(10):
        # Read as it comes: a plain socket's default receive buffer holds a few hundred Acks.
        for i in range(burst * 50, burst * 50 + 50):
            sender.send(b"m%d" % i, a.addr)
        got += [listener.recv(5) for _ in range(50)]
    assert got == [ack(b"m%d" % i, sender.addr) for i in range(500)]
    assert listener.recv_nothing(0.3)
    assert bus_stats(b)["lost"] == 0 and bus_stats(b)["duplicates"] == 0


def test_relay_with_workers_federates_every_ack_once_in_order(broker: Broker, relays: Any) -> None:
    """A relay of 4 socket threads and one of 1: every worker of the first publishes what it
    relays, in one gap-free sequence; what comes from the bus is Acked to the whole table once."""
    from test_workers import bound, drain

    many, one = relays(broker.url, workers=4), relays(broker.url)
    joined(many, one)
    members = {many: bound(16), one: bound(8)}
    try:
        for relay, socks in members.items():
            for sock in socks:
                sock.sendto(b"^hb^", relay.addr)
        wait_for(lambda: len(many.clients) == 16 and len(one.clients) == 8, 5, "the clients to join")
        senders = [(sock, many) for sock in members[many][:8]] + [(sock, one) for sock in members[one][:2]]
        count = 40

        def send(sock: socket.socket, relay: ChatUdpServer) -> None:
            for i in range(count):
                sock.sendto(b"m%03d" % i, relay.addr)
                if i % 8 == 7:
                    time.sleep(0.002)  # keep the receivers' buffers from overflowing

        threads = [threading.Thread(target=send, args=pair) for pair in senders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        want = {
            sock.getsockname()[1]: [ack(b"m%03d" % i, sock.getsockname()) for i in range(count)] for sock, _ in senders
        }
        total = len(senders) * count
        for relay, socks in members.items():
            for sock in socks:
                got = drain(sock, total)
                by_sender: Dict[int, List[bytes]] = {}
                for data in got:
                    by_sender.setdefault(int(data.rsplit(b":", 1)[1]), []).append(data)
                assert by_sender == want, f"{sock.getsockname()} on {'many' if relay is many else 'one'}: {len(got)} of {total}"
                sock.settimeout(0.1)
                with pytest.raises(socket.timeout):
                    sock.recv(65535)
        from_many, from_one = 8 * count, 2 * count
        assert bus_stats(many)["published"] == from_many and bus_stats(one)["published"] == from_one
        assert bus_stats(one)["received"] == from_many and bus_stats(many)["received"] == from_one
        for relay in (many, one):
            assert (bus_stats(relay)["lost"], bus_stats(relay)["duplicates"]) == (0, 0), bus_stats(relay)
        assert many.stats["relayed"] == from_many and one.stats["relayed"] == from_one
    finally:
        for socks in members.values():
            for sock in socks:
                sock.close()


def test_rooms_are_separate_and_own_records_ignored(nats_server: NatsServer, relays: Any, peers: Any) -> None:
    a, b, other = relays(nats_server.url, "one"), relays(nats_server.url, "one"), relays(nats_server.url, "two")
    joined(a, b)
    outsider = peers()
    outsider.send(b"^hb^", other.addr)
    sender = peers()
    sender.send(b"x", a.addr)
    assert sender.recv() == ack(b"x", sender.addr)
    assert sender.recv_nothing(0.5), "a relay never gets its own record back"
    assert outsider.recv_nothing(0.2), "another room hears nothing"
    assert other.peers == [] and bus_stats(other)["received"] == 0


def test_peers_leave_at_goodbye_and_after_silence(broker: Broker, relays: Any, stopper: Any) -> None:
    a, b = relays(broker.url), relays(broker.url)
    joined(a, b)
    b.stop()
    started = time.monotonic()
    wait_for(lambda: a.peers == [], 2, "the goodbye to remove b at once")
    assert time.monotonic() - started < 1.0
    # A relay that dies says nothing: its announcements stop, and it leaves after ~3 periods.
    record = b"CUDP\x01\x02" + (7).to_bytes(8, "big") + (0).to_bytes(8, "big") + (2).to_bytes(4, "big")
    broker.publish_raw("chatudp.chatudp", record + (300).to_bytes(4, "big"))  # type: ignore[attr-defined]
    wait_for(lambda: [(p["id"], p["clients"]) for p in a.peers] == [("0000000000000007", 2)], 3, "the announced peer")
    wait_for(lambda: a.peers == [], 3, "the silent peer to leave after three periods of 0.3 s")


def test_foreign_and_malformed_messages_are_counted_and_dropped(broker: Broker, relays: Any, peers: Any) -> None:
    a = relays(broker.url)
    wait_for(lambda: bus_stats(a)["connected"], SETTLE, "connected")
    time.sleep(0.2)  # the subscription reaches the broker
    client = peers()
    client.send(b"^hb^", a.addr)
    wait_for(lambda: len(a.clients) == 1, 5, "the client to join")
    publish = broker.publish_raw  # type: ignore[attr-defined]
    publish("chatudp.chatudp", b"hello, not a record")
    publish("chatudp.chatudp", b"CUDP\x01\x01" + bytes(16) + b"\x09truncated")
    publish("chatudp.chatudp", b"CUDP\x01\x01" + bytes(10))
    wait_for(lambda: bus_stats(a)["foreign"] == 1 and bus_stats(a)["malformed"] == 2, 5, "the bad messages counted")
    assert client.recv_nothing(0.3), "nothing reaches the clients"
    assert a.running and bus_stats(a)["received"] == 0


def test_relay_starts_while_the_broker_is_down(broker: Broker, relays: Any, peers: Any) -> None:
    url = broker.url
    broker.kill()
    a, b = relays(url), relays(url)
    client = peers()
    client.send(b"local", a.addr)
    assert client.recv() == ack(b"local", client.addr), "a relay serves locally without its broker"
    stats = bus_stats(a)
    assert stats["connected"] is False and stats["dropped"]["disconnected"] == 1 and stats["published"] == 0
    broker.start()
    joined(a, b)
    listener = peers()
    listener.send(b"^hb^", b.addr)
    wait_for(lambda: len(b.clients) == 1, 5, "the listener to join")
    client.send(b"federated", a.addr)
    assert listener.recv(5) == ack(b"federated", client.addr)


def test_broker_killed_and_restarted_mid_chat(broker: Broker, relays: Any, peers: Any) -> None:
    a, b = relays(broker.url), relays(broker.url)
    joined(a, b)
    sender, local, remote = peers(), peers(), peers()
    for peer, relay in ((sender, a), (local, a), (remote, b)):
        peer.send(b"^hb^", relay.addr)
    wait_for(lambda: len(a.clients) == 2 and len(b.clients) == 1, 5, "the clients to join")
    sender.send(b"before", a.addr)
    assert remote.recv(5) == ack(b"before", sender.addr)
    assert local.recv() == ack(b"before", sender.addr)
    broker.kill()
    wait_for(lambda: not bus_stats(a)["connected"], 5, "the relay to see its broker gone")
    started = time.monotonic()
    for i in range(200):
        sender.send(b"during %d" % i, a.addr)
        assert local.recv(2) == ack(b"during %d" % i, sender.addr), "local chat goes on"
    assert time.monotonic() - started < 5, "no wait for the broker in the socket thread"
    assert bus_stats(a)["dropped"]["disconnected"] >= 200
    assert remote.recv_nothing(0.2)
    broker.start()
    joined(a, b)
    for _ in range(3):
        remote.send(b"^hb^", b.addr)
    sender.send(b"after", a.addr)
    got = remote.recv(5)
    assert got == ack(b"after", sender.addr), "federation resumes by itself"
    assert bus_stats(a)["reconnects"] >= 1
    wait_for(lambda: bus_stats(b)["lost"] >= 200, 5, "the dropped records show as gaps at the other relay")


def test_stop_is_prompt_whatever_the_broker_does(broker: Broker, relays: Any) -> None:
    url = broker.url
    up = relays(url)
    wait_for(lambda: bus_stats(up)["connected"], SETTLE, "connected")
    reconnecting = relays(url)
    wait_for(lambda: bus_stats(reconnecting)["connected"], SETTLE, "connected")
    durations = {}
    started = time.monotonic()
    up.stop()
    durations["up"] = time.monotonic() - started
    broker.kill()
    wait_for(lambda: not bus_stats(reconnecting)["connected"], 5, "disconnected")
    time.sleep(0.3)  # half-way through its backoff
    started = time.monotonic()
    reconnecting.stop()
    durations["reconnecting"] = time.monotonic() - started
    down = relays(url)
    time.sleep(0.5)
    started = time.monotonic()
    down.stop()
    durations["down"] = time.monotonic() - started
    assert all(d < 1.0 for d in durations.values()), durations


def test_cluster_node_killed_relays_move_to_another(nats_cluster: List[NatsServer], relays: Any, peers: Any) -> None:
    first, second, third = nats_cluster
    # a knows only the first node: after it dies, a finds the others from what the cluster told it.
    a = relays([first.url])
    b = relays([third.url, second.url])
    joined(a, b)
    sender, listener = peers(), peers()
    sender.send(b"^hb^", a.addr)
    listener.send(b"^hb^", b.addr)
    wait_for(lambda: len(a.clients) == 1 and len(b.clients) == 1, 5, "the clients to join")
    sender.send(b"via the cluster", a.addr)
    assert listener.recv(5) == ack(b"via the cluster", sender.addr)
    first.kill()
    wait_for(lambda: bus_stats(a)["reconnects"] >= 1 and bus_stats(a)["connected"], SETTLE, "a to reconnect")
    deadline = time.monotonic() + SETTLE
    while True:
        sender.send(b"after the node died", a.addr)
        sender.recv(2)
        try:
            if listener.recv(0.5) == ack(b"after the node died", sender.addr):
                break
        except socket.timeout:
            pass
        assert time.monotonic() < deadline, "federation did not resume through the other nodes"
    assert first.running is False and second.running and third.running


def test_secret_and_validate_stay_per_relay(nats_server: NatsServer, relays: Any, stopper: Any) -> None:
    secret = b"k" * 32
    sealed = relays(nats_server.url, secret=secret)
    guarded = relays(nats_server.url, validate=True)
    plain = relays(nats_server.url)
    joined(sealed, guarded, plain)
    got: List[bytes] = []
    client = ChatUdpClient(LOOPBACK, sealed.addr[1], 30, secret=secret, on_message=lambda data, addr: got.append(data))
    client.start()
    stopper(client)
    client.send("^hb^")
    wait_for(lambda: len(sealed.clients) == 1, 5, "the sealed client to join")
    validated: List[bytes] = []
    other = ChatUdpClient(LOOPBACK, guarded.addr[1], 30, on_message=lambda data, addr: validated.append(data))
    other.start()
    stopper(other)
    other.send("^hb^")
    wait_for(lambda: len(guarded.clients) == 1, 5, "the validated client to join")
    tutorial = tutorial_client(plain, stopper)
    tutorial.send("opened payload")
    expected = ack(b"opened payload", tutorial.addr)
    wait_for(lambda: expected in got and expected in validated, 5, "the Ack at the sealed and validated clients")
    client.send("sealed hello")
    wait_for(lambda: ack(b"sealed hello", client.addr) in received(tutorial), 5, "the sealed message, opened")


def test_bad_bus_arguments_fail_at_construction() -> None:
    with pytest.raises(ValueError, match="nats://"):
        ChatUdpServer(bus="kafka://127.0.0.1:9092")
    with pytest.raises(ValueError, match="room"):
        ChatUdpServer(bus="nats://127.0.0.1:4222", room="a.b")
    with pytest.raises(ValueError, match="one NATS cluster"):
        ChatUdpServer(bus=["redis://127.0.0.1:1/0", "redis://127.0.0.1:2/0"])
    with pytest.raises(ValueError, match="TLS"):
        ChatUdpServer(bus="rediss://127.0.0.1:6380/0")
    with pytest.raises(TypeError, match="bus"):
        ChatUdpServer(bus=[b"nats://x:1"])  # type: ignore[list-item]
    server = ChatUdpServer()
    assert server.peers == [] and "bus" not in server.stats


def test_redis_and_nats_fixtures_are_real(nats_server: NatsServer, redis_server: RedisServer) -> None:
    assert nats_server.running and redis_server.running
    with socket.create_connection((LOOPBACK, redis_server.port), timeout=2) as sock:
        sock.sendall(b"PING\r\n")
        assert sock.recv(16) == b"+PONG\r\n"


def test_bus_stats_and_peers_keys_match_the_stub(nats_server: NatsServer, relays: Any) -> None:
    from test_typing import stub_typeddict_keys

    a, b = relays(nats_server.url), relays(nats_server.url)
    joined(a, b)
    keys = stub_typeddict_keys()
    assert set(a.stats) == keys["_ChatStats"]
    assert set(bus_stats(a)) == keys["BusStats"]
    assert set(bus_stats(a)["dropped"]) == {"disconnected", "queue_full", "publish_error", "inbound_full"}
    assert [set(peer) for peer in a.peers] == [keys["_Peer"]]
