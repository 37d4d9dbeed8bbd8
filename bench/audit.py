"""Audit log benchmark: durable appends per second with group commit against plain inserts of
the same rows into the same database, and verification time of 10^5 and 10^6 events.

    .venv/bin/python bench/audit.py [--quick]

Writes bench/results/audit.json. Every figure is measured in this run; the baseline (one
durable transaction per event, which is what an application gets without group commit) runs
on the same database file, same pragmas (WAL, synchronous=FULL).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform as host
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402
from sqlalchemy import delete, insert  # noqa: E402

from controller.audit.canonical import canonical, entry_bytes  # noqa: E402
from controller.audit.log import GENESIS, AuditLog, Event  # noqa: E402
from controller.audit.verify import verify  # noqa: E402
from controller.store import AuditEvent, iso, make_engine, migrate, utcnow, writer_engine  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "audit.json"


def event(i: int) -> Event:
    return Event("user:bench", "source.registered", "source", f"src-{i}",
                 {"publisher": "demo-rennes", "sensitivity": "personal", "version": 1, "i": i})


def rows(n: int) -> list[dict]:
    """The rows the audit log would write, hashes included, for the plain-insert baseline."""
    out, head = [], GENESIS
    for i in range(n):
        e = event(i)
        details = canonical(dict(e.details)).decode()
        ts = iso(utcnow())
        leaf = hashlib.sha256(b"\x00" + entry_bytes(i + 1, ts, e.actor, e.action, e.subject_type, e.subject_id,
                                                     None, None, details)).digest()
        head = hashlib.sha256(head + leaf).digest()
        out.append({"seq": i + 1, "ts": ts, "actor": e.actor, "action": e.action, "subject_type": e.subject_type,
                    "subject_id": e.subject_id, "decision_id": None, "policy_revision": None, "details": details,
                    "leaf_hash": leaf, "chain_hash": head})
    return out


def plain_inserts(engine, n: int) -> float:
    """One durable transaction per event: what the same rows cost without group commit."""
    data = rows(n)
    writer = writer_engine(engine)
    start = time.perf_counter()
    with writer.connect() as conn:
        for row in data:
            with conn.begin():
                conn.execute(insert(AuditEvent), row)
    elapsed = time.perf_counter() - start
    with writer.begin() as conn:
        conn.execute(delete(AuditEvent))
    return n / elapsed


def group_commit(engine, n: int, threads_count: int, *, blocking: bool) -> tuple[float, float]:
    """Appends through the audit log; an event counts once its group commit is acknowledged.

    blocking: each thread appends one event and waits for it, again and again, like API request
    handlers. Otherwise each thread submits all its events, then waits for them (pipelined).
    """
    log = AuditLog(engine, origin="bench", batch_max=1000).start()
    batches: list[int] = []
    log._on_batch = batches.append
    per = n // threads_count

    def work(w: int) -> None:
        if blocking:
            for i in range(per):
                log.append(event(w * per + i))
        else:
            for future in [log.submit(event(w * per + i)) for i in range(per)]:
                future.result()

    threads = [threading.Thread(target=work, args=(w,)) for w in range(threads_count)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    log.close(final_checkpoint=False)
    return per * threads_count / elapsed, sum(batches) / len(batches)


def build_and_verify(directory: Path, n: int) -> dict:
    engine = make_engine(f"sqlite:///{directory / f'verify-{n}.db'}")
    migrate(engine)
    key = Ed25519PrivateKey.generate()
    log = AuditLog(engine, origin="bench", signing_key=key, batch_max=5000).start()
    chunk = 50_000
    start = time.perf_counter()
    for base in range(0, n, chunk):
        futures = [log.submit(event(i)) for i in range(base, min(n, base + chunk))]
        for f in futures:
            f.result()
    build = time.perf_counter() - start
    log.checkpoint()
    log.close()
    start = time.perf_counter()
    report = verify(engine, key.public_key())
    elapsed = time.perf_counter() - start
    assert report.ok and report.events == n, report
    engine.dispose()
    return {"events": n, "verify_seconds": round(elapsed, 3), "events_per_second": round(n / elapsed),
            "build_seconds": round(build, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    args = parser.parse_args()
    n_plain, n_group = (2_000, 20_000) if args.quick else (10_000, 200_000)
    sizes = (10_000, 100_000) if args.quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bulles-bench-") as tmp:
        directory = Path(tmp)
        engine = make_engine(f"sqlite:///{directory / 'appends.db'}")
        migrate(engine)
        baseline = plain_inserts(engine, n_plain)
        pipelined, pipelined_batch = group_commit(engine, n_group, 4, blocking=False)
        with writer_engine(engine).begin() as conn:
            conn.execute(delete(AuditEvent))
        blocking, blocking_batch = group_commit(engine, n_group // 4, 64, blocking=True)
        engine.dispose()
        verification = [build_and_verify(directory, n) for n in sizes]
    result = {
        "benchmark": "audit",
        "database": "SQLite, WAL, synchronous=FULL",
        "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "system": host.platform()},
        "baseline_plain_inserts_per_second": round(baseline),
        "group_commit_pipelined_appends_per_second": round(pipelined),
        "group_commit_pipelined_mean_batch": round(pipelined_batch, 1),
        "group_commit_pipelined_vs_plain": round(pipelined / baseline, 2),
        "group_commit_64_blocking_threads_appends_per_second": round(blocking),
        "group_commit_64_blocking_threads_mean_batch": round(blocking_batch, 1),
        "group_commit_64_blocking_threads_vs_plain": round(blocking / baseline, 2),
        "verification": verification,
        "targets": {"durable_appends_per_second": 20_000, "verify_1e6_seconds": 10},
        "quick": args.quick,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"plain inserts (1 durable transaction/event): {baseline:>10,.0f} /s   (baseline)")
    print(f"group commit, pipelined producers:           {pipelined:>10,.0f} /s   x{pipelined / baseline:.1f}"
          f"   (mean batch {pipelined_batch:.0f})")
    print(f"group commit, 64 blocking threads:           {blocking:>10,.0f} /s   x{blocking / baseline:.1f}"
          f"   (mean batch {blocking_batch:.0f})")
    for v in verification:
        print(f"verify {v['events']:>9,} events: {v['verify_seconds']:6.2f} s ({v['events_per_second']:,}/s)")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
