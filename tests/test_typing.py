"""Typing: ``mypy --strict`` on the package and the examples, ``mypy.stubtest`` on the stubs of
the extension module (no allowlist), and what stubtest cannot see: the keys of the stats
dictionaries the stubs promise."""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

import chatudp
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
    tree = ast.parse(STUB.read_text(encoding="utf-8"))
    keys: Dict[str, Set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(
            isinstance(base, ast.Name) and base.id == "TypedDict" for base in node.bases
        ):
            keys[node.name] = {
                item.target.id
                for item in node.body
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
            }
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
