"""
The gateway bench: full path against a bare Twisted relay measured in the same run.

    python bench/run.py [--quick] [--json FILE] [--cases NAME,...] [--profile]

Starts every server and load client as a subprocess (127.0.0.1 only, free
ports), prints each figure as it is measured, then a table and the machine
it ran on. Nothing here asserts on timings: counts that do not add up
(received != sent, archive rows != messages) are printed as WARNING lines.
See bench/README.rst for what each case measures.
"""

import argparse
import atexit
import datetime
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time

import common
from common import free_port, machine_info

HERE = os.path.dirname(os.path.abspath(__file__))
PYTHON = sys.executable

CASES = ("baseline_tcp_relay", "full_path_tcp", "full_path_memory", "latency", "memory", "stages")
# "gateway" delivers once the archive row is durable (the default); "gateway-fast"
# is the opt-out ([archive] durable = false), measured beside it for the cost.
QUICK_CASES = CASES[:-1]
# Cases run only when named in --cases (they take minutes): verify over --verify-rows rows.
EXTRA_CASES = ("chain_verify",)

# The project's standards (see the issue) and the goal of the full path.
GOAL_RATIO = 0.35
TARGET_SESSION_BYTES = 4096

DEFAULTS = dict(connections=100, window=16, seconds=5.0, repeat=2, messages=50_000, rates=[1000.0, 5000.0],
                latency_seconds=3.0, warmup=0.5, sessions=2000, traced_sessions=300, stage_calls=5000)
QUICK = dict(connections=100, window=16, seconds=1.0, repeat=1, messages=10_000, rates=[5000.0],
             latency_seconds=1.0, warmup=0.2, sessions=200, traced_sessions=0, stage_calls=2000)


# -- subprocesses ---------------------------------------------------------------

_children = []


class ChildError(Exception):
    pass


