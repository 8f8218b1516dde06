"""
The fuzzing campaign: coverage-guided (atheris, i.e. libFuzzer) runs of every
target in fuzz/targets.py, each in its own process.

    python fuzz/run.py                         # every target, 20 s each, 2 at a time
    python fuzz/run.py --seconds 300 oscar sip-tcp
    python fuzz/run.py --runs 1000000 --jobs 2 # the long run: 10^6 inputs per target
    python fuzz/run.py --replay oscar FILE...  # feed saved inputs to one target, no fuzzer
    python fuzz/run.py --list

Each target starts from its seeds (``SEEDS``) plus the inputs of
``fuzz/regressions/TARGET/``; what the fuzzer finds goes to a temporary
corpus (``--corpus DIR`` keeps it). An input that makes a target raise is
saved under ``--crashes`` (default ``fuzz/crashes``) and named in the report;
copy it to ``fuzz/regressions/TARGET/`` once fixed, so the test suite
replays it for ever (tests/test_fuzz.py).

Prints one line per target (inputs run, inputs a second, coverage, corpus,
peak RSS, result) and, with ``--json FILE``, writes them there. Exits 1 if
any target found a defect.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
REGRESSIONS = os.path.join(HERE, "regressions")

# What the code under test is: only these modules are instrumented for coverage.
INSTRUMENTED = ["gateway", "gateway_oscar", "gateway_sametime", "gateway_sip", "gateway_xmpp", "gateway_example"]


def _path():
    if ROOT not in sys.path:
        sys.path.insert(0, ROOT)


def child(name, libfuzzer_args):
    """Run inside the fuzzer process: instrument, build the target, fuzz."""
    import atheris
    from twisted.logger import globalLogBeginner

    _path()
    # No log file: the targets watch the log themselves, and Twisted's buffer of
    # events logged before logging begins would grow with every input.
    globalLogBeginner.beginLoggingTo([], discardBuffer=True, redirectStandardIO=False)
    with atheris.instrument_imports(include=INSTRUMENTED):
        import fuzz.targets as targets

        one = targets.TARGETS[name]()
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def seeds(name, folder):
    """Write the target's seeds and saved regressions into ``folder``; returns how many."""
    _path()
    import fuzz.targets as targets

    os.makedirs(folder, exist_ok=True)
    count = 0
    for index, data in enumerate(targets.SEEDS[name]):
        with open(os.path.join(folder, f"seed-{index}"), "wb") as f:
            f.write(data)
        count += 1
    saved = os.path.join(REGRESSIONS, name)
    if os.path.isdir(saved):
        for entry in sorted(os.listdir(saved)):
            shutil.copy(os.path.join(saved, entry), os.path.join(folder, "regression-" + entry))
            count += 1
    return count


def replay(name, files):
    """Feed saved inputs to one target in this process; the first defect raises."""
    _path()
    import fuzz.targets as targets

    one = targets.TARGETS[name]()
    for path in files:
        with open(path, "rb") as f:
            one(f.read())
        print(f"{name}: {path}: ok")


_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)
_PROGRESS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\S+)", re.M)
_CRASH_FILE = re.compile(r"Test unit written to (\S+)")


