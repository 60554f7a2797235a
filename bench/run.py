"""chatudp benchmarks: every scenario against every server, side by side, in one run.

    python bench/run.py [--repeat 3] [--seconds 2] [--out FILE] [--no-gil] [--no-memory]

Servers, each started afresh in its own process for every run (so GIL and CPU are its own):
  model       the pure-Python model of the tutorial's server (tests/original_model.py)
  chatudp     chatudp.ChatUdpServer
  chatudp-cb  chatudp.ChatUdpServer with a Python on_message callback installed
  minirelay   a minimal hand-written Rust relay (blocking recvmmsg + sendmmsg; bench/loadgen),
              the "ceiling relay" for round trips and open-loop loss
  ceiling     no server: a bare sendmmsg loop sending the same Ack-sized datagram to the same
              number of loopback sockets, drained by another thread (closed-loop scenarios)

Scenarios (closed loop: 2 senders with 16 messages in flight each; every socket is a client,
so each message is Acked to receivers + 2 sockets):
  32B/1rx     32-byte messages, 1 receiver   (3 deliveries per message)
  32B/16rx    32-byte messages, 16 receivers (18 deliveries per message)
  512B/16rx   512-byte messages, 16 receivers
  ping        1 sender, 1 message in flight: round trip p50/p99
  open2x      open loop at twice the model's measured capacity in 32B/1rx, 2 senders, 1 receiver
  dead20      32B/1rx with 20 dead clients (registered, then closed: ICMP port unreachable)
then bench/gil.py (GIL benchmark) and bench/memory.py (bytes per client at 100,000 clients).

Prints markdown tables (medians over the repeats, [min-max] spread, ratios computed within each
repeat then their median) and checks the performance targets; writes every raw JSON line to --out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

SERVERS = ("model", "chatudp", "chatudp-cb", "minirelay")
NAMES = {"model": "model", "chatudp": "chatudp", "chatudp-cb": "chatudp+cb", "minirelay": "minirelay",
         "ceiling": "ceiling"}
CLOSED = {
    "32B/1rx": dict(payload=32, receivers=1),
    "32B/16rx": dict(payload=32, receivers=16),
    "512B/16rx": dict(payload=512, receivers=16),
}
SENDERS = 2
WINDOW = 16
INTERVAL = 10.0
SCENARIOS = ("32B/1rx", "32B/16rx", "512B/16rx", "ping", "open2x", "dead20")


def ack_len(payload: int) -> int:
    # "Ack b'" + payload + "'. from 127.0.0.1:" + 5-digit port
    return len("Ack b''. from 127.0.0.1:") + payload + 5


def relay_thread_cpu(stats: Dict[str, Any]) -> float:
    """CPU seconds of chatudp's Rust socket thread(s), from serve.py's per-thread figures."""
    return sum(t["cpu_s"] for t in stats.get("threads", []) if t["name"].startswith("chatudp-server"))


class Runner:
    def __init__(self, args: argparse.Namespace, out):
        self.args = args
        self.out = out
        self.records: List[Dict[str, Any]] = []
        self.log = open(os.devnull, "w")

    def emit(self, record: Dict[str, Any]) -> None:
        self.records.append(record)
        self.out.write(json.dumps(record) + "\n")
        self.out.flush()

    def loadgen_args(self, scenario: str, addr: str, rate: Optional[float]) -> List[str]:
        secs = ["--seconds", str(self.args.seconds), "--label", scenario, "--interval", str(INTERVAL)]
        if scenario in CLOSED:
            c = CLOSED[scenario]
            return ["closed", "--server", addr, "--receivers", str(c["receivers"]), "--senders", str(SENDERS),
                    "--window", str(WINDOW), "--payload", str(c["payload"])] + secs
        if scenario == "dead20":
            return ["closed", "--server", addr, "--receivers", "1", "--senders", str(SENDERS),
                    "--window", str(WINDOW), "--payload", "32", "--dead", "20"] + secs
        if scenario == "ping":
            return ["ping", "--server", addr, "--payload", "32"] + secs
        if scenario == "open2x":
            return ["open", "--server", addr, "--receivers", "1", "--senders", str(SENDERS), "--payload", "32",
                    "--rate", f"{rate:.0f}"] + secs
        raise ValueError(scenario)

    def one(self, repeat: int, scenario: str, impl: str, rate: Optional[float] = None) -> Dict[str, Any]:
        timeout = self.args.seconds + 30
        t0 = time.monotonic()
        load = _common.loadavg()
        if impl == "ceiling":
            c = CLOSED[scenario]
            fanout = c["receivers"] + SENDERS
            foreign = _common.ForeignLoad()
            result = _common.run_loadgen(
                ["ceiling", "--receivers", str(fanout), "--payload", str(ack_len(c["payload"])),
                 "--batch", str(fanout), "--seconds", str(self.args.seconds), "--label", scenario], timeout)
            machine = foreign.done()
            server_final: Dict[str, Any] = {}
        else:
            server = _common.ServerProcess(impl, interval=INTERVAL, max_seconds=self.args.seconds + 120,
                                           log=self.log)
            try:
                before = server.command("stats") if impl != "minirelay" else None
                foreign = _common.ForeignLoad([server.proc.pid])
                result = _common.run_loadgen(self.loadgen_args(scenario, server.addr, rate), timeout)
                machine = foreign.done()
                if before is not None:
                    after = server.command("stats")
                    machine["relay_thread_cpu_s"] = relay_thread_cpu(after) - relay_thread_cpu(before)
            finally:
                server_final = server.stop()
        record = {
            "bench": "relay", "repeat": repeat, "scenario": scenario, "impl": impl,
            "loadavg_before": load, "wall_s": time.monotonic() - t0, "machine": machine, "loadgen": result,
            "server": server_final,
        }
        self.emit(record)
        summary = self.summary(record)
        print(f"  [{repeat + 1}/{self.args.repeat}] {scenario:10} {NAMES[impl]:11} {summary}"
              f"  (other processes: {machine['foreign_cpus']:.2f} CPUs)", file=sys.stderr, flush=True)
        return record

    @staticmethod
    def summary(rec: Dict[str, Any]) -> str:
        r = rec["loadgen"]
        if "error" in r:
            return "ERROR " + r["error"]
        if r.get("mode") == "ping":
            return f"p50 {r['p50_us']:.1f} us  p99 {r['p99_us']:.1f} us"
        if r.get("mode") == "open":
            return f"offered {r['offered_rate']:.0f}/s  loss {r['loss_pct']:.2f}%  delivery loss {r['delivery_loss_pct']:.2f}%"
        extra = f"  bad {r['bad_acks']}  loadgen cpu {r['loadgen_cpu_pct']:.0f}%" if r.get("mode") == "closed" else ""
        return f"{r['deliveries_per_s'] / 1000:.1f}k deliveries/s{extra}"

    @staticmethod
    def wait_quiet(limit: float) -> None:
        deadline = time.monotonic() + limit
        while True:
            probe = _common.ForeignLoad()
            time.sleep(1.0)
            load = probe.done()["foreign_cpus"]
            if load < QUIET_CPUS:
                return
            if time.monotonic() >= deadline:
                print(f"  machine still busy ({load:.2f} CPUs used by other processes); going on", file=sys.stderr)
                return

    def run(self) -> None:
        a = self.args
        order = [i for i in SERVERS if i in a.impls]
        rate = a.open_rate
        for rep in range(a.repeat):
            # Rotate the order each repeat so no server always runs first after a pause.
            impls = order[rep % len(order):] + order[:rep % len(order)]
            for scenario in a.scenarios:
                if a.wait_quiet > 0:
                    self.wait_quiet(a.wait_quiet)
                if scenario == "open2x" and rate is None:
                    caps = [r["loadgen"].get("messages_per_s") for r in self.records
                            if r["scenario"] == "32B/1rx" and r["impl"] == "model" and "error" not in r["loadgen"]]
                    if not caps:
                        print("  open2x skipped: no model capacity measured (needs 32B/1rx with model)",
                              file=sys.stderr)
                        continue
                    rate = 2 * statistics.median(caps)
                    print(f"  open loop rate: 2 x model capacity = {rate:.0f} messages/s", file=sys.stderr)
                targets = list(impls)
                if scenario in CLOSED and "ceiling" in a.impls:
                    targets.append("ceiling")
                for impl in targets:
                    self.one(rep, scenario, impl, rate if scenario == "open2x" else None)


# ------------------------------------------------------------------------------------------
# report

def med(values: List[float]) -> Optional[float]:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def spread(values: List[float], fmt) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "n/a"
    m = statistics.median(values)
    if len(values) == 1:
        return fmt(m)
    return f"{fmt(m)} [{fmt(min(values))}-{fmt(max(values))}]"


def kfmt(v: float) -> str:
    return f"{v / 1000:.0f}k" if v >= 100_000 else f"{v / 1000:.1f}k"


def pct(v: float) -> str:
    return f"{100 * v:.0f}%"


QUIET_CPUS = 0.3  # a run is "quiet" when other processes used less than this many CPUs during it


def is_quiet(record: Dict[str, Any]) -> bool:
    return record.get("machine", {}).get("foreign_cpus", 99.0) < QUIET_CPUS


class Report:
    def __init__(self, records: List[Dict[str, Any]], gil: List[Dict[str, Any]], memory: List[Dict[str, Any]],
                 repeat: int, quiet: bool = False):
        self.records = [r for r in records if r.get("bench") == "relay" and (not quiet or is_quiet(r))]
        self.all_records = [r for r in records if r.get("bench") == "relay"]
        self.gil = gil
        self.memory = memory
        self.repeat = repeat
        self.lines: List[str] = []
        self.targets: List[tuple] = []

    def get(self, scenario: str, impl: str, key: str) -> List[float]:
        out = []
        for r in self.records:
            if r["scenario"] == scenario and r["impl"] == impl and "error" not in r["loadgen"]:
                out.append(r["loadgen"].get(key))
        return out

    def by_repeat(self, scenario: str, impl: str, key: str) -> Dict[int, float]:
        return {r["repeat"]: r["loadgen"].get(key) for r in self.records
                if r["scenario"] == scenario and r["impl"] == impl and "error" not in r["loadgen"]}

    def ratios(self, s1: str, i1: str, s2: str, i2: str, key: str, key2: Optional[str] = None) -> List[float]:
        a = self.by_repeat(s1, i1, key)
        b = self.by_repeat(s2, i2, key2 or key)
        return [a[k] / b[k] for k in sorted(a) if k in b and a[k] is not None and b[k]]

    def impls(self, scenario: str) -> List[str]:
        present = {r["impl"] for r in self.records if r["scenario"] == scenario}
        return [i for i in SERVERS + ("ceiling",) if i in present]

    def p(self, line: str = "") -> None:
        self.lines.append(line)

    def target(self, name: str, value: Optional[float], ok: Optional[bool], shown: str) -> None:
        if value is None:
            self.targets.append((name, "not measured", None))
        else:
            self.targets.append((name, shown, ok))

    def foreign(self, scenarios) -> str:
        vals = [r["machine"]["foreign_cpus"] for r in self.all_records
                if r["scenario"] in scenarios and "machine" in r]
        if not vals:
            return ""
        quiet = sum(1 for r in self.all_records if r["scenario"] in scenarios and is_quiet(r))
        return (f"Other processes on the machine used {spread(vals, lambda v: f'{v:.2f}')} CPUs during these runs "
                f"({quiet} of {len(vals)} runs quiet, i.e. under {QUIET_CPUS} CPUs).")

    def closed(self) -> None:
        scen = [s for s in CLOSED if self.get(s, "chatudp", "deliveries_per_s") or self.get(s, "model", "deliveries_per_s")]
        if not scen:
            return
        cols = [i for i in SERVERS + ("ceiling",) if any(self.get(s, i, "deliveries_per_s") for s in scen)]
        self.p(f"### Closed loop: deliveries per second (Acks received by all sockets), median [min-max] of {self.repeat}")
        self.p()
        head = ["scenario"] + [NAMES[c] for c in cols] + ["chatudp / model", "chatudp / ceiling", "+cb / chatudp",
                                                          "chatudp / minirelay", "minirelay / ceiling"]
        self.p("| " + " | ".join(head) + " |")
        self.p("|" + "---|" * len(head))
        for s in scen:
            row = [s] + [spread(self.get(s, c, "deliveries_per_s"), kfmt) for c in cols]
            row.append(spread(self.ratios(s, "chatudp", s, "model", "deliveries_per_s"), lambda v: f"{v:.2f}x"))
            row.append(spread(self.ratios(s, "chatudp", s, "ceiling", "deliveries_per_s"), pct))
            row.append(spread(self.ratios(s, "chatudp-cb", s, "chatudp", "deliveries_per_s"), pct))
            row.append(spread(self.ratios(s, "chatudp", s, "minirelay", "deliveries_per_s"), lambda v: f"{v:.2f}x"))
            row.append(spread(self.ratios(s, "minirelay", s, "ceiling", "deliveries_per_s"), pct))
            self.p("| " + " | ".join(row) + " |")
        self.p()
        bad = sum(v or 0 for s in scen for i in SERVERS for v in self.get(s, i, "bad_acks"))
        lost = sum(v or 0 for s in scen for i in SERVERS for v in self.get(s, i, "lost_messages"))
        cpu = [v for s in scen for i in ("chatudp", "chatudp-cb") for v in self.get(s, i, "loadgen_cpu_pct")]
        mini = max((v for s in scen for v in self.get(s, "minirelay", "deliveries_per_s")), default=0)
        best = max((v for s in scen for i in ("chatudp", "chatudp-cb") for v in self.get(s, i, "deliveries_per_s")),
                   default=0)
        self.p(self.foreign(scen))
        self.p()
        self.p(f"Every Ack was checked byte for byte: {bad} bad Acks, {lost} messages lost in all closed-loop runs. "
               f"Load generator: at most {max(cpu, default=0):.0f}% of one CPU in any chatudp run (one thread; "
               f"100% would mean it limits the rate), and the same load generator drives the minimal relay to "
               f"{kfmt(mini)} deliveries/s (chatudp's best: {kfmt(best)}).")
        self.p()
        # server CPU per message, measured around each load generator run
        rows = []
        for s in scen:
            for impl in ("model", "chatudp", "chatudp-cb", "minirelay"):
                per, relay_share = [], []
                for r in self.records:
                    if r["scenario"] != s or r["impl"] != impl or "error" in r["loadgen"]:
                        continue
                    m = r.get("machine", {})
                    msgs = r["loadgen"].get("total_sent", 0)
                    if not msgs or not m.get("server_cpu_s"):
                        continue
                    per.append(m["server_cpu_s"] * 1e6 / msgs)
                    if m.get("relay_thread_cpu_s") is not None:
                        relay_share.append(m["relay_thread_cpu_s"] / m["server_cpu_s"])
                if per:
                    share = med(relay_share)
                    rows.append(f"| {s} | {NAMES[impl]} | {med(per):.1f} | "
                                f"{'-' if impl in ('model', 'minirelay') or share is None else pct(share)} |")
        if rows:
            self.p("Server CPU per message relayed (whole server process during the run, median), and the part spent "
                   "in chatudp's Rust socket thread (the rest is Python: mostly the dispatcher thread that turns "
                   "events into Python objects):")
            self.p()
            self.p("| scenario | server | CPU µs / message | in the Rust socket thread |")
            self.p("|---|---|---|---|")
            for row in rows:
                self.p(row)
            self.p()
        self.cost(scen)
        for s, need in (("32B/1rx", 0.80), ("32B/16rx", 0.85), ("512B/16rx", 0.85)):
            v = med(self.ratios(s, "chatudp", s, "ceiling", "deliveries_per_s"))
            self.target(f"relay ≥{need:.0%} of the sendmmsg ceiling, {s}", v, v is not None and v >= need,
                        f"{v:.0%}" if v is not None else "")
        for s in scen:
            v = med(self.ratios(s, "chatudp-cb", s, "chatudp", "deliveries_per_s"))
            self.target(f"on_message callback ≥90% of no callback, {s}", v, v is not None and v >= 0.90,
                        f"{v:.0%}" if v is not None else "")

    def cost_of(self, scenario: str, impl: str, thread: bool = False) -> Dict[int, float]:
        """CPU µs per datagram delivered, per repeat: the ceiling's sender thread, a server's
        process, or (thread=True) chatudp's Rust relay thread alone."""
        out = {}
        for r in self.records:
            if r["scenario"] != scenario or r["impl"] != impl or "error" in r["loadgen"]:
                continue
            lg = r["loadgen"]
            if impl == "ceiling":
                out[r["repeat"]] = lg["sender_ns_per_datagram"] / 1000
                continue
            m = r.get("machine", {})
            cpu = m.get("relay_thread_cpu_s") if thread else m.get("server_cpu_s")
            if cpu is not None and lg.get("total_deliveries"):
                out[r["repeat"]] = cpu * 1e6 / lg["total_deliveries"]
        return out

    def cost(self, scen: List[str]) -> None:
        cols = [("ceiling", False, "ceiling sender thread"), ("minirelay", False, "minirelay"),
                ("chatudp", True, "chatudp relay thread"), ("chatudp", False, "chatudp process"),
                ("chatudp-cb", False, "chatudp+cb process"), ("model", False, "model")]
        if not any(self.cost_of(s, "ceiling") for s in scen):
            return
        self.p("CPU time per datagram delivered (µs; from the kernel's per-thread/per-process counters, so far less "
               "sensitive to other load than the rates; includes the loopback delivery done in the sender's "
               "context). The last column is the rate the relay thread would reach, as a fraction of the ceiling, "
               "with a CPU to itself:")
        self.p()
        head = ["scenario"] + [c[2] for c in cols] + ["ceiling cost / chatudp relay-thread cost"]
        self.p("| " + " | ".join(head) + " |")
        self.p("|" + "---|" * len(head))
        for s in scen:
            row = [s]
            for impl, thread, _ in cols:
                row.append(spread(list(self.cost_of(s, impl, thread).values()), lambda v: f"{v:.2f}"))
            a, b = self.cost_of(s, "ceiling"), self.cost_of(s, "chatudp", True)
            row.append(spread([a[k] / b[k] for k in a if k in b and b[k]], pct))
            self.p("| " + " | ".join(row) + " |")
        self.p()

    def ping(self) -> None:
        cols = self.impls("ping")
        if not cols:
            return
        self.p(f"### Ping: round trip of one message, 1 in flight (µs), median [min-max] of {self.repeat}")
        self.p()
        head = ["percentile"] + [NAMES[c] for c in cols] + ["chatudp / minirelay"]
        self.p("| " + " | ".join(head) + " |")
        self.p("|" + "---|" * len(head))
        for key in ("p50_us", "p99_us"):
            row = [key[:3]] + [spread(self.get("ping", c, key), lambda v: f"{v:.1f}") for c in cols]
            row.append(spread(self.ratios("ping", "chatudp", "ping", "minirelay", key), lambda v: f"{v:.2f}x"))
            self.p("| " + " | ".join(row) + " |")
        self.p()
        self.p(self.foreign(["ping"]))
        self.p()
        v = med(self.ratios("ping", "chatudp", "ping", "minirelay", "p50_us"))
        self.target("ping p50 within 10% of the ceiling relay (minirelay)", v, v is not None and v <= 1.10,
                    f"{v:.2f}x" if v is not None else "")

    def open_loop(self) -> None:
        cols = self.impls("open2x")
        if not cols:
            return
        rate = med(self.get("open2x", cols[0], "offered_rate"))
        cap = med(self.get("32B/1rx", "model", "messages_per_s"))
        self.p(f"### Open loop at twice the model's capacity: {rate:.0f} messages/s offered "
               f"(model capacity in 32B/1rx: {cap:.0f} messages/s), 2 senders + 1 receiver")
        self.p()
        head = ["figure"] + [NAMES[c] for c in cols]
        self.p("| " + " | ".join(head) + " |")
        self.p("|" + "---|" * len(head))
        for key, label in (("loss_pct", "messages lost (%)"), ("delivery_loss_pct", "deliveries lost (%)"),
                           ("achieved_send_rate", "sent by the load generator (/s)"),
                           ("messages_per_s", "Acked to their sender (/s)")):
            fmt = (lambda v: f"{v:.2f}") if "loss" in key else (lambda v: f"{v:.0f}")
            row = [label] + [spread(self.get("open2x", c, key), fmt) for c in cols]
            self.p("| " + " | ".join(row) + " |")
        agg = {}
        for impl in cols:
            runs = [r["loadgen"] for r in self.records
                    if r["scenario"] == "open2x" and r["impl"] == impl and "error" not in r["loadgen"]]
            sent = sum(r.get("total_sent", 0) for r in runs)
            lost = sum(r.get("lost_messages", 0) for r in runs)
            agg[impl] = (100.0 * lost / sent if sent else None, sum(1 for r in runs if r.get("lost_messages")),
                         len(runs))
        self.p("| " + " | ".join(["all runs together: lost (%), runs with any loss"] + [
            "n/a" if agg[c][0] is None else f"{agg[c][0]:.2f}, {agg[c][1]} of {agg[c][2]}" for c in cols]) + " |")
        self.p()
        if "chatudp" in agg and "minirelay" in agg and agg["chatudp"][0] is not None and agg["minirelay"][0] is not None:
            c, ceil = agg["chatudp"][0], agg["minirelay"][0]
            self.target("open loop at 2x model capacity: no loss beyond the ceiling relay's", c, c <= ceil + 0.05,
                        f"chatudp {c:.2f}% ({agg['chatudp'][1]} of {agg['chatudp'][2]} runs) vs minirelay "
                        f"{ceil:.2f}% ({agg['minirelay'][1]} of {agg['minirelay'][2]} runs)")
        self.p(self.foreign(["open2x"]))
        self.p()

    def dead(self) -> None:
        cols = [c for c in self.impls("dead20") if c != "ceiling"]
        if not cols:
            return
        self.p("### 20 dead clients in the table (32B/1rx plus 20 closed ports): deliveries/s to live clients")
        self.p()
        head = ["figure"] + [NAMES[c] for c in cols]
        self.p("| " + " | ".join(head) + " |")
        self.p("|" + "---|" * len(head))
        self.p("| " + " | ".join(["with 20 dead"] + [spread(self.get("dead20", c, "deliveries_per_s"), kfmt)
                                                      for c in cols]) + " |")
        self.p("| " + " | ".join(["rate with / without"] + [
            spread(self.ratios("dead20", c, "32B/1rx", c, "deliveries_per_s"), pct) for c in cols]) + " |")
        unreach = []
        for c in cols:
            vals = [r["server"].get("stats", {}).get("unreachable") for r in self.records
                    if r["scenario"] == "dead20" and r["impl"] == c and r["server"].get("stats")]
            unreach.append(str(med(vals)) if vals else "-")
        self.p("| " + " | ".join(["clients dropped as unreachable"] + unreach) + " |")
        self.p()
        self.p(self.foreign(["dead20"]))
        self.p()
        v = med(self.ratios("dead20", "chatudp", "32B/1rx", "chatudp", "deliveries_per_s"))
        self.target("20 dead clients: ≥80% of the rate without them", v, v is not None and v >= 0.80,
                    f"{v:.0%}" if v is not None else "")

    def gil_table(self) -> None:
        rows = [g for g in self.gil if "error" not in g]
        if not rows:
            return
        self.p("### GIL: server in-process, pure-Python loop in the main thread, open-loop load from another process")
        self.p()
        self.p("| server | offered /s | loop speed loaded / idle | (raw wall-clock ratio) | main thread waiting for "
               "the GIL | loop speed per CPU-second, loaded / idle | messages lost (%) | Acks back /s while loaded |")
        self.p("|---|---|---|---|---|---|---|---|")
        for g in rows:
            per_cpu = g.get("per_cpu_second_loaded_vs_idle")
            self.p(f"| {g['impl']} | {g['offered_rate']:.0f} | {g['loaded_vs_idle']:.1%} | "
                   f"{g['loaded_vs_idle_wall']:.1%} | {g['main_thread_sleep_share_loaded']:.1%} | "
                   f"{'n/a' if per_cpu is None else f'{per_cpu:.1%}'} | "
                   f"{g['loss_pct']:.2f} | {g['acks_back_per_s_while_loaded']:.0f} |")
        self.p()
        self.p(f"Medians over {rows[0].get('cycles', '?')} loaded phases of {rows[0].get('seconds_per_phase', '?')} s, "
               "each compared with the idle phases on both sides. 'Loop speed' discounts the time the main thread "
               "waited for a CPU taken by other processes (run-queue wait, /proc/self/task/TID/schedstat): GIL "
               "waits are kept. 'Per CPU-second' moves with the hardware (the other vCPU, the host), not the GIL.")
        self.p()
        for g in rows:
            if g["impl"] == "chatudp" and g["offered_rate"] == 1000:
                ok = g["loss_pct"] < 1.0 and g["loaded_vs_idle"] >= 0.90
                self.target("GIL: chatudp <1% loss and main loop ≥90% of idle at 1000/s", 1, ok,
                            f"loss {g['loss_pct']:.2f}%, loop {g['loaded_vs_idle']:.1%} of idle")

    def memory_table(self) -> None:
        rows = [m for m in self.memory if "error" not in m]
        if not rows:
            return
        self.p("### Memory: resident bytes per client, 100,000 clients in the table")
        self.p()
        self.p("| server | clients | RssAnon growth | bytes / client |")
        self.p("|---|---|---|---|")
        for m in rows:
            self.p(f"| {m['impl']} | {m['clients_in_table']} | {m['RssAnon_delta'] / 1e6:.2f} MB | "
                   f"{m['bytes_per_client']:.0f} |")
        self.p()
        for m in rows:
            if m["impl"] == "chatudp":
                v = m["bytes_per_client"]
                self.target("memory <200 bytes per client beyond the kernel's", v, v < 200, f"{v:.0f} B/client")

    def render(self) -> str:
        self.closed()
        self.ping()
        self.open_loop()
        self.dead()
        self.gil_table()
        self.memory_table()
        if self.targets:
            quiet = Report(self.all_records, self.gil, self.memory, self.repeat, quiet=True)
            quiet.closed(), quiet.ping(), quiet.open_loop(), quiet.dead(), quiet.gil_table(), quiet.memory_table()
            qmap = {name: (shown, ok) for name, shown, ok in quiet.targets}
            self.p("### Issue 4 targets")
            self.p()
            self.p(f"Ratios are taken within each repeat (runs minutes apart are never paired), then their median. "
                   f"'Quiet runs' keeps only the pairs where other processes used under {QUIET_CPUS} CPUs in both runs.")
            self.p()
            self.p("| target | all runs | quiet runs only | |")
            self.p("|---|---|---|---|")
            for name, shown, ok in self.targets:
                qshown, qok = qmap.get(name, ("not measured", None))
                verdict = "not measured" if ok is None else "met" if ok else "MISSED"
                if ok is not None and qok is not None and qok != ok:
                    verdict = f"{'met' if qok else 'MISSED'} when quiet, {'met' if ok else 'MISSED'} overall"
                self.p(f"| {name} | {shown} | {qshown} | {verdict} |")
            self.p()
        return "\n".join(self.lines)