class Child:
    """A bench subprocess speaking JSON lines on stdout; stderr goes to a log file."""

    def __init__(self, name, argv, log_dir):
        self.name = name
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [PYTHON, *argv],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
            cwd=common.ROOT,
        )
        _children.append(self)
        self._lines = queue.Queue()
        reader = threading.Thread(target=self._read, name=f"{name}-stdout", daemon=True)
        reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read(self, timeout=60.0):
        """The next JSON object the child prints; raises ChildError on exit, timeout or an error."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.name}: no answer within {timeout:g} s{self._tail()}")
            try:
                line = self._lines.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                self.proc.wait(5)
                raise ChildError(f"{self.name} exited with {self.proc.returncode}{self._tail()}")
            line = line.strip()
            if not line.startswith("{"):
                continue
            answer = json.loads(line)
            if "error" in answer:
                raise ChildError(f"{self.name}: {answer['error']}{self._tail()}")
            return answer

    def send(self, command):
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def ask(self, command, timeout=60.0):
        self.send(command)
        return self.read(timeout)

    def _tail(self, lines=15):
        self._log.flush()
        try:
            with open(self.log_path) as f:
                tail = f.read().splitlines()[-lines:]
        except OSError:
            return ""
        return ("\n    " + "\n    ".join(tail)) if tail else ""

    def finish(self, timeout=30.0):
        """Wait for the child to exit by itself; kill it after ``timeout``."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        self._close()

    def stop(self, timeout=30.0):
        """Ask a server to quit (it stops its gateway cleanly), then make sure it is gone."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError, ValueError):
                pass
            self.finish(timeout)
        self._close()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._close()

    def _close(self):
        if self in _children:
            _children.remove(self)
        for stream in (self.proc.stdin,):
            try:
                stream.close()
            except (OSError, ValueError, BrokenPipeError):
                pass
        self._log.close()


def kill_all():
    for child in list(_children):
        try:
            child.kill()
        except Exception:
            pass


def _on_signal(signum, frame):
    kill_all()
    sys.exit(128 + signum)


# -- CPU accounting: how busy the machine was with other work --------------------


def _proc_stat():
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal
    busy = fields[0] + fields[1] + fields[2] + fields[5] + fields[6]
    steal = fields[7] if len(fields) > 7 else 0
    return busy, steal


class CpuWatch:
    """CPU used by this run (runner + reaped children) and by everything else, over one case."""

    def __init__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.wall = time.monotonic()
        self.busy, self.steal = _proc_stat()
        self.ours = self._ours()

    @staticmethod
    def _ours():
        total = 0.0
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
            usage = resource.getrusage(who)
            total += usage.ru_utime + usage.ru_stime
        return total

    def result(self):
        wall = time.monotonic() - self.wall
        busy, steal = _proc_stat()
        machine = (busy - self.busy) / self.tick
        ours = self._ours() - self.ours
        return {
            "wall_seconds": round(wall, 2),
            "our_cpu_seconds": round(ours, 2),
            "machine_cpu_seconds": round(machine, 2),
            # CPU used by other processes on the machine, in cores, averaged over the case.
            "other_cores": round(max(0.0, machine - ours) / wall, 2) if wall > 0 else 0.0,
            "steal_cores": round((steal - self.steal) / self.tick / wall, 2) if wall > 0 else 0.0,
        }


# -- the runner -------------------------------------------------------------------


class Bench:
    def __init__(self, args, params, log_dir):
        self.args = args
        self.p = params
        self.log_dir = log_dir
        self.results = {}
        self.figures = []
        self.warnings = []
        self._count = 0

    # -- helpers

    def _name(self, what):
        self._count += 1
        return f"{self._count:02d}-{what}"

    def warn(self, text):
        self.warnings.append(text)
        print(f"WARNING: {text}", flush=True)

    def figure(self, case, name, value, unit, baseline="", note=""):
        self.figures.append(
            {"case": case, "figure": name, "value": value, "unit": unit, "baseline": baseline, "note": note}
        )
        shown = _fmt(value)
        extra = "; ".join(x for x in (baseline, note) if x)
        print(f"  {name}: {shown} {unit}" + (f"  ({extra})" if extra else ""), flush=True)

    def server(self, mode, users):
        last = None
        for _ in range(3):
            argv = [os.path.join(HERE, "relay.py"), "--mode", "gateway" if mode.startswith("gateway") else mode,
                    "--port", str(free_port()), "--users", str(users)]
            if mode == "gateway-fast":
                argv.append("--no-durable")
            if mode == "gateway-nochain":
                argv.append("--no-chain")
            if self.args.entry_points:
                argv.append("--entry-points")
            child = Child(self._name(f"{mode}-server"), argv, self.log_dir)
            try:
                ready = child.read(timeout=120)
            except ChildError as e:
                child.kill()
                last = e
                if "Address already in use" in str(e) or "Couldn't listen" in str(e):
                    continue  # someone took the port in between: another one
                raise
            child.port = ready["port"]
            child.ready = ready
            return child
        raise last

    def load(self, port, *options, timeout=180):
        argv = [os.path.join(HERE, "load.py"), "--port", str(port), *map(str, options)]
        child = Child(self._name("load"), argv, self.log_dir)
        try:
            result = child.read(timeout=timeout)
        finally:
            child.finish(30)
        if result.get("errors"):
            self.warn(f"load client: {'; '.join(result['errors'])}")
        return result

    def check_counts(self, case, load, server_stats=None):
        if load["received"] != load["sent"]:
            self.warn(f"{case}: received {load['received']} != sent {load['sent']}")
        if server_stats is not None:
            if server_stats.get("frames_in") != load["sent"]:
                self.warn(f"{case}: server took {server_stats.get('frames_in')} frames, client sent {load['sent']}")
            if server_stats.get("frames_out") != load["received"]:
                self.warn(
                    f"{case}: server delivered {server_stats.get('frames_out')} frames, "
                    f"client received {load['received']}"
                )
            outcomes = server_stats.get("outcomes")
            if outcomes is not None and outcomes.get("delivered", 0) != load["sent"]:
                self.warn(f"{case}: outcomes {outcomes} for {load['sent']} messages; {server_stats.get('reasons')}")
            if server_stats.get("dropped"):
                self.warn(f"{case}: server dropped {server_stats['dropped']} frames")

    def cpu(self, case, watch):
        usage = watch.result()
        self.results.setdefault(case, {})["cpu"] = usage
        if usage["other_cores"] > 0.15 or usage["steal_cores"] > 0.05:
            self.warn(
                f"{case}: other processes used {usage['other_cores']:.2f} of {os.cpu_count()} cores "
                f"(steal {usage['steal_cores']:.2f}) during this case: its figures are low and noisy"
            )

    # -- cases

    def tcp_throughput(self, case, mode):
        """``repeat`` runs, each on a fresh server; the figure is their median."""
        return self.tcp_throughputs(case, [mode])[mode]

    def tcp_throughputs(self, case, modes):
        """
        ``repeat`` runs of each of ``modes``, taken in turns (a, b, a, b: a
        machine that slows down part way through weighs on both alike);
        ``{mode: (runs, median rate)}``.
        """
        runs = {mode: [] for mode in modes}
        for _ in range(self.p["repeat"]):
            for mode in modes:
                runs[mode].append(self._tcp_run(case, mode))
        return {mode: (done, _median([r["load"]["rate"] for r in done])) for mode, done in runs.items()}

    def _tcp_run(self, case, mode):
        """One run on a fresh server: the load's, the server's and the archive's figures."""
        p = self.p
        server = self.server(mode, users=p["connections"])
        try:
            before = server.ask("stats")
            load = self.load(
                server.port, "--connections", p["connections"], "--window", p["window"],
                "--seconds", p["seconds"],
            )
            stats = server.ask("stats")
            stats["cpu_during_load"] = {
                name: stats.get(key, 0.0) - before.get(key, 0.0)
                for name, key in (("gateway", "cpu_seconds"), ("writer", "writer_cpu_seconds"))
            }
            drained = server.ask("drain", timeout=300) if mode != "bare" else None
        finally:
            server.stop()
        self.check_counts(case, load, stats)
        return {"load": load, "server": stats, "archive": drained}

    def _cpu_note(self, runs):
        """CPU per message delivered in each process (the median of the runs'), as a figure's note."""
        parts = []
        for name in ("gateway", "writer", "load"):
            values = []
            for r in runs:
                spent = r["load"].get("cpu_seconds", 0.0) if name == "load" else \
                    r["server"].get("cpu_during_load", {}).get(name, 0.0)
                if r["load"]["received"]:
                    values.append(spent / r["load"]["received"] * 1e6)
            if values and _median(values) > 0:
                parts.append(f"{name} {_median(values):.1f}")
        return "CPU per message (us): " + ", ".join(parts) if parts else ""

    def _runs_note(self, runs):
        p = self.p
        note = f"{p['connections']} conns, {p['window']} in flight each, {p['seconds']:g} s"
        if len(runs) > 1:
            note += "; median of " + " / ".join(_fmt(r["load"]["rate"]) for r in runs)
        return note

    def case_baseline_tcp_relay(self):
        case = "baseline_tcp_relay"
        runs, rate = self.tcp_throughput(case, "bare")
        self.results[case] = {"runs": runs, "rate": rate}
        self.figure(case, "throughput", rate, "msg/s", note=self._runs_note(runs) + "; " + self._cpu_note(runs))

    def case_full_path_tcp(self):
        case = "full_path_tcp"
        fast_runs, fast_rate = self.tcp_throughput(case, "gateway-fast")
        self.results[case + "_not_durable"] = {"runs": fast_runs, "rate": fast_rate}
        self.figure(case, "throughput, delivered before durable (durable = false)", fast_rate, "msg/s",
                    note=self._runs_note(fast_runs) + "; " + self._cpu_note(fast_runs))
        measured = self.tcp_throughputs(case, ["gateway-nochain", "gateway"])
        plain_runs, plain_rate = measured["gateway-nochain"]
        self.results[case + "_no_chain"] = {"runs": plain_runs, "rate": plain_rate}
        self.figure(case, "throughput without the hash chain (chain = false)", plain_rate, "msg/s",
                    note=self._runs_note(plain_runs) + "; taken in turns with the runs below; "
                    + self._cpu_note(plain_runs))
        runs, rate = measured["gateway"]
        self.results[case] = {"runs": runs, "rate": rate}
        bare = self.results.get("baseline_tcp_relay", {}).get("rate")
        self.figure(case, "throughput", rate, "msg/s",
                    baseline=f"not durable {_fmt(fast_rate)} msg/s, no chain {_fmt(plain_rate)} msg/s",
                    note=(f"chain {100 * (rate / plain_rate - 1):+.1f} %; " if plain_rate else "")
                    + self._runs_note(runs) + "; " + self._cpu_note(runs))
        if bare:
            ratio = rate / bare
            self.results[case]["ratio"] = ratio
            self.figure(case, "ratio full/bare", round(ratio, 3), "x",
                        baseline=f"bare relay {_fmt(bare)} msg/s", note=f"goal >= {GOAL_RATIO}")
        sent = sum(r["load"]["sent"] for r in runs)
        rows = sum(r["archive"]["rows"].get("im", 0) for r in runs)
        backlog = max(r["server"]["archive_queue"] for r in runs)
        drain = max(r["archive"]["drain_seconds"] for r in runs)
        spooled = sum(r["archive"]["archive_spooled"] for r in runs)
        self.figure(
            case, "archive rows (im)", rows, "rows",
            baseline=f"messages sent {sent}",
            note=f"writer queue at end of load <= {backlog}, drained within {drain} s, spooled {spooled}",
        )
        if rows != sent:
            self.warn(f"{case}: archive has {rows} im rows for {sent} messages sent "
                      f"(spooled {spooled}; states {[r['archive']['archive_state'] for r in runs]})")
        sustained = _median(
            [r["archive"]["rows"].get("im", 0) / (r["load"]["elapsed"] + r["archive"]["drain_seconds"]) for r in runs]
        )
        self.results[case]["archived_rate"] = sustained
        self.figure(case, "archived rate (load + drain)", round(sustained, 1), "rows/s",
                    note="messages archived / (load time + time the writer needed afterwards)")

    def case_full_path_memory(self):
        case = "full_path_memory"
        argv = [os.path.join(HERE, "inproc.py"), "--messages", self.p["messages"]]
        if self.args.entry_points:
            argv.append("--entry-points")
        child = Child(self._name("inproc"), list(map(str, argv)), self.log_dir)
        try:
            result = child.read(timeout=600)
        finally:
            child.finish(30)
        if result.get("errors"):
            self.warn(f"{case}: {result['errors']}")
        self.results[case] = result
        if result["received"] != result["messages"]:
            self.warn(f"{case}: received {result['received']} != sent {result['messages']}")
        if result["outcomes"].get("delivered", 0) != result["messages"]:
            self.warn(f"{case}: outcomes {result['outcomes']} for {result['messages']} messages")
        self.figure(case, "throughput", result["rate"], "msg/s",
                    note=f"{result['messages']} msgs, batches of {result['batch']}")
        self.figure(case, "reactor thread CPU per message", result["reactor_cpu_us_per_message"], "us",
                    note=f"wall {result['us_per_message']} us; other threads {result['other_threads_cpu_us_per_message']} us")
        self.figure(case, "archive rows (im)", result["archived"], "rows",
                    baseline=f"messages sent {result['messages']}",
                    note=f"max queue {result['archive_max_queue']}, drained in {result['drain_seconds']} s, "
                         f"spooled {result['archive_spooled']}")
        if result["archived"] != result["messages"]:
            self.warn(f"{case}: archive has {result['archived']} im rows for {result['messages']} messages")
        self.figure(case, "archived rate (submit + drain)", result["archived_rate"], "rows/s")

    def case_latency(self):
        case = "latency"
        p = self.p
        self.results[case] = {}
        for mode in ("bare", "gateway-fast", "gateway"):
            server = self.server(mode, users=p["connections"])
            try:
                for rate in p["rates"]:
                    load = self.load(
                        server.port, "--connections", p["connections"], "--rate", rate,
                        "--seconds", p["latency_seconds"], "--warmup", p["warmup"],
                    )
                    stats = server.ask("stats")
                    server.ask("reset")
                    if mode != "bare":
                        server.ask("drain", timeout=300)  # no archive backlog into the next rate
                    self.check_counts(f"{case} ({mode})", load, stats)
                    self.results[case][f"{mode}@{rate:g}"] = {"load": load, "server": stats}
                    self._latency_figures(case, mode, rate, load)
            finally:
                server.stop()

    def _latency_figures(self, case, mode, rate, load):
        p = self.p
        latency = load["latency_ms"]
        name = f"{case} {_fmt(rate)}/s ({mode})"
        note = f"{p['connections']} conns, {latency['count']} samples, max {latency['max']} ms"
        delivered = load.get("delivered_rate_while_sending", 0.0)
        if delivered < 0.9 * rate:
            note += (f"; SATURATED: delivered {_fmt(delivered)} msg/s while {_fmt(rate)} were offered, "
                     "so these latencies are queueing and grow with the run's length")
            self.warn(f"{case} ({mode}) at {rate:g} msg/s: the server delivered only {delivered:.0f} msg/s "
                      "while the load ran (saturated)")
        for q in ("p50", "p99"):
            base = ""
            if mode != "bare":
                bare = self.results[case].get(f"bare@{rate:g}")
                if bare:
                    base = f"bare {bare['load']['latency_ms'][q]} ms"
                fast = self.results[case].get(f"gateway-fast@{rate:g}")
                if mode == "gateway" and fast:
                    base += f", not durable {fast['load']['latency_ms'][q]} ms"
            self.figure(name, q, latency[q], "ms", baseline=base, note=note if q == "p99" else "")
        achieved = load["sent"] / load["send_seconds"] if load.get("send_seconds") else 0
        if achieved < 0.95 * rate:
            self.warn(f"{case} ({mode}): the client offered only {achieved:.0f} msg/s of {rate:.0f}")

    def memory_server(self, mode, sessions, trace):
        server = self.server(mode, users=sessions)
        try:
            time.sleep(1.0)  # the archive writer process has started and set itself up
            idle = server.ask("gc")
            started = server.ask("trace-start") if trace else None
            client = Child(
                self._name("load-hold"),
                [os.path.join(HERE, "load.py"), "--port", str(server.port), "--connections", str(sessions), "--hold"],
                self.log_dir,
            )
            try:
                held = client.read(timeout=300)
                after = server.ask("gc")
                top = server.ask("trace-top") if trace else None
                client.send("quit")
                result = client.read(timeout=60)
            finally:
                client.finish(30)
        finally:
            server.stop()
        if result.get("errors"):
            self.warn(f"memory ({mode}): {'; '.join(result['errors'])}")
        if after.get("sessions", after.get("routes")) != sessions:
            self.warn(f"memory ({mode}): {after.get('sessions', after.get('routes'))} logged in of {sessions}")
        figures = {
            "ready_rss_kb": server.ready["rss_kb"],
            "idle_rss_kb": idle["rss_kb"],
            "writer_rss_kb": idle.get("writer_rss_kb", 0),
            "loaded_rss_kb": after["rss_kb"],
            "sessions": sessions,
            "login_seconds": held["connect_seconds"],
            "per_session_bytes": (after["rss_kb"] - idle["rss_kb"]) * 1024 / sessions,
        }
        if trace:
            figures["traced_per_session_bytes"] = (after["traced"] - started["traced"]) / sessions
            figures["traced_top"] = [dict(t, per_session=round(t["bytes"] / sessions, 1)) for t in top["top"]]
        return figures

    def case_memory(self):
        case = "memory"
        n = self.p["sessions"]
        imports = self.import_rss()
        bare = self.memory_server("bare", n, trace=False)
        gateway = self.memory_server("gateway", n, trace=False)
        self.results[case] = {"imports": imports, "bare": bare, "gateway": gateway}
        self.figure(case, "idle gateway process RSS", round(gateway["idle_rss_kb"] / 1024, 1), "MB",
                    baseline=f"bare relay {bare['idle_rss_kb'] / 1024:.1f} MB",
                    note=f"{gateway['idle_rss_kb'] / bare['idle_rss_kb']:.2f} x; target <= 1.25 x the bare relay")
        if gateway["writer_rss_kb"]:
            self.figure(case, "idle archive writer process RSS", round(gateway["writer_rss_kb"] / 1024, 1), "MB",
                        note="the child process that does the SQL work; gateway + writer "
                             f"{(gateway['idle_rss_kb'] + gateway['writer_rss_kb']) / 1024:.1f} MB")
        if imports:
            steps = ", ".join(f"{name} +{kb / 1024:.1f}" for name, kb in imports[1:])
            self.figure(case, "RSS after imports only", round(sum(kb for _, kb in imports) / 1024, 1), "MB",
                        note=f"python {imports[0][1] / 1024:.1f}, {steps} (MB, in this order)")
        self.figure(case, "RSS per idle logged-in session", round(gateway["per_session_bytes"]), "bytes",
                    baseline=f"bare relay {bare['per_session_bytes']:.0f} B per connection",
                    note=f"{n} sessions; target < {TARGET_SESSION_BYTES} B")
        self.figure(case, "login time per session", round(gateway["login_seconds"] / n * 1000, 2), "ms",
                    note=f"{n} logins in {gateway['login_seconds']} s, at most 100 at once")
        traced_n = self.p["traced_sessions"]
        if traced_n:
            traced = self.memory_server("gateway", traced_n, trace=True)
            self.results[case]["gateway_tracemalloc"] = traced
            self.figure(case, "tracemalloc per idle session", round(traced["traced_per_session_bytes"]), "bytes",
                        note=f"Python allocations only, {traced_n} sessions; target < {TARGET_SESSION_BYTES} B")
            print("  where that memory was allocated (bytes per session, source line):")
            for t in traced["traced_top"][:10]:
                print(f"    {t['per_session']:8.0f}  {t['where']}")

    def import_rss(self):
        """RSS (kB) of a fresh Python, then what each import of the gateway's stack adds."""
        proc = subprocess.run([PYTHON, "-c", _IMPORT_RSS], cwd=common.ROOT, capture_output=True, text=True, timeout=120)
        try:
            return json.loads(proc.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            self.warn(f"memory: import RSS probe failed: {proc.stderr.strip()[-300:]}")
            return []

    def case_stages(self):
        case = "stages"
        argv = [os.path.join(HERE, "stages.py"), "--messages", str(self.p["stage_calls"])]
        child = Child(self._name("stages"), argv, self.log_dir)
        try:
            result = child.read(timeout=300)
        finally:
            child.finish(30)
        if result.get("errors"):
            self.warn(f"{case}: {result['errors']}")
        self.results[case] = result
        for stage in result.get("stages", ()):
            self.figure(case, stage["stage"], stage["us"], "us", note=stage["note"])

    def case_chain_verify(self):
        case = "chain_verify"
        argv = [os.path.join(HERE, "verify.py"), "--rows", str(self.args.verify_rows)]
        child = Child(self._name("verify"), argv, self.log_dir)
        try:
            result = child.read(timeout=3600)
        finally:
            child.finish(30)
        self.results[case] = result
        if not result.get("ok"):
            self.warn(f"{case}: the archive written for the bench did not verify: {result}")
        self.figure(case, "archive verify", result["verify_rows_per_second"], "rows/s",
                    note=f"{result['rows']:,} events + {result['deliveries']:,} deliveries in "
                         f"{result['verify_seconds']} s, {result['dialect']}")
        self.figure(case, "written with the chain", result["write_rows_per_second"], "rows/s",
                    note=f"ArchiveStore.insert_rows in batches of 5000, {result['write_seconds']} s")

    def profile(self):
        """cProfile the full_path_memory submit loop; the top functions go to the terminal."""
        path = os.path.join(self.log_dir, "full_path_memory.prof")
        argv = [os.path.join(HERE, "inproc.py"), "--messages", str(self.p["messages"]),
                "--profile", path, "--profile-clock", self.args.profile_clock]
        proc = subprocess.run([PYTHON, *argv], cwd=common.ROOT, capture_output=True, text=True, timeout=900)
        print(proc.stderr)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        self.results["profile"] = {"stats_file": path, "clock": self.args.profile_clock, "run": result}
        print(f"profile written to {path} (pstats; clock: {self.args.profile_clock})")


# Run in a fresh interpreter: [(step, kB added)], the first step being Python itself.
_IMPORT_RSS = """
import importlib, json, sys
sys.path.insert(0, "bench")
from common import rss_kb
steps, last = [], rss_kb()
steps.append(("python", last))
# Alembic is not among them: the gateway loads it only to upgrade a database that is behind.
for name in ("OpenSSL.SSL", "twisted.internet.reactor", "sqlalchemy",
             "prometheus_client", "gateway.service"):
    try:
        importlib.import_module(name)
    except ImportError:
        continue
    now = rss_kb()
    steps.append((name, now - last))
    last = now
print(json.dumps(steps))
"""


def _median(values):
    values = sorted(values)
    if not values:
        return 0.0
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def _fmt(value):
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def table(figures):
    rows = [("case", "figure", "value", "unit", "baseline / target")]
    for f in figures:
        rows.append((f["case"], f["figure"], _fmt(f["value"]), f["unit"], "; ".join(x for x in (f["baseline"], f["note"]) if x)))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for n, r in enumerate(rows):
        lines.append("  ".join([r[0].ljust(widths[0]), r[1].ljust(widths[1]), r[2].rjust(widths[2]), r[3].ljust(widths[3]), r[4]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 17)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--quick", action="store_true", help="short runs (about 30 s in all)")
    parser.add_argument("--json", metavar="FILE", help="write every figure and raw result to FILE")
    parser.add_argument("--cases", help=f"comma-separated, of: {', '.join(CASES + EXTRA_CASES)} "
                                        f"(default: all but {', '.join(EXTRA_CASES)}; --quick: also not stages)")
    parser.add_argument("--verify-rows", type=int, default=1_000_000, help="chain_verify: rows in the archive")
    parser.add_argument("--connections", type=int, help="TCP connections (even)")
    parser.add_argument("--window", type=int, help="messages in flight per connection")
    parser.add_argument("--seconds", type=float, help="throughput: seconds of load")
    parser.add_argument("--messages", type=int, help="full_path_memory: messages")
    parser.add_argument("--repeat", type=int, help="throughput: runs per TCP case (the median is shown)")
    parser.add_argument("--rates", help="latency: offered msg/s in all, comma-separated (default 1000,5000)")
    parser.add_argument("--sessions", type=int, help="memory: sessions to log in (even)")
    parser.add_argument("--traced-sessions", type=int,
                        help="memory: sessions for the tracemalloc figure (even; 0 skips it)")
    parser.add_argument("--entry-points", action="store_true",
                        help="keep the installed entry-point plugins in the gateway (default: disabled)")
    parser.add_argument("--profile", action="store_true",
                        help="only cProfile full_path_memory and print the top functions")
    parser.add_argument("--profile-clock", choices=("cpu", "wall"), default="cpu")
    parser.add_argument("--keep-logs", action="store_true", help="keep the subprocess logs")
    args = parser.parse_args(argv)

    params = dict(QUICK if args.quick else DEFAULTS)
    for key in ("connections", "window", "seconds", "repeat", "messages", "sessions", "traced_sessions"):
        value = getattr(args, key)
        if value is not None:
            params[key] = value
    if args.rates:
        params["rates"] = [float(r) for r in args.rates.split(",") if r.strip()]
    if args.seconds is not None:
        params["latency_seconds"] = args.seconds
    if args.cases:
        cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    else:
        cases = list(QUICK_CASES if args.quick else CASES)
    unknown = set(cases) - set(CASES + EXTRA_CASES)
    if unknown:
        parser.error(f"unknown cases {', '.join(sorted(unknown))}; known: {', '.join(CASES + EXTRA_CASES)}")
    if params["connections"] % 2 or params["sessions"] % 2 or params["traced_sessions"] % 2:
        parser.error("--connections and --sessions must be even (connections talk in pairs)")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)
    atexit.register(kill_all)
    common.raise_fd_limit()

    log_dir = tempfile.mkdtemp(prefix="gateway-bench-logs-")
    bench = Bench(args, params, log_dir)
    info = machine_info()
    started = datetime.datetime.now(datetime.timezone.utc)
    with open("/proc/loadavg") as f:
        load_before = f.read().split()[:3]
    print(f"gateway bench {started:%Y-%m-%d %H:%M} UTC, {'quick' if args.quick else 'default'} run; logs in {log_dir}")
    print(f"machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, Python {info['python']}, "
          f"Twisted {info['twisted']}, SQLAlchemy {info['sqlalchemy']}; load average {' '.join(load_before)}")
    print(f"parameters: {json.dumps(params)}", flush=True)
    failed = []
    try:
        if args.profile:
            bench.profile()
        else:
            for case in cases:
                print(f"\n== {case}", flush=True)
                watch = CpuWatch()
                try:
                    getattr(bench, f"case_{case}")()
                except ChildError as e:
                    failed.append(case)
                    bench.warn(f"{case} failed: {e}")
                finally:
                    kill_all()
                bench.cpu(case, watch)
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        kill_all()

    with open("/proc/loadavg") as f:
        load_after = f.read().split()[:3]
    if bench.figures:
        print("\n" + table(bench.figures))
    print(f"\nmachine: {info['cpu']}; {info['cores']} cores; {info.get('memory_mb', '?')} MB; Linux {info['kernel']}; "
          f"Python {info['python']}; Twisted {info['twisted']}; SQLAlchemy {info['sqlalchemy']}")
    print(f"date: {started:%Y-%m-%d %H:%M} UTC; load average before {' '.join(load_before)}, after {' '.join(load_after)}")
    busy = {c: r["cpu"]["other_cores"] for c, r in bench.results.items() if isinstance(r, dict) and "cpu" in r}
    if busy:
        print("other processes' CPU during each case (cores): " + ", ".join(f"{c} {v:.2f}" for c, v in busy.items()))
    if bench.warnings:
        print(f"{len(bench.warnings)} warning(s):")
        for w in bench.warnings:
            print(f"  - {w.splitlines()[0]}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "date": started.isoformat(timespec="seconds"),
                    "quick": args.quick,
                    "machine": info,
                    "load_average": {"before": load_before, "after": load_after},
                    "parameters": params,
                    "figures": bench.figures,
                    "results": bench.results,
                    "warnings": bench.warnings,
                    "failed": failed,
                },
                f,
                indent=2,
            )
        print(f"figures written to {args.json}")
    if not args.keep_logs and not failed:
        import shutil

        shutil.rmtree(log_dir, ignore_errors=True)
    elif failed:
        print(f"logs kept in {log_dir}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
