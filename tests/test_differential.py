"""Differential tests: chatudp against a model of the original tutorial.

The model (tests/original_model.py) reproduces the tutorial's ChatUdpServer and
ChatUdpClient on the wire. The same scripted datagrams go to a model server and
to a chatudp server. Plain UDP sockets on 127.0.0.1 record what each server
sends back, and the two recordings must match byte for byte once the sender's
port has been replaced by a placeholder.

Every test that takes ``kind`` also runs against the model alone ('model'), so
these tests check the model and the harness even while chatudp is not built.
Tests that need chatudp skip when it cannot be imported.
"""

import functools
import importlib.util
import os
import socket
import sys
import threading
import time

import pytest

try:
    import original_model as model
except ImportError:  # tests/ is not on sys.path (e.g. --import-mode=importlib)
    _spec = importlib.util.spec_from_file_location(
        'original_model', os.path.join(os.path.dirname(__file__), 'original_model.py'))
    model = importlib.util.module_from_spec(_spec)
    sys.modules['original_model'] = model
    _spec.loader.exec_module(model)

HOST = '127.0.0.1'
BIG = 65535  # receive buffer of the test sockets: never truncates
RECV_TIMEOUT = 2.0  # the longest a test waits for a datagram that should come
SILENCE = 0.3  # how long a test waits to show that nothing arrives
DEADLINE = 3.0  # the longest a test polls for a state change
LONG_INTERVAL = 30  # nobody expires during a test
HEARTBEAT = b'^hb^'
MARKER = b'marker'
END = b'end of script'
SENDER = b'<SENDER>'
# chatudp's server modes that must be indistinguishable from the tutorial's server.
SERVER_MODES = {'chatudp': {}, 'chatudp-workers4': {'workers': 4}}
KINDS = ['model', *SERVER_MODES]
CLIENT_KINDS = ['model', 'chatudp']


# --------------------------------------------------------------------------
# Expected bytes, derived from SPEC section 2 without asking Python's repr().

def spec_upper(data):
    return bytes(b - 32 if 0x61 <= b <= 0x7a else b for b in data)


def spec_repr(data):
    quote = '"' if b"'" in data and b'"' not in data else "'"
    named = {0x09: '\\t', 0x0a: '\\n', 0x0d: '\\r'}
    out = []
    for b in data:
        if chr(b) in (quote, '\\'):
            out.append('\\' + chr(b))
        elif b in named:
            out.append(named[b])
        elif b < 0x20 or b >= 0x7f:
            out.append('\\x%02x' % b)
        else:
            out.append(chr(b))
    return ('b' + quote + ''.join(out) + quote).encode('ascii')


def spec_ack(data, port, bufsize=1024):
    return b'Ack ' + spec_repr(spec_upper(data[:bufsize])) + b'. from ' + HOST.encode() + b':' + port


def ack_for(data, port):
    return spec_ack(data, str(port).encode())


# --------------------------------------------------------------------------
# Payloads. acked=False: heartbeat or quit, for which the server sends nothing.

