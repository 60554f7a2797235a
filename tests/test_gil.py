"""The socket loops never need the GIL: the relay answers while this process's Python holds it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from chatudp import ChatUdpServer

PEER = """
import json, socket, sys, time
server = ("127.0.0.1", int(sys.argv[1]))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("127.0.0.1", 0))
sock.settimeout(5)
print("ready", flush=True)
sys.stdin.readline()  # go: the parent now holds the GIL
answered = []
started = time.monotonic()
for i in range(100):
    sock.sendto(b"m%d" % i, server)
    data, _ = sock.recvfrom(2048)
    answered.append(time.monotonic() - started)
print(json.dumps({"answered": len(answered), "last_s": answered[-1]}), flush=True)
"""


def test_relay_answers_while_python_holds_the_gil() -> None:
    srv = ChatUdpServer(port=0, on_message=lambda d, a: None)
    srv.start()
    old_interval = sys.getswitchinterval()
    try:
        with subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(PEER), str(srv.addr[1])],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        ) as peer:
            try:
                assert peer.stdout is not None and peer.stdin is not None
                assert peer.stdout.readline().strip() == "ready"
                # No other Python thread of this process (the dispatcher included) runs until the
                # busy loop ends: only threads that never take the GIL can answer meanwhile.
                sys.setswitchinterval(30)
                peer.stdin.write("go\n")
                peer.stdin.flush()
                busy_until = time.monotonic() + 3
                spins = 0
                while time.monotonic() < busy_until:
                    spins += 1
                sys.setswitchinterval(old_interval)
                report = json.loads(peer.stdout.readline())
                assert peer.wait(10) == 0
            finally:
                if peer.poll() is None:
                    peer.kill()
                    peer.wait()
        assert spins > 0
        assert report["answered"] == 100
        # All 100 round trips finished well inside the 3 s the GIL was held.
        assert report["last_s"] < 2.5, report
    finally:
        sys.setswitchinterval(old_interval)
        srv.stop()
