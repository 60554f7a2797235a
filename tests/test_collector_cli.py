"""``chatudp collect`` and ``chatudp sensor`` end to end, as two real processes."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(*args: str, timeout: float = 60) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chatudp", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def summary(out: str) -> dict:
    line = [l for l in out.splitlines() if l.startswith("summary: ")][-1]
    return json.loads(line[len("summary: ") :])


@pytest.mark.parametrize("suffix", [".ndjson", ".sqlite"])
def test_sensor_fleet_into_collect(tmp_path: Path, suffix: str) -> None:
    port = free_port()
    out = tmp_path / f"readings{suffix}"
    collect = run("collect", "--port", str(port), "--seq", "0:4:big", "--seconds", "4", "--out", str(out))
    # The collector prints its address once it is bound.
    assert collect.stderr is not None
    assert "collecting on" in collect.stderr.readline()
    sensor = subprocess.run(
        [sys.executable, "-m", "chatudp", "sensor", "--port", str(port), "--rate", "2000", "--sources", "3",
         "--seconds", "1.5", "--size", "12"],
        capture_output=True, text=True, timeout=60,
    )
    assert sensor.returncode == 0, sensor.stderr
    sent = summary(sensor.stdout)["sent"]
    stdout, stderr = collect.communicate(timeout=60)
    assert collect.returncode == 0, stderr
    got = summary(stdout)
    assert sent == 3000 and got["received"] == sent and got["lost"] == 0 and got["sources"] == 3
    assert got["kernel_drops"] == 0 and got["rows_written"] == sent
    assert "received" in stderr and "kernel drops" in stderr  # the status lines
    if suffix == ".ndjson":
        rows = [json.loads(l) for l in out.read_text().split("\n") if l]
        assert len(rows) == sent and {"time", "ip", "port", "payload"} <= set(rows[0])
    else:
        with sqlite3.connect(out) as db:
            assert db.execute("SELECT count(*), count(DISTINCT port) FROM datagrams").fetchone() == (sent, 3)
            (payload,) = db.execute("SELECT payload FROM datagrams LIMIT 1").fetchone()
            assert len(payload) == 12


def test_collect_parses_statsd_into_ndjson(tmp_path: Path) -> None:
    port = free_port()
    out = tmp_path / "metrics.ndjson"
    collect = run("collect", "--port", str(port), "--format", "statsd", "--seconds", "2", "--out", str(out))
    assert collect.stderr is not None and "collecting on" in collect.stderr.readline()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"page.views:1|c|@0.5|#env:prod\nbroken\nlatency:12|ms", ("127.0.0.1", port))
    stdout, stderr = collect.communicate(timeout=60)
    assert collect.returncode == 0, stderr
    assert summary(stdout)["parse_errors"] == 1
    rows = [json.loads(l) for l in out.read_text().split("\n") if l]
    assert [(r["name"], r["value"], r["type"], r["sample_rate"], r["tags"]) for r in rows] == [
        ("page.views", 1.0, "c", 0.5, {"env": "prod"}),
        ("latency", 12.0, "ms", 1.0, {}),
    ]


def test_bad_options_are_usage_errors() -> None:
    for args in (["collect", "--seq", "0:3:big"], ["collect", "--out", "x.csv", "--seconds", "0.1"], ["sensor", "--rate", "0"]):
        result = subprocess.run([sys.executable, "-m", "chatudp", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, (args, result.stderr)


@pytest.mark.parametrize("name, verb", [("collect", "bind"), ("sensor", "send to")])
@pytest.mark.parametrize("where, why", [(("--ip", "999.1.1.1"), ".+"), (("--port", "70000"), "port must be 0-65535")])
def test_a_bad_address_is_one_line_and_status_2_as_for_every_program(
    name: str, verb: str, where: tuple, why: str
) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "chatudp", name, *where, "--seconds", "0.5"], capture_output=True, text=True, timeout=60
    )
    assert completed.returncode == 2, completed
    assert re.fullmatch(rf"chatudp: cannot {verb} [0-9.]+:\d+: {why}\n", completed.stderr), completed.stderr