def run_target(name, args, work):
    """One fuzzer process for ``name``; returns its figures as a dict."""
    corpus = os.path.join(args.corpus, name) if args.corpus else os.path.join(work, name, "corpus")
    seed_dir = os.path.join(work, name, "seeds")
    os.makedirs(corpus, exist_ok=True)
    seeded = seeds(name, seed_dir)
    crashes = os.path.join(args.crashes, name)
    os.makedirs(crashes, exist_ok=True)
    limit = [f"-runs={args.runs}"] if args.runs else [f"-max_total_time={args.seconds}"]
    command = [
        sys.executable, os.path.abspath(__file__), "--child", name, "--",
        *limit, f"-timeout={args.timeout}", f"-rss_limit_mb={args.rss_limit_mb}", f"-max_len={args.max_len}",
        f"-artifact_prefix={crashes}{os.sep}", "-print_final_stats=1", corpus, seed_dir,
    ]
    started = time.monotonic()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    output = done.stdout.decode("utf-8", "replace")
    stats = {k: int(v) for k, v in _STAT.findall(output)}
    progress = _PROGRESS.findall(output)
    crash = _CRASH_FILE.findall(output)
    result = {
        "target": name,
        "seconds": round(time.monotonic() - started, 1),
        "runs": stats.get("number_of_executed_units", 0),
        "per_second": stats.get("average_exec_per_sec", 0),
        "coverage": int(progress[-1][1]) if progress else 0,
        "features": int(progress[-1][2]) if progress else 0,
        "corpus": int(progress[-1][3]) if progress else 0,
        "seeds": seeded,
        "peak_rss_mb": stats.get("peak_rss_mb", 0),
        "exit": done.returncode,
        "crash": crash[-1] if crash else None,
        "ok": done.returncode == 0 and not crash,
    }
    if not result["ok"]:
        log = os.path.join(crashes, "output.txt")
        with open(log, "w", encoding="utf-8") as f:
            f.write(output)
        result["log"] = log
        result["excerpt"] = _excerpt(output)
    return result


def _excerpt(output):
    """The part of the fuzzer's output that says what went wrong."""
    for marker in ("=== Uncaught Python exception", "==ERROR", "ERROR:"):
        at = output.find(marker)
        if at >= 0:
            return output[at:at + 4000]
    return output[-4000:]


def line(result):
    status = "ok" if result["ok"] else f"DEFECT (exit {result['exit']}): {result.get('crash')}"
    return (f"{result['target']:<16} {result['runs']:>9} inputs {result['per_second']:>6}/s "
            f"cov {result['coverage']:>5} ft {result['features']:>6} corpus {result['corpus']:>5} "
            f"rss {result['peak_rss_mb']:>4} MB {result['seconds']:>7} s  {status}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        name = argv[1]
        rest = argv[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        return child(name, rest)

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="*", help="the targets to run (default: all)")
    parser.add_argument("--seconds", type=int, default=20, help="time per target (default 20)")
    parser.add_argument("--runs", type=int, default=0, help="inputs per target instead of a time")
    parser.add_argument("--jobs", type=int, default=2, help="targets fuzzed at once")
    parser.add_argument("--timeout", type=int, default=10, help="seconds one input may take")
    parser.add_argument("--rss-limit-mb", type=int, default=2048)
    parser.add_argument("--max-len", type=int, default=4096)
    parser.add_argument("--corpus", default="", help="keep each target's corpus under DIR/TARGET")
    parser.add_argument("--crashes", default=os.path.join(HERE, "crashes"))
    parser.add_argument("--json", default="")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--replay", nargs="+", metavar=("TARGET", "FILE"))
    args = parser.parse_args(argv)

    _path()
    import fuzz.targets as targets

    if args.list:
        for name in targets.TARGETS:
            print(name)
        return 0
    if args.replay:
        replay(args.replay[0], args.replay[1:])
        return 0
    names = args.targets or list(targets.TARGETS)
    unknown = [n for n in names if n not in targets.TARGETS]
    if unknown:
        parser.error(f"no such target: {', '.join(unknown)} (see --list)")
    limit = f"{args.runs} inputs" if args.runs else f"{args.seconds} s"
    print(f"fuzz: {len(names)} targets, {limit} each, {args.jobs} at a time", flush=True)
    work = tempfile.mkdtemp(prefix="gateway-fuzz-")
    results = []
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            for result in pool.map(lambda n: run_target(n, args, work), names):
                print(line(result), flush=True)
                if not result["ok"]:
                    print(result["excerpt"], flush=True)
                results.append(result)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    bad = [r["target"] for r in results if not r["ok"]]
    print(f"fuzz: {len(results) - len(bad)} of {len(results)} targets found no defect"
          + (f"; defects in {', '.join(bad)}" if bad else ""), flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
