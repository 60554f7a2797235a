"""Typing: ``mypy --strict`` on the package and the examples, ``mypy.stubtest`` on the stubs of
the extension module (no allowlist), and what stubtest cannot see: the keys of the stats
dictionaries the stubs promise."""

from __future__ import annotations

import ast
import re
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import typing
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

import chatudp
import chatudp.types
from chatudp import _core

ROOT = Path(__file__).resolve().parent.parent
PYTHON_DIR = ROOT / "python"
EXAMPLES = ROOT / "examples"
STUB = PYTHON_DIR / "chatudp" / "_core.pyi"
MYPY_TIMEOUT = 300  # a cold mypy run of the package takes ~20 s here

needs_mypy = pytest.mark.skipif(
    importlib.util.find_spec("mypy") is None,
    reason="mypy is not installed (it is in the 'test' extra: pip install -e '.[test]')",
)


@pytest.fixture(scope="module")
def mypy_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A config whose only setting keeps mypy's cache out of the work tree."""
    folder = tmp_path_factory.mktemp("mypy")
    config = folder / "mypy.ini"
    config.write_text(f"[mypy]\ncache_dir = {folder / 'cache'}\n")
    return config


def run(args: List[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    # The package under test is this work tree's, whatever else is installed.
    env["MYPYPATH"] = str(PYTHON_DIR)
    env.pop("PYTHONPATH", None)
    try:
        return subprocess.run(
            [sys.executable, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=MYPY_TIMEOUT,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(args)} did not finish within {MYPY_TIMEOUT} s; output so far:\n{exc.stdout}")


def report(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


@needs_mypy
def test_mypy_strict_package(mypy_config: Path) -> None:
    proc = run(["-m", "mypy", "--strict", "--config-file", str(mypy_config), "-p", "chatudp"], cwd=PYTHON_DIR)
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found" in proc.stdout, report(proc)


@needs_mypy
def test_mypy_strict_examples(mypy_config: Path) -> None:
    assert sorted(EXAMPLES.glob("*.py")), "examples/ holds no script"
    proc = run(["-m", "mypy", "--strict", "--config-file", str(mypy_config), "examples"], cwd=ROOT)
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found" in proc.stdout, report(proc)


@needs_mypy
def test_stubtest(mypy_config: Path) -> None:
    """The stubs match the runtime: every name, signature (keyword-only arguments and defaults
    included), ``@final`` class and property; private stub-only types are marked as such."""
    proc = run(
        ["-m", "mypy.stubtest", "--mypy-config-file", str(mypy_config), "--strict-type-check-only", "chatudp"],
        cwd=PYTHON_DIR,
    )
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found" in proc.stdout, report(proc)


@needs_mypy
def test_mypy_and_stubtest_without_prompt_toolkit(tmp_path: Path) -> None:
    """The optional line editor is not needed to import or type-check the package: mypy --strict
    and stubtest with prompt_toolkit hidden from mypy (no site-packages) and, for stubtest's
    imports, from the import system too."""
    config = tmp_path / "mypy.ini"
    config.write_text(f"[mypy]\ncache_dir = {tmp_path / 'cache'}\nno_site_packages = True\n")
    proc = run(["-m", "mypy", "--strict", "--config-file", str(config), "-p", "chatudp"], cwd=PYTHON_DIR)
    assert proc.returncode == 0, report(proc)
    script = (
        "import sys; sys.modules['prompt_toolkit'] = None; import mypy.stubtest; "
        f"sys.argv = ['stubtest', '--mypy-config-file', {str(config)!r}, '--strict-type-check-only', 'chatudp']; "
        "sys.exit(mypy.stubtest.main())"
    )
    proc = run(["-c", script], cwd=PYTHON_DIR)
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found" in proc.stdout, report(proc)


def test_py_typed_and_stub_ship_with_the_package() -> None:
    package = Path(chatudp.__file__).parent
    assert (package / "py.typed").is_file()
    assert (package / "_core.pyi").is_file()


# -- what stubtest cannot check: the TypedDicts of the stats dictionaries ---------------------------


def stub_typeddict_keys() -> Dict[str, Set[str]]:
    """The keys of each stats TypedDict: those of ``chatudp.types`` by their public names, and by
    the private names the stub imports them under (``_ChatStats``, ...)."""
    keys: Dict[str, Set[str]] = {}
    for name in chatudp.types.__all__:
        kind = getattr(chatudp.types, name)
        if hasattr(kind, "__required_keys__"):
            keys[name] = set(kind.__required_keys__) | set(kind.__optional_keys__)
    for node in ast.parse(STUB.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.ImportFrom) and node.module == "chatudp.types":
            for alias in node.names:
                if alias.name in keys and alias.asname:
                    keys[alias.asname] = keys[alias.name]
    return keys


@pytest.fixture
def server() -> Iterator[_core.Server]:
    srv = _core.Server(_core.ServerConfig("127.0.0.1", 0, 10.0))
    yield srv
    srv.stop()


def test_chat_stats_keys_match_the_stub(server: _core.Server) -> None:
    # "bus" is there only on a server started with bus= (checked in test_bus.py).
    expected = stub_typeddict_keys()["_ChatStats"] - {"bus"}
    host, port = server.local_addr()[:2]
    client = _core.Client(_core.ClientConfig(host, port, 10.0))
    try:
        assert set(server.stats()) == expected
        assert set(client.stats()) == expected
    finally:
        client.stop()


@pytest.mark.parametrize("kind", [_core.EchoServer, _core.TimeServer])
def test_service_stats_keys_match_the_stub(kind: type) -> None:
    expected = stub_typeddict_keys()["_ServiceStats"]
    srv = kind(_core.ServiceConfig("127.0.0.1", 0))
    try:
        assert set(srv.stats()) == expected
    finally:
        srv.stop()


def test_peer_stats_are_ints() -> None:
    peer = _core.Peer(_core.PeerConfig.bound(("127.0.0.1", 0)))
    try:
        stats = peer.stats()
        assert stats and all(type(value) is int for value in stats.values()), stats
    finally:
        peer.close()
    assert peer.closed


def test_event_tuples_match_the_stub(server: _core.Server) -> None:
    host, port = server.local_addr()[:2]
    client = _core.Client(_core.ClientConfig(host, port, 10.0))
    try:
        client.send(b"typed")
        got: List[Tuple[object, ...]] = []
        for _ in range(50):
            batch = server.next_events(timeout=0.1)
            assert batch is not None
            got.extend(batch)
            if any(event[0] == "message" for event in got):
                break
        kinds = [event[0] for event in got]
        assert kinds == ["join", "message"], got
        join, message = got
        assert join == ("join", client.local_addr(), None)
        assert message == ("message", client.local_addr(), b"typed")
    finally:
        client.stop()
    assert server.next_events(timeout=0) == []


def test_module_constants() -> None:
    assert _core.MAX_DATAGRAM == 65507
    assert isinstance(_core.__version__, str) and _core.__version__ == importlib.metadata.version("chatudp")
    stub_all = next(
        ast.literal_eval(node.value)
        for node in ast.parse(STUB.read_text(encoding="utf-8")).body
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)
    )
    assert sorted(stub_all) == sorted(_core.__all__)


# -- a user's script, typed with what chatudp exports: mypy --strict, no casts, and it runs -------------

USER_SCRIPT = '''
"""A bot and a monitor, annotated with chatudp's public types only."""
from __future__ import annotations

import asyncio
from typing import Dict, List, Optional, Tuple

import chatudp
from chatudp import (
    Address,
    ChatStats,
    ChatUdpClient,
    ChatUdpServer,
    EchoClient,
    EchoServer,
    JoinCallback,
    LeaveCallback,
    LeaveReason,
    MessageCallback,
    PeerStats,
    QQPeer,
    RejectCallback,
    RejectReason,
    ServiceStats,
    parse_ack,
)

left: List[Tuple[Address, LeaveReason]] = []
refused: List[Tuple[str, RejectReason]] = []


def on_leave(addr: Address, reason: LeaveReason) -> None:
    left.append((addr, reason))


def on_reject(addr: Address, reason: RejectReason) -> None:
    host, port = addr[:2]
    refused.append((f"{host}:{port + 0}", reason))


def on_message(data: bytes, addr: Address) -> None:
    if data.startswith(b"!echo "):
        server.sendto(data[6:], addr)


joined: List[Address] = []
join_cb: JoinCallback = joined.append
leave_cb: LeaveCallback = on_leave
reject_cb: RejectCallback = on_reject
message_cb: MessageCallback = on_message

server = ChatUdpServer("127.0.0.1", 0, interval=5, on_message=message_cb, on_join=join_cb, on_leave=leave_cb,
                       on_reject=reject_cb)
server.start()
host, port = server.addr[:2]
client = ChatUdpClient(host, port)
client.start()
client.send("!echo hi")
ack, _ = client.recv_message(timeout=5)
parsed: Optional[Tuple[bytes, Address]] = parse_ack(ack)
assert parsed is not None and parsed[0] == b"!ECHO HI" and parsed[1] == client.addr
assert client.recv_message(timeout=5)[0] == b"hi"
table: Dict[Address, float] = server.clients.copy()
seen: float = server.clients[parsed[1]]
assert seen == table[parsed[1]]
server.broadcast(b"all")
assert client.recv_message(timeout=5)[0] == b"all"
name: Address = server.sock.getsockname()
del server.clients[name if name in server.clients else parsed[1]]
stats: ChatStats = server.stats
received: int = stats["received"]
errors: Dict[int, int] = stats["send_errors"]
bus_up: bool = stats["bus"]["connected"] if "bus" in stats else False


async def services() -> Tuple[bytes, bytes]:
    with EchoServer("127.0.0.1", 0) as echo, EchoClient(*echo.addr[:2]) as asker:
        reply: bytes = await asker.arequest(b"typed")
        counts: ServiceStats = echo.stats
        mine: PeerStats = asker.stats
        assert counts["received"] >= 1 and mine["sent"] >= 1
    with QQPeer(("127.0.0.1", 0)) as me, QQPeer(("127.0.0.1", 0)) as other:
        other.sendto(b"qq", me.addr)
        data, sender = await me.arecvfrom(timeout=5)
        sender_port: int = sender[1]
        assert sender_port == other.addr[1]
    return reply, data


assert asyncio.run(services()) == (b"TYPED", b"qq")
client.stop()
server.event.set()
assert not server.running and received >= 1 and errors == {} and not bus_up
assert chatudp.types.Address is Address
print("typed script ok", left)
'''


def readme_python_blocks(*headings: str) -> List[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks: List[str] = []
    for heading in headings:
        section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
        blocks.extend(part.split("```", 1)[0] for part in section.split("```python\n")[1:])
    return blocks


@needs_mypy
def test_a_user_script_typed_with_the_exports_passes_mypy_strict_and_runs(tmp_path: Path, mypy_config: Path) -> None:
    """Addresses, reasons, callbacks and stats typed with what ``chatudp`` exports: ``mypy
    --strict`` accepts the script without a cast or an ignore, and the README's bot and types
    snippets too; the script then runs against real servers on loopback."""
    assert not re.search(r"\bcast\(|type: ?ignore|\bAny\b", USER_SCRIPT)
    script = tmp_path / "typed_user.py"
    script.write_text(USER_SCRIPT, encoding="utf-8")
    snippets = readme_python_blocks("Writing a bot", "Types")
    assert len(snippets) == 3
    for n, snippet in enumerate(snippets):
        (tmp_path / f"readme_snippet_{n}.py").write_text(snippet, encoding="utf-8")
    proc = run(["-m", "mypy", "--strict", "--config-file", str(mypy_config), str(tmp_path)], cwd=tmp_path)
    assert proc.returncode == 0, report(proc)
    assert "Success: no issues found in 4 source files" in proc.stdout, report(proc)
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    ran = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env)
    assert ran.returncode == 0 and "typed script ok" in ran.stdout, ran.stderr
    assert "'removed'" in ran.stdout, ran.stdout


def test_public_types_are_exported() -> None:
    for name in ["Address", "LeaveReason", "RejectReason", "MessageCallback", "JoinCallback", "LeaveCallback",
                 "RejectCallback", "ChatStats", "ServiceStats", "PeerStats", "parse_ack"]:
        assert name in chatudp.__all__ and hasattr(chatudp, name), name
    assert typing.get_args(chatudp.LeaveReason) == tuple(
        typing.Literal[r] for r in ("quit", "expired", "unreachable", "removed")
    )