def machine() -> str:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, Python {platform.python_version()}"


def hold_cpu_latency_at_zero() -> int:
    """Asks the kernel for 0 µs CPU wake-up latency (PM QoS) until the returned descriptor closes."""
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)
    except OSError as e:
        sys.exit(f"--fast-wake: cannot open /dev/cpu_dma_latency ({e.strerror}); it needs root")
    os.write(fd, (0).to_bytes(4, sys.byteorder))
    return fd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each scenario and server (default 3)")
    ap.add_argument("--seconds", type=float, default=2.0, help="measured seconds per run (default 2)")
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--impls", default=",".join(SERVERS + ("ceiling",)))
    ap.add_argument("--open-rate", type=float, help="offered rate for open2x (default: 2 x model capacity)")
    ap.add_argument("--out", help="raw JSON lines (default bench/results/run-TIMESTAMP.jsonl)")
    ap.add_argument("--no-gil", action="store_true", help="skip bench/gil.py")
    ap.add_argument("--no-memory", action="store_true", help="skip bench/memory.py")
    ap.add_argument("--nice", type=int, default=0,
                    help="niceness increment for the benchmark and everything it starts (negative needs root; "
                         "on a shared machine it keeps other work from dominating the figures)")
    ap.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                    help="before each scenario, wait up to SECONDS for other processes to use under "
                         f"{QUIET_CPUS} CPUs (shared machines; default 0: do not wait)")
    ap.add_argument("--fast-wake", action="store_true",
                    help="hold /dev/cpu_dma_latency at 0 for the run (root), as cyclictest does: idle CPUs "
                         "stay in their shallowest state, so every round trip measures the relays, not how "
                         "long a CPU takes to wake from a deep idle state")
    ap.add_argument("--report", help="only print the tables of an existing raw file")
    args = ap.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    args.impls = [s for s in args.impls.split(",") if s]
    for s in args.scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(SCENARIOS)}")
    if not 1 <= args.repeat <= 50 or not 0.2 <= args.seconds <= 60:
        ap.error("--repeat must be 1..50 and --seconds 0.2..60")

    if args.report:
        with open(args.report) as f:
            recs = [json.loads(line) for line in f if line.strip()]
        reps = max((r.get("repeat", 0) for r in recs if r.get("bench") == "relay"), default=0) + 1
        print(Report(recs, [r for r in recs if r.get("bench") == "gil"],
                     [r for r in recs if r.get("bench") == "memory"], reps).render())
        return 0

    if args.nice:
        os.nice(args.nice)
    # Kept open for the whole run: the kernel's latency request lasts as long as the descriptor.
    fast_wake = hold_cpu_latency_at_zero() if args.fast_wake else None
    _common.build_loadgen()
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out_path = args.out or os.path.join(_common.HERE, "results", f"run-{stamp}.jsonl")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    started = time.monotonic()
    with open(out_path, "w") as out:
        meta = {"bench": "meta", "started": stamp, "machine": machine(), "argv": sys.argv[1:],
                "loadavg": _common.loadavg(), "fast_wake": fast_wake is not None}
        out.write(json.dumps(meta) + "\n")
        print(f"{meta['machine']}; load average {meta['loadavg']:.2f}; raw results -> {out_path}", file=sys.stderr)
        runner = Runner(args, out)
        runner.run()
        gil: List[Dict[str, Any]] = []
        memory: List[Dict[str, Any]] = []
        for name, skip, sink in (("gil", args.no_gil, gil), ("memory", args.no_memory, memory)):
            if skip:
                continue
            print(f"  running bench/{name}.py", file=sys.stderr, flush=True)
            cmd = [sys.executable, os.path.join(_common.HERE, f"{name}.py")]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=_common.ROOT)
            try:
                output, _ = proc.communicate(timeout=600)
            except subprocess.TimeoutExpired:
                output = ""
            finally:
                _common.kill_pid(proc)
            for line in output.splitlines():
                if line.startswith("{"):
                    rec = json.loads(line)
                    sink.append(rec)
                    out.write(json.dumps(rec) + "\n")
            out.flush()
    report = Report(runner.records, gil, memory, args.repeat).render()
    print()
    print(f"Measured on {machine()}, `python bench/run.py {' '.join(sys.argv[1:])}`, "
          f"{(time.monotonic() - started) / 60:.1f} min; raw JSON lines in {os.path.relpath(out_path, _common.ROOT)}.")
    print()
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
