"""
How fast ``gatewayctl archive verify`` recomputes the hash chain.

An archive of ``--rows`` message rows (and a delivery note for every tenth)
is written through `ArchiveStore` with the chain on, as the archive writer
writes it, into a fresh SQLite file (or ``--url``, e.g. a PostgreSQL
database that may be emptied); then `gateway.compliance.verify.verify`
runs over it. Prints one JSON line: rows, write and verify seconds and
rates, and whether it verified.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from gateway.compliance import keys  # noqa: E402
from gateway.compliance.verify import verify  # noqa: E402
from gateway.model import Message, Verdict  # noqa: E402
from gateway.storage import db  # noqa: E402
from gateway.storage.archive.store import ArchiveStore, delivery_row, record_to_row  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch", type=int, default=5000, help="rows per transaction while writing")
    parser.add_argument("--jobs", type=int, default=2, help="processes verify shares the work with")
    parser.add_argument("--url", help="database URL (default: a new SQLite file in a temporary folder)")
    args = parser.parse_args(argv)
    folder = tempfile.mkdtemp(prefix="gateway-verify-bench-")
    try:
        engine = db.create_engine(args.url or f"sqlite:///{os.path.join(folder, 'gateway.sqlite')}")
        db.migrate(engine)
        store = ArchiveStore(engine, node="bench").chained(keys.load_or_create(os.path.join(folder, "key.pem")))
        template = record_to_row(Message("aim:alice", "aim:bob", "a message of ordinary length, about this long",
                                         created=1.0), Verdict.allow("default", "allowed"), None, "alice", "bob",
                                 recorded=1.5, node="bench")
        started = time.monotonic()
        written = 0
        while written < args.rows:
            count = min(args.batch, args.rows - written)
            rows, notes = [], []
            for i in range(written, written + count):
                event_id = uuid.uuid4().hex
                rows.append(dict(template, id=event_id, created=1.0 + i, recorded=1.5 + i,
                                 data=template["data"].replace(template["id"], event_id)))
                if i % 10 == 0:
                    notes.append(delivery_row(event_id, "delivered", "aim:bob", 2.0 + i))
            store.insert_rows(rows, notes)
            written += count
        write_seconds = time.monotonic() - started
        started = time.monotonic()
        report = verify(engine, jobs=args.jobs)
        verify_seconds = time.monotonic() - started
        print(json.dumps({
            "rows": written, "deliveries": report["deliveries"], "entries": report["entries"],
            "dialect": engine.dialect.name,
            "write_seconds": round(write_seconds, 2), "write_rows_per_second": round(written / write_seconds),
            "verify_seconds": round(verify_seconds, 2),
            "verify_rows_per_second": round((report["events"] + report["deliveries"]) / verify_seconds),
            "jobs": args.jobs, "ok": report["ok"], "problems": report["problem_count"],
        }), flush=True)
        engine.dispose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