PAYLOADS = [
    ('ascii', b'hello', True),
    ('mixed_case', b'Hello World 123 xYz', True),
    ('empty', b'', True),
    ('only_spaces', b'   ', True),
    ('single_quote', b"it's", True),
    ('double_quote', b'say "hi"', True),
    ('both_quotes', b'both \' and "', True),
    ('backslash', b'back\\slash \\', True),
    ('tab_newline_cr', b'tab\there\nnew line\rcr', True),
    ('all_bytes', bytes(range(256)), True),
    ('chinese_utf8', '你好，世界'.encode(), True),
    ('exactly_1024', bytes(range(256)) * 4, True),
    ('over_by_one_1025', b'z' * 1024 + b'!', True),
    ('truncated_1500', (b'abcXYZ\x00\xff\'"\\\n' * 150)[:1500], True),
    ('hb_upper_case', b'^HB^', True),
    ('hb_with_text', b'^hb^ hi', True),
    ('hb_behind_fs', b'\x1c^hb^', True),  # 0x1c is not ASCII whitespace
    ('quit_upper_case', b'QUIT', True),
    ('quit_with_text', b'quit now', True),
    ('quit_behind_nul', b'\x00quit', True),
    ('heartbeat', b'^hb^', False),
    ('heartbeat_spaces', b' ^hb^ ', False),
    ('heartbeat_vt_ff', b'\x0b^hb^\x0c', False),  # \v and \f are bytes.strip() whitespace
    ('quit_newline', b'quit\n', False),
    ('quit_whitespace', b'\t quit \r\n', False),
    ('quit_vt', b'\x0bquit\x0b', False),
]
PAYLOAD_IDS = [name for name, _, _ in PAYLOADS]
PAYLOAD_CASES = [(payload, acked) for _, payload, acked in PAYLOADS]


# --------------------------------------------------------------------------
# Helpers.

def server_class(kind):
    if kind == 'model':
        return model.ChatUdpServer
    server = pytest.importorskip('chatudp').ChatUdpServer
    return functools.partial(server, **SERVER_MODES[kind])


def client_class(kind):
    if kind == 'model':
        return model.ChatUdpClient
    return pytest.importorskip('chatudp').ChatUdpClient


def table(server):
    """A snapshot of the server's clients table."""
    if isinstance(server, model.ChatUdpServer):
        with server.lock:
            return dict(server.clients)
    return dict(server.clients)


def wait_until(condition, what, deadline=DEADLINE):
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            pytest.fail('timed out after %.1f s waiting until %s' % (deadline, what))
        time.sleep(0.005)


def recv_or_none(sock, timeout=RECV_TIMEOUT):
    sock.settimeout(timeout)
    try:
        return sock.recv(BIG)
    except socket.timeout:
        return None


def assert_silent(sock):
    got = recv_or_none(sock, SILENCE)
    assert got is None, 'expected nothing, got %r' % (got,)


def received(client):
    """What a model client has received, or a chatudp client's collector list."""
    with client.lock:
        return list(client.received)


