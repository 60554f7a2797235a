"""Helpers shared by the benchmark scripts: the load generator binary, server subprocesses,
JSON lines read with deadlines. Every process started here is ended by its PID in a finally
block; everything stays on 127.0.0.1."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LOADGEN_DIR = os.path.join(HERE, "loadgen")
LOADGEN = os.path.join(LOADGEN_DIR, "target", "release", "loadgen")
LOCALHOST = "127.0.0.1"


def build_loadgen(force: bool = False) -> str:
    """Builds the load generator when it is missing or older than its sources."""
    sources = [os.path.join(LOADGEN_DIR, "Cargo.toml")]
    src = os.path.join(LOADGEN_DIR, "src")
    sources += [os.path.join(src, f) for f in os.listdir(src)]
    newest = max(os.path.getmtime(p) for p in sources)
    if force or not os.path.exists(LOADGEN) or os.path.getmtime(LOADGEN) < newest:
        cmd = ["cargo", "build", "--release", "--manifest-path", os.path.join(LOADGEN_DIR, "Cargo.toml")]
        print("building the load generator:", " ".join(cmd), file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True, timeout=600)
    return LOADGEN


def kill_pid(proc: Optional[subprocess.Popen]) -> None:
    """Ends a process we started, by its PID, if it is still running."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(timeout=3)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


def read_json_line(proc: subprocess.Popen, timeout: float, want: Optional[str] = None) -> Dict[str, Any]:
    """The next JSON object line on `proc.stdout` (with event `want` if given), within `timeout`."""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no JSON line from pid {proc.pid} within {timeout} s")
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"pid {proc.pid} closed its output (exit code {proc.poll()})")
        line = line.strip()
        if not line.startswith("{"):
            continue
        obj = json.loads(line)
        if want is None or obj.get("event") == want:
            return obj


class ServerProcess:
    """One server in its own process: 'model', 'chatudp', 'chatudp-cb' (bench/serve.py) or
    'minirelay' (the load generator's minimal Rust relay)."""

    def __init__(self, impl: str, interval: float = 10.0, max_seconds: float = 300.0, log=None, workers: int = 1):
        self.impl = impl
        if impl == "minirelay":
            cmd = [build_loadgen(), "minirelay", "--seconds", str(max_seconds), "--interval", str(interval)]
        else:
            cmd = [
                sys.executable, os.path.join(HERE, "serve.py"), "--impl", impl,
                "--interval", str(interval), "--max-seconds", str(max_seconds), "--workers", str(workers),
            ]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log or subprocess.DEVNULL,
            text=True, bufsize=1, cwd=ROOT,
        )
        try:
            hello = read_json_line(self.proc, 30, "listening")
        except BaseException:
            kill_pid(self.proc)
            raise
        self.port = int(hello["port"])
        self.addr = f"{LOCALHOST}:{self.port}"

    def command(self, cmd: str, timeout: float = 30) -> Dict[str, Any]:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return read_json_line(self.proc, timeout)

    def stop(self, timeout: float = 15) -> Dict[str, Any]:
        """Stops the server and returns its last JSON line ({} if it had none)."""
        final: Dict[str, Any] = {}
        try:
            if self.proc.poll() is None:
                if self.impl == "minirelay":
                    self.proc.stdin.close()
                else:
                    self.proc.stdin.write("stop\n")
                    self.proc.stdin.flush()
                final = read_json_line(self.proc, timeout)
                self.proc.wait(timeout=timeout)
        except (OSError, TimeoutError, RuntimeError, ValueError, subprocess.TimeoutExpired):
            pass
        finally:
            kill_pid(self.proc)
        return final

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc: object) -> None:
        kill_pid(self.proc)


def run_loadgen(args: List[str], timeout: float) -> Dict[str, Any]:
    """Runs the load generator to completion and returns its JSON line."""
    proc = subprocess.Popen([build_loadgen()] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_pid(proc)
        return {"error": f"loadgen timed out after {timeout} s", "args": args}
    finally:
        kill_pid(proc)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": f"loadgen printed nothing (exit {proc.returncode}): {err.strip()[-300:]}", "args": args}
    return json.loads(lines[-1])


CLK_TCK = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds all CPUs spent busy (user, nice, system, irq, softirq) since boot."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK


def process_cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), seconds; 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class ForeignLoad:
    """CPUs used by processes other than ours (this one, its waited-for children, `pids`)
    between construction and `done()`: on a shared machine, the other work competing with a run."""

    def __init__(self, pids=()):
        import resource  # noqa: PLC0415

        self._resource = resource
        self.pids = list(pids)
        self.t0 = time.monotonic()
        self.busy0 = machine_busy_s()
        self.own0 = self._own()
        self.srv0 = sum(process_cpu_s(p) for p in self.pids)

    def _own(self) -> float:
        r = self._resource
        me, kids = r.getrusage(r.RUSAGE_SELF), r.getrusage(r.RUSAGE_CHILDREN)
        return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime

    def done(self) -> Dict[str, float]:
        wall = time.monotonic() - self.t0
        busy = machine_busy_s() - self.busy0
        own = self._own() - self.own0
        srv = sum(process_cpu_s(p) for p in self.pids) - self.srv0
        return {
            "wall_s": wall,
            "server_cpu_s": srv,
            "machine_busy_cpus": busy / wall,
            "ours_cpus": (own + srv) / wall,
            "foreign_cpus": max(0.0, busy - own - srv) / wall,
        }


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])
