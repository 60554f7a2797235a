"""Every script in examples/ runs by itself, on 127.0.0.1, in a few seconds, and exits 0 with the
output that shows it did its job."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import pytest
from conftest import run_script

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TIMEOUT = 30  # each example runs about a second

# example -> lines (or parts of lines) its output must hold
EXPECTED: Dict[str, List[str]] = {
    "group_chat.py": [
        "  server: alice joined",
        "  alice got: Ack b'HELLO EVERYONE'. from 127.0.0.1:",
        "  carol got: Ack b'HELLO EVERYONE'. from 127.0.0.1:",
        "  server: bob left (quit)",
        "  carol got: Ack b'BYE'. from 127.0.0.1:",
        "done",
    ],
    "pull_and_asyncio.py": [
        "client got Ack b'HELLO'. from 127.0.0.1:",
        "iteration ended: the client was stopped",
        "server kept [b'one', b'two', b'three']",
        "client got Ack b'ASYNC HELLO'. from 127.0.0.1:",
        "client got Ack b'FIVE'. from 127.0.0.1:",
        "nothing more within 0.1 s: TimeoutError",
        "done",
    ],
    "echo.py": [
        "server got b'hello' from 127.0.0.1:",
        "client got b'HELLO'",
        "client got b'UDP IS CONNECTIONLESS'",
        "no reply: ",
        "done",
    ],
    "time_server.py": ["===> b'%Y %m %d'", "===> b''", "today is ", "done"],
    "qq_chat.py": [
        "server: 来自[127.0.0.1:",
        "的一条消息:\033[1;44m你好, 狗哥\033[0m",
        "server: 回复消息: 你好!",
        "的一条消息:\033[1;44m你好!\033[0m",
        "client: '不认识的人' is not a contact; ignored",
        "done: 3 answers",
    ],
    "migrate_from_tutorial.py": [
        " MainThread ",  # the tutorial's log format: %(asctime)s %(threadName)s %(message)s
        "b'hello'",
        "b\"Ack b'HELLO'. from 127.0.0.1:",
        "b'Bye!'",
        "stopped: True, True, True",
    ],
    "sensors.py": [
        "received 19976 readings in ",
        "kernel drops 0, dropped 0",
        "8 sensors, lost per sensor: [3]",
        "mean reading per sensor: 0.50 1.50 2.50 3.50 4.50 5.50 6.50 7.50",
        "done",
    ],
}


def test_every_example_is_tested() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.py")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_example(name: str, tmp_path: Path) -> None:
    returncode, out, err = run_script(EXAMPLES / name, tmp_path, TIMEOUT)
    shown = f"exit status {returncode}\n--- stdout\n{out}\n--- stderr\n{err}"
    assert returncode == 0, shown
    for expected in EXPECTED[name]:
        assert expected in out, f"{expected!r} not in the output of {name}\n{shown}"
    assert "Traceback" not in err, shown
