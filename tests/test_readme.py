"""Every Python snippet of the README runs as shown, in a subprocess, as a user pastes it into a
file: only its well-known ports are swapped for free ones (so the suite never needs 9999 free).

A snippet may be preceded by HTML comments that say what its output must hold or how to run it:
``<!-- snippet: expect TEXT -->`` (its output holds TEXT), ``<!-- snippet: sub OLD => NEW -->``
(a textual change for the test, e.g. a shorter wait), ``<!-- snippet: stats -->`` (a printed
``stats`` dict: its keys are checked against a real server's), ``<!-- snippet: skip REASON -->``.
"""

from __future__ import annotations

import ast
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
from conftest import run_script

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 60
WELL_KNOWN_PORTS = re.compile(r"\b(9999|9000|9001|8081)\b")
MARKER = re.compile(r"<!--\s*snippet:\s*(\w+)\s*(.*?)\s*-->")


@dataclass
class Snippet:
    line: int
    code: str
    directives: List[Tuple[str, str]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return f"README.md:{self.line}"

    def wanted(self, kind: str) -> List[str]:
        return [arg for name, arg in self.directives if name == kind]


def snippets() -> List[Snippet]:
    found: List[Snippet] = []
    lines = README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        if lines[index].strip() != "```python":
            index += 1
            continue
        start = index
        end = lines.index("```", start + 1)
        directives: List[Tuple[str, str]] = []
        above = start - 1
        while above >= 0 and (match := MARKER.fullmatch(lines[above].strip())):
            directives.insert(0, (match.group(1), match.group(2)))
            above -= 1
        found.append(Snippet(start + 1, "\n".join(lines[start + 1 : end]) + "\n", directives))
        index = end + 1
    return found


SNIPPETS = snippets()


def free_ports(count: int) -> List[int]:
    sockets = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def runnable(snippet: Snippet) -> str:
    code = snippet.code
    for change in snippet.wanted("sub"):
        old, _, new = change.partition(" => ")
        assert old in code, f"{snippet.id}: {old!r} is not in the snippet"
        code = code.replace(old, new)
    ports: Dict[str, str] = {}
    wanted = sorted(set(WELL_KNOWN_PORTS.findall(code)))
    for port, free in zip(wanted, free_ports(len(wanted))):
        ports[port] = str(free)
    return WELL_KNOWN_PORTS.sub(lambda m: ports[m.group(1)], code)


def test_the_readme_has_snippets_and_known_directives() -> None:
    assert len(SNIPPETS) >= 4
    for snippet in SNIPPETS:
        for name, _ in snippet.directives:
            assert name in {"expect", "sub", "stats", "skip"}, f"{snippet.id}: unknown directive {name!r}"


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if not s.wanted("stats")], ids=lambda s: s.id)
def test_snippet_runs_as_shown(snippet: Snippet, tmp_path: Path) -> None:
    if snippet.wanted("skip"):
        pytest.skip(snippet.wanted("skip")[0])
    script = tmp_path / "snippet.py"
    script.write_text(runnable(snippet), encoding="utf-8")
    returncode, stdout, stderr = run_script(script, tmp_path, TIMEOUT)
    out = stdout + stderr
    assert returncode == 0, f"{snippet.id} exited with {returncode}:\n{out}"
    assert "Traceback" not in out, out
    for text in snippet.wanted("expect"):
        assert text in out, f"{snippet.id}: {text!r} not in its output:\n{out}"


def _shape(value: Any) -> Any:
    """The keys of nested dicts; leaves become None."""
    if isinstance(value, dict):
        return {key: _shape(inner) for key, inner in value.items()}
    return None


@pytest.mark.parametrize("snippet", [s for s in SNIPPETS if s.wanted("stats")], ids=lambda s: s.id)
def test_printed_stats_have_the_real_keys(snippet: Snippet) -> None:
    from chatudp import ChatUdpServer

    shown = ast.literal_eval(snippet.code.split(">>> server.stats", 1)[1].strip())
    with ChatUdpServer("127.0.0.1", 0) as server:
        real = server.stats
    assert _shape(shown) == _shape(real), f"{snippet.id} shows other keys than a server has"
