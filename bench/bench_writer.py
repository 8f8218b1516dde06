"""
The archive writer process alone: how many messages a second it records.

No connector and no path: an `ArchiveProcess` (the writer child the gateway
runs) is handed what the path hands it for one delivered instant message,
its event row and its delivery row, in a closed loop of ``--window``
messages whose event rows are waited for (as durable delivery waits), for
``--messages`` messages. It prints the messages recorded a second, the CPU
each process spent per message, and the same run without the hash chain
(``chain = false``) in the same run as the baseline. ``--url`` writes to
another database (PostgreSQL); ``--no-journal`` waits for the commit
instead of the journal; ``--profile FILE`` leaves the writer's cProfile in
FILE.plain and FILE.chained (``python -m pstats FILE.chained``; the last
run of each).

    python bench/bench_writer.py [--messages 40000] [--window 400]
"""

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402,F401  (puts the checkout on sys.path)

from twisted.internet import defer, task  # noqa: E402

from gateway.model import Message, Verdict  # noqa: E402
from gateway.storage import db  # noqa: E402
from gateway.storage.archive.process import ArchiveProcess  # noqa: E402

ALLOW = Verdict.allow()


def child_cpu(pid):
    """CPU seconds (user + system) process ``pid`` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def fresh_database(url, folder):
    """``url``, or a new SQLite file in ``folder``, migrated and emptied."""
    url = url or f"sqlite:///{folder}/archive.sqlite"
    engine = db.create_engine(url)
    db.migrate(engine)
    if not url.startswith("sqlite"):
        with engine.begin() as conn:
            for table in ("chain", "checkpoints", "deliveries", "captures", "events"):
                conn.exec_driver_sql(f"DELETE FROM {table}")
    engine.dispose()
    return url


@defer.inlineCallbacks
def one_run(reactor, args, chain):
    folder = tempfile.mkdtemp(prefix="bench-writer-")
    try:
        url = fresh_database(args.url, folder)
        options = dict(url=url, node="bench", spool_dir=os.path.join(folder, "spool"), batch_size=500,
                       batch_wait=0.0, queue_max=100_000, retry_interval=1.0, journal=args.journal,
                       chain={"signing_key": os.path.join(folder, "archive.key"), "checkpoint_rows": 10_000,
                              "checkpoint_interval": 60.0, "checkpoint_file": ""} if chain else {})
        if args.profile:
            os.environ["GATEWAY_WRITER_PROFILE"] = args.profile + (".chained" if chain else ".plain")
        writer = ArchiveProcess(reactor, options)
        writer.startService()
        os.environ.pop("GATEWAY_WRITER_PROFILE", None)
        while writer.state != "healthy":
            yield task.deferLater(reactor, 0.05, lambda: None)
        payload = "bench payload 0123456789 abcdefghijklmnopqrstuvwxyz " * 2
        sent = 0
        done = defer.Deferred()
        finished = [0]

        def one():
            nonlocal sent
            sent += 1
            event = Message("aim:alice", "sip:bob@example.com", payload, created=reactor.seconds())
            d = writer.record(event, ALLOW, wait=True, strict=False)
            writer.record_delivery(event.id, "delivered", "sip")
            d.addBoth(landed)

        def landed(result):
            finished[0] += 1
            if sent < args.messages:
                one()
            elif finished[0] == args.messages and not done.called:
                done.callback(None)
            return result

        pid = writer.pid
        cpu0, child0, start = own_cpu(), child_cpu(pid), time.perf_counter()
        for _ in range(min(args.window, args.messages)):
            one()
        yield done
        while writer.queue_depth():
            yield task.deferLater(reactor, 0.01, lambda: None)
        elapsed = time.perf_counter() - start
        cpu, child = own_cpu() - cpu0, child_cpu(pid) - child0
        yield writer.stopService()
        return {"rate": args.messages / elapsed, "parent_us": cpu / args.messages * 1e6,
                "child_us": child / args.messages * 1e6, "seconds": elapsed}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@defer.inlineCallbacks
def main(reactor, args):
    print(common.machine_info())
    results = {}
    # Alternated, so that drift on the machine falls on both alike.
    for _ in range(args.runs):
        for chain in (False, True):
            result = yield one_run(reactor, args, chain)
            results.setdefault(chain, []).append(result)
    for chain in (False, True):
        runs = results[chain]
        best = max(runs, key=lambda r: r["rate"])
        rates = ", ".join(f"{r['rate']:,.0f}" for r in runs)
        print(f"{'chained' if chain else 'no chain':>9}: {best['rate']:>9,.0f} messages/s recorded "
              f"(event + delivery row each; runs {rates}); "
              f"CPU per message: writer {best['child_us']:.1f} us, gateway side {best['parent_us']:.1f} us")
    plain = max(r["rate"] for r in results[False])
    chained = max(r["rate"] for r in results[True])
    print(f"the chain costs {100 * (chained / plain - 1):+.1f} % of the writer's rate")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--window", type=int, default=400, help="messages in flight (waited for) at once")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--url", default="", help="database URL (default: a new SQLite file)")
    parser.add_argument("--no-journal", dest="journal", action="store_false")
    parser.add_argument("--profile", default="", help="leave the chained writer's cProfile in this file")
    task.react(main, [parser.parse_args()])
