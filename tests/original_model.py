"""A pure-Python model of the original tutorial's group chat (群聊示例).

``ChatUdpServer`` and ``ChatUdpClient`` below behave on the wire exactly like
the tutorial's classes (seed/000_25628c5e542ea286.txt, SPEC.md section 2).
They exist only as the reference for the differential tests, which check
chatudp against them byte for byte.

Changes from the tutorial. They make the model usable in tests and leave what
goes over the wire as it was:

* ``addr`` is the address actually bound after ``start()``, so port 0 works.
* The receive loops poll with a short socket timeout, the threads are daemons,
  and ``stop()`` joins them before it closes the socket. ``stop()`` does
  nothing when it is called a second time.
* ``clients`` is guarded by ``lock``. A test takes a snapshot with
  ``with server.lock: dict(server.clients)``.
* The server ignores ``OSError`` from ``sendto``, and the client's receive
  loop ignores ``ConnectionRefusedError`` (the original thread died on it).
* The client keeps every datagram it receives in ``received``, guarded by
  ``lock``.
"""

import logging
import socket
import threading
import time

log = logging.getLogger('chatudp.model')

POLL_SECONDS = 0.05  # socket timeout of the receive loops, so stop() is prompt


class ChatUdpServer:
    def __init__(self, ip='127.0.0.1', port=9999, interval=10, *, bufsize=1024):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addr = (ip, port)
        self.clients = {}  # {(ip, port): time last seen}
        self.lock = threading.Lock()
        self.event = threading.Event()
        self.interval = interval
        self.bufsize = bufsize
        self._thread = None

    def start(self):
        self.sock.bind(self.addr)
        self.addr = self.sock.getsockname()[:2]
        self.sock.settimeout(POLL_SECONDS)
        self._thread = threading.Thread(target=self.recv, name='model-server-recv', daemon=True)
        self._thread.start()

    def recv(self):
        while not self.event.is_set():
            try:
                data, raddr = self.sock.recvfrom(self.bufsize)
            except OSError:  # timeout, or an ICMP error reported on the socket
                continue
            self.handle(data, raddr)

    def handle(self, data, raddr):
        current = time.time()
        command = data.strip()
        with self.lock:
            if command == b'^hb^':
                self.clients[raddr] = current
                return
            if command == b'quit':
                self.clients.pop(raddr, None)
                return
            self.clients[raddr] = current
            live = [c for c, stamp in self.clients.items() if current - stamp <= self.interval]
            expired = [c for c, stamp in self.clients.items() if current - stamp > self.interval]
            for c in expired:
                del self.clients[c]
        log.info(data)
        log.info(raddr)
        msg = "Ack {}. from {}:{}".format(data.upper(), *raddr).encode()
        for c in live:
            self._sendto(msg, c)

    def _sendto(self, msg, client):
        try:
            self.sock.sendto(msg, client)
        except OSError:
            pass

    def stop(self):
        if self.event.is_set():
            return
        self.event.set()
        if self._thread is not None:
            self._thread.join()
        with self.lock:
            clients = list(self.clients)
        for c in clients:
            self._sendto(b'Bye!', c)
        self.sock.close()


class ChatUdpClient:
    def __init__(self, rip='127.0.0.1', rport=9999, interval=10, *, bufsize=1024):
        self.raddr = (rip, rport)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addr = None  # local address, known after start()
        self.event = threading.Event()
        self.interval = interval
        self.bufsize = bufsize
        self.received = []  # every datagram received, in order (bytes)
        self.lock = threading.Lock()
        self._threads = []

    def start(self):
        self.sock.connect(self.raddr)
        self.addr = self.sock.getsockname()[:2]
        self.sock.settimeout(POLL_SECONDS)
        self._threads = [
            threading.Thread(target=self.hb, name='model-client-heartbeat', daemon=True),
            threading.Thread(target=self.recv, name='model-client-recv', daemon=True),
        ]
        for t in self._threads:
            t.start()

    def hb(self):
        while not self.event.wait(self.interval):
            try:
                self.send('^hb^')
            except OSError:  # e.g. ConnectionRefusedError once the server is gone
                pass

    def recv(self):
        while not self.event.is_set():
            try:
                data, _ = self.sock.recvfrom(self.bufsize)
            except OSError:  # timeout, or ConnectionRefusedError
                continue
            log.info(data)
            with self.lock:
                self.received.append(data)

    def send(self, msg: str):
        self.sock.sendto(msg.encode(), self.raddr)

    def stop(self):
        if self.event.is_set():
            return
        self.event.set()
        for t in self._threads:
            t.join()
        self.sock.close()