class Collector:
    """An on_message callback that keeps what it gets (for chatudp clients)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.received = []
        self.addrs = []

    def __call__(self, data, addr):
        with self.lock:
            self.received.append(data)
            self.addrs.append(addr)


@pytest.fixture
def new_socket():
    """Makes plain UDP sockets bound to 127.0.0.1, port 0; closes them afterwards."""
    made = []

    def make():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        made.append(sock)
        sock.bind((HOST, 0))
        sock.settimeout(RECV_TIMEOUT)
        return sock

    yield make
    for sock in made:
        sock.close()


@pytest.fixture
def start_server():
    """Starts a server of the given kind on 127.0.0.1, port 0; stops it afterwards."""
    started = []

    def start(kind, interval=LONG_INTERVAL, **kwargs):
        server = server_class(kind)(HOST, 0, interval, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_client():
    """Starts a client of the given kind; stops it afterwards."""
    started = []

    def start(kind, server_addr, interval=LONG_INTERVAL, **kwargs):
        client = client_class(kind)(server_addr[0], server_addr[1], interval, **kwargs)
        client.start()
        started.append(client)
        return client

    yield start
    for client in started:
        client.stop()


def register(server, socks):
    """Registers plain sockets with a heartbeat and waits until the table shows them."""
    for sock in socks:
        sock.sendto(HEARTBEAT, server.addr)
    wanted = {sock.getsockname() for sock in socks}
    wait_until(lambda: wanted <= set(table(server)), 'the server registers %s' % sorted(wanted))


def read_until(sock, last):
    """Datagrams received up to and including `last`; b'<timeout>' ends a short read."""
    got = []
    while True:
        data = recv_or_none(sock)
        if data is None:
            return got + [b'<timeout>']
        got.append(data)
        if data == last:
            return got


def run_script(server, script, new_socket, listeners=3):
    """Sends `script` from one socket to `server` and records what everybody gets.

    Three listeners and the sender register with a heartbeat first. The script
    ends with END, and every receiver reads until the Ack of END. The result maps
    'listener0'.. and 'sender' to their datagrams, with the sender's port
    replaced by <SENDER> at the end of each Ack.
    """
    receivers = {'listener%d' % i: new_socket() for i in range(listeners)}
    sender = receivers['sender'] = new_socket()
    register(server, receivers.values())
    for payload in list(script) + [END]:
        sender.sendto(payload, server.addr)
    port = str(sender.getsockname()[1]).encode()
    suffix = b' from ' + HOST.encode() + b':' + port
    end_ack = spec_ack(END, port)
    return {
        name: [normalise(data, suffix) for data in read_until(sock, end_ack)]
        for name, sock in receivers.items()
    }


def normalise(data, suffix):
    if data.endswith(suffix):
        return data[:-len(suffix)] + b' from ' + HOST.encode() + b':' + SENDER
    return data


def script_for(payload):
    """The payload, then a marker, so a silent payload still has a reply after it."""
    return [payload, MARKER]


def expected_transcript(script_with_flags):
    acks = [spec_ack(p, SENDER) for p, acked in script_with_flags if acked]
    return acks + [spec_ack(END, SENDER)]


# --------------------------------------------------------------------------
# The expected-bytes helpers themselves.

@pytest.mark.parametrize('payload, acked', PAYLOAD_CASES, ids=PAYLOAD_IDS)
def test_spec_repr_agrees_with_python(payload, acked):
    assert spec_repr(payload.upper()) == repr(payload.upper()).encode()
    assert spec_upper(payload) == payload.upper()
    assert (payload.strip() in (b'^hb^', b'quit')) == (not acked)


# --------------------------------------------------------------------------
# One payload at a time.

@pytest.mark.parametrize('payload, acked', PAYLOAD_CASES, ids=PAYLOAD_IDS)
@pytest.mark.parametrize('kind', KINDS)
def test_payload_gives_spec_acks(kind, payload, acked, start_server, new_socket):
    server = start_server(kind)
    got = run_script(server, script_for(payload), new_socket)
    want = expected_transcript([(payload, acked), (MARKER, True)])
    for name, datagrams in got.items():
        assert datagrams == want, name


@pytest.mark.parametrize('payload, acked', PAYLOAD_CASES, ids=PAYLOAD_IDS)
@pytest.mark.parametrize('mode', SERVER_MODES)
def test_payload_chatudp_matches_model(mode, payload, acked, start_server, new_socket):
    pytest.importorskip('chatudp')
    script = script_for(payload)
    want = run_script(start_server('model'), script, new_socket)
    got = run_script(start_server(mode), script, new_socket)
    assert got == want


# --------------------------------------------------------------------------
# All payloads in one sequence (state carries over: quit, then come back).

WHOLE_SCRIPT = []
for _payload, _acked in PAYLOAD_CASES:
    WHOLE_SCRIPT += [(_payload, _acked), (MARKER, True)]


@pytest.mark.parametrize('kind', KINDS)
def test_whole_script_gives_spec_acks(kind, start_server, new_socket):
    server = start_server(kind)
    got = run_script(server, [p for p, _ in WHOLE_SCRIPT], new_socket)
    want = expected_transcript(WHOLE_SCRIPT)
    for name, datagrams in got.items():
        assert datagrams == want, name


@pytest.mark.parametrize('mode', SERVER_MODES)
def test_whole_script_chatudp_matches_model(mode, start_server, new_socket):
    pytest.importorskip('chatudp')
    script = [p for p, _ in WHOLE_SCRIPT]
    want = run_script(start_server('model'), script, new_socket)
    got = run_script(start_server(mode), script, new_socket)
    assert got == want


# --------------------------------------------------------------------------
# Acks written out by hand.

@pytest.mark.parametrize('kind', KINDS)
def test_literal_acks(kind, start_server, new_socket):
    server = start_server(kind)
    sock = new_socket()
    p = sock.getsockname()[1]
    cases = [
        (b'hello', b"Ack b'HELLO'. from 127.0.0.1:%d" % p),
        (b'', b"Ack b''. from 127.0.0.1:%d" % p),
        (b"it's", b'Ack b"IT\'S". from 127.0.0.1:%d' % p),
        (b'both \' and "', b"Ack b'BOTH \\' AND \"'. from 127.0.0.1:%d" % p),
        (b'a\\b\tc\n', b"Ack b'A\\\\B\\tC\\n'. from 127.0.0.1:%d" % p),
        (b'\x00\x7f\x80\xff\xe9t\xe9', b"Ack b'\\x00\\x7f\\x80\\xff\\xe9T\\xe9'. from 127.0.0.1:%d" % p),
        ('你好'.encode(), b"Ack b'\\xe4\\xbd\\xa0\\xe5\\xa5\\xbd'. from 127.0.0.1:%d" % p),
        (b'q' * 1030, b"Ack b'" + b'Q' * 1024 + b"'. from 127.0.0.1:%d" % p),
    ]
    for payload, want in cases:
        sock.sendto(payload, server.addr)
        assert recv_or_none(sock) == want, payload


# --------------------------------------------------------------------------
# The clients table: heartbeat registers, quit removes, expiry.

@pytest.mark.parametrize('kind', KINDS)
def test_heartbeat_registers_and_refreshes(kind, start_server, new_socket):
    server = start_server(kind)
    sock = new_socket()
    me = sock.getsockname()
    before = time.time()
    sock.sendto(b' ^hb^\n', server.addr)
    wait_until(lambda: me in table(server), 'the heartbeat registers the socket')
    after = time.time()
    first = table(server)[me]
    assert isinstance(first, float)
    assert before - 0.05 <= first <= after + 0.05
    assert_silent(sock)  # a heartbeat gets no reply

    sock.sendto(HEARTBEAT, server.addr)
    wait_until(lambda: table(server)[me] > first, 'a second heartbeat refreshes the stamp')
    assert list(table(server)) == [me]


@pytest.mark.parametrize('kind', KINDS)
def test_quit_removes_sender(kind, start_server, new_socket):
    server = start_server(kind)
    quitter, stayer = new_socket(), new_socket()
    register(server, [quitter, stayer])

    quitter.sendto(b'quit\n', server.addr)
    wait_until(lambda: quitter.getsockname() not in table(server), 'quit removes the sender')
    assert list(table(server)) == [stayer.getsockname()]

    stayer.sendto(b'still here', server.addr)
    assert recv_or_none(stayer) == ack_for(b'still here', stayer.getsockname()[1])
    assert_silent(quitter)  # no longer in the table: no Ack

    quitter.sendto(b'quit', server.addr)  # quit when absent: no error, no reply
    stayer.sendto(MARKER, server.addr)
    assert recv_or_none(stayer) == ack_for(MARKER, stayer.getsockname()[1])
    assert set(table(server)) == {stayer.getsockname()}

    server.stop()  # Bye! only to those still in the table
    assert recv_or_none(stayer) == b'Bye!'
    assert_silent(quitter)


@pytest.mark.parametrize('kind', KINDS)
def test_expired_client_gets_nothing_and_is_removed(kind, start_server, new_socket):
    interval = 0.3
    server = start_server(kind, interval=interval)
    old, talker = new_socket(), new_socket()
    register(server, [old])
    stamp = table(server)[old.getsockname()]
    while time.time() - stamp <= interval + 0.05:
        time.sleep(0.02)

    talker.sendto(b'anyone?', server.addr)
    assert recv_or_none(talker) == ack_for(b'anyone?', talker.getsockname()[1])
    assert_silent(old)
    assert list(table(server)) == [talker.getsockname()]


# --------------------------------------------------------------------------
# Interop: model clients on a chatudp server, chatudp clients on a model server.

def wait_for_messages(client, count, name):
    wait_until(lambda: len(received(client)) >= count, '%s has %d messages' % (name, count))


@pytest.mark.parametrize('kind', KINDS)
def test_model_clients_chat_through_server(kind, start_server, start_client):
    server = start_server(kind)
    a = start_client('model', server.addr, interval=0.1)
    b = start_client('model', server.addr, interval=0.1)
    # The heartbeats register both clients without any message.
    wait_until(lambda: {a.addr, b.addr} <= set(table(server)), 'heartbeats register both clients')
    assert received(a) == received(b) == []

    a.send('hello from a')
    wait_for_messages(b, 1, 'b')
    b.send('Hi from B: 你好')
    wait_for_messages(a, 2, 'a')
    wait_for_messages(b, 2, 'b')

    server.stop()
    wait_for_messages(a, 3, 'a')
    wait_for_messages(b, 3, 'b')
    want = [
        b"Ack b'HELLO FROM A'. from 127.0.0.1:%d" % a.addr[1],
        b"Ack b'HI FROM B: \\xe4\\xbd\\xa0\\xe5\\xa5\\xbd'. from 127.0.0.1:%d" % b.addr[1],
        b'Bye!',
    ]
    assert received(a) == want
    assert received(b) == want


@pytest.mark.parametrize('kind', CLIENT_KINDS)
def test_clients_of_kind_on_model_server(kind, start_server, start_client):
    server = start_server('model')
    m = start_client('model', server.addr, interval=0.1)
    if kind == 'model':
        c = start_client('model', server.addr, interval=0.1)
        inbox = c
    else:
        inbox = Collector()
        c = start_client('chatudp', server.addr, interval=0.1, on_message=inbox)
    wait_until(lambda: len(table(server)) == 2, 'heartbeats register both clients')
    (c_addr,) = set(table(server)) - {m.addr}

    m.send('from model')
    wait_for_messages(inbox, 1, 'the client under test')
    c.send('from the other one')
    wait_for_messages(inbox, 2, 'the client under test')
    c.send('quote\' and "tab\t')
    wait_for_messages(inbox, 3, 'the client under test')
    wait_for_messages(m, 3, 'the model client')

    server.stop()
    wait_for_messages(inbox, 4, 'the client under test')
    wait_for_messages(m, 4, 'the model client')
    want = [
        b"Ack b'FROM MODEL'. from 127.0.0.1:%d" % m.addr[1],
        b"Ack b'FROM THE OTHER ONE'. from 127.0.0.1:%d" % c_addr[1],
        b"Ack b'QUOTE\\' AND \"TAB\\t'. from 127.0.0.1:%d" % c_addr[1],
        b'Bye!',
    ]
    assert received(m) == want
    assert received(inbox) == want
    if kind == 'chatudp':
        assert [tuple(addr) for addr in inbox.addrs] == [server.addr] * 4


def test_chatudp_client_sends_bytes_like_model_sends_str(start_server, start_client):
    pytest.importorskip('chatudp')
    server = start_server('model')
    inbox = Collector()
    c = start_client('chatudp', server.addr, on_message=inbox)
    c.send('你好 str')
    wait_until(lambda: len(table(server)) == 1, 'the message registers the client')
    (c_addr,) = table(server)
    c.send(b'raw \xff bytes')
    wait_for_messages(inbox, 2, 'the chatudp client')
    assert received(inbox) == [
        ack_for('你好 str'.encode(), c_addr[1]),
        b"Ack b'RAW \\xff BYTES'. from 127.0.0.1:%d" % c_addr[1],
    ]
