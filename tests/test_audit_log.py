"""The audit log: group commit, atomicity with the state change, durability, verification,
and detection of every kind of tampering at the exact place. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import delete, func, select, text, update
from typer.testing import CliRunner

from controller.audit.log import AuditLog, Event, EventNotRecorded
from controller.audit.verify import verify
from controller.cli import app as cli
from controller.home import SIGNING_PUB, load_public_key
from controller.platform import Platform
from controller.store import AuditEvent, Checkpoint, Organisation, make_engine, migrate


def fill(platform: Platform, n: int) -> None:
    futures = [platform.audit.submit(Event("user:t", "test.event", "thing", str(i), {"i": i, "note": "é✓"}))
               for i in range(n)]
    for future in futures:
        future.result(30)


def check(platform: Platform):
    return verify(platform.engine, load_public_key(platform.settings.home / SIGNING_PUB))


def test_appends_are_numbered_chained_and_verify(platform: Platform) -> None:
    fill(platform, 250)
    platform.audit.checkpoint()
    fill(platform, 5)
    report = check(platform)
    assert report.ok, report.problem
    assert (report.events, report.checkpoint_size, report.uncovered) == (255, 250, 5)
    with platform.sessions() as s:
        seqs = list(s.scalars(select(AuditEvent.seq).order_by(AuditEvent.seq)))
    assert seqs == list(range(1, 256))


def test_concurrent_appenders_lose_nothing_and_are_group_committed(platform: Platform) -> None:
    batches: list[int] = []
    original = platform.audit._on_batch
    platform.audit._on_batch = lambda n: (batches.append(n), original(n))
    results: list[int] = []
    lock = threading.Lock()

    def worker(w: int) -> None:
        for i in range(40):
            appended = platform.audit.append(Event(f"user:w{w}", "test.event", "thing", f"{w}-{i}"))
            with lock:
                results.append(appended.seq)

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 641))
    assert sum(batches) == 640 and len(batches) < 640  # some commits carried several events
    platform.audit.checkpoint()
    assert check(platform).ok


def test_state_change_and_event_commit_together_or_not_at_all(platform: Platform) -> None:
    def good(session):
        session.add(Organisation(id="org-a", name="A", created_at="2026-01-01T00:00:00.000000Z"))
        return "created"

    def bad(session):
        session.add(Organisation(id="org-b", name="B", created_at="2026-01-01T00:00:00.000000Z"))
        session.flush()
        raise ValueError("refused by a rule")

    ok = platform.audit.submit(Event("user:t", "org.created", "organisation", "org-a"), good)
    ko = platform.audit.submit(Event("user:t", "org.created", "organisation", "org-b"), bad)
    assert ok.result(10).result == "created"
    with pytest.raises(ValueError, match="refused by a rule"):
        ko.result(10)
    with platform.sessions() as s:
        assert s.get(Organisation, "org-a") is not None
        assert s.get(Organisation, "org-b") is None  # rolled back to its savepoint
        assert [e.subject_id for e in s.scalars(select(AuditEvent))] == ["org-a"]


def _org(org_id: str):
    def apply(session):
        session.add(Organisation(id=org_id, name=org_id, created_at="2026-01-01T00:00:00.000000Z"))
        return org_id

    return apply


def _refuse(_result):
    raise RuntimeError("the event factory failed")


def test_a_change_whose_event_cannot_be_recorded_is_rolled_back_alone(platform: Platform) -> None:
    """An event exists if and only if its change does: when the event of a change that succeeded
    cannot be built (its factory fails), encoded (a number canonical JSON cannot hold) or stored
    (a subject the column cannot take), the change is rolled back with it, its caller gets
    EventNotRecorded, and the rest of the same group commit is committed."""
    batches: list[int] = []
    writer = AuditLog(platform.engine, origin="bulles/local", on_batch=batches.append)
    submitted = {
        "org-ok-1": writer.submit(Event("user:t", "org.created", "organisation", "org-ok-1"), _org("org-ok-1")),
        "org-factory": writer.submit(_refuse, _org("org-factory")),
        "org-huge": writer.submit(Event("user:t", "org.created", "organisation", "org-huge", {"n": 2**64}),
                                  _org("org-huge")),
        "org-nan": writer.submit(Event("user:t", "org.created", "organisation", "org-nan", {"x": float("nan")}),
                                 _org("org-nan")),
        "org-nul": writer.submit(Event("user:t", "org.created", "organisation", "org-\x00nul"), _org("org-nul")),
        "org-long": writer.submit(Event("user:t", "org.created", "organisation", "x" * 129), _org("org-long")),
        "org-surrogate": writer.submit(Event("user:t", "org.created", "organisation", "org-s",
                                             {"name": "\ud800"}), _org("org-surrogate")),
        "org-ok-2": writer.submit(lambda created: Event("user:t", "org.created", "organisation", created),
                                  _org("org-ok-2")),
    }
    writer.start()  # everything was queued before the writer started: one group commit
    try:
        for org_id, future in submitted.items():
            if org_id.startswith("org-ok"):
                assert future.result(30).result == org_id
            else:
                with pytest.raises(EventNotRecorded, match="nothing was changed"):
                    future.result(30)
    finally:
        writer.close(final_checkpoint=False)
    assert batches == [2]
    with platform.sessions() as s:
        assert sorted(s.scalars(select(Organisation.id))) == ["org-ok-1", "org-ok-2"]
        assert [e.subject_id for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))] == ["org-ok-1", "org-ok-2"]
    platform.audit.append(Event("user:t", "test.event", "thing", "after"))  # the site's writer catches up
    platform.audit.checkpoint()
    report = check(platform)
    assert report.ok, report.problem


def test_a_change_recorded_by_several_events_commits_with_all_of_them_or_none(platform: Platform) -> None:
    """A vote that releases is two things to record (the vote, the release): both events are in
    the change's transaction, numbered one after the other, or neither is, nor the change."""
    two = platform.audit.append(lambda created: (Event("user:t", "org.created", "organisation", created),
                                                 Event("system:t", "org.announced", "organisation", created)),
                                _org("org-two"))
    assert two.seq == 2 and two.result == "org-two"  # the future carries the last event's number
    with pytest.raises(EventNotRecorded, match="nothing was changed"):
        platform.audit.append((Event("user:t", "org.created", "organisation", "org-half"),
                               Event("user:t", "org.announced", "organisation", "org-half", {"n": 2**64})),
                              _org("org-half"))
    with platform.sessions() as s:
        assert sorted(s.scalars(select(Organisation.id))) == ["org-two"]
        assert [(e.seq, e.action) for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))] == [
            (1, "org.created"), (2, "org.announced")]
    platform.audit.checkpoint()
    report = check(platform)
    assert report.ok, report.problem


def test_an_event_without_a_change_that_cannot_be_encoded_is_refused_alone(platform: Platform) -> None:
    good = platform.audit.submit(Event("user:t", "test.event", "thing", "1"))
    bad = platform.audit.submit(Event("user:t", "test.event", "thing", "2", {"n": -(2**63) - 1}))
    assert good.result(10).seq == 1
    with pytest.raises(EventNotRecorded):
        bad.result(10)
    assert platform.audit.append(Event("user:t", "test.event", "thing", "3")).seq == 2


def test_a_second_writer_on_the_same_database_does_not_fork_the_log(platform: Platform) -> None:
    """A CLI appending beside the running server: both writers catch up, the chain stays one."""
    fill(platform, 3)
    other = AuditLog(platform.engine, origin="bulles/local", signing_key=platform.signing_key).start()
    other.append(Event("cli:root", "test.event", "thing", "from-cli"))
    other.close(final_checkpoint=False)
    fill(platform, 3)  # the server's writer is now stale: it must reload and retry
    platform.audit.checkpoint()
    report = check(platform)
    assert report.ok, report.problem
    assert report.events == 7


def test_checkpoint_of_an_empty_log_is_refused(platform: Platform) -> None:
    with pytest.raises(ValueError, match="empty"):
        platform.audit.checkpoint()


# -- tampering ------------------------------------------------------------------------
@pytest.fixture
def logged(platform: Platform) -> Platform:
    fill(platform, 30)
    platform.audit.checkpoint()
    return platform


def tamper(platform: Platform, statement) -> None:
    with platform.engine.begin() as conn:
        conn.execute(statement)


def _one_byte_changed(value: str | bytes, at: int, to: int) -> str | bytes:
    raw = value.encode() if isinstance(value, str) else value
    assert raw[at] != to
    changed = raw[:at] + bytes([to]) + raw[at + 1:]
    assert len(changed) == len(raw) and sum(a != b for a, b in zip(raw, changed)) == 1  # exactly one byte
    return changed.decode() if isinstance(value, str) else changed


@pytest.mark.parametrize("column,locate,to", [
    ("details", lambda v: v.index(b'"i":16') + 5, ord("7")),  # "i":16 -> "i":17, still valid JSON
    ("details", lambda v: v.index(b'"note"') + 1, ord("m")),  # a key's first letter
    ("leaf_hash", lambda v: 0, None),
    ("chain_hash", lambda v: 31, None),
], ids=["details-value", "details-key", "leaf-hash", "chain-hash"])
def test_one_changed_byte_is_found_at_its_sequence_number(logged: Platform, column: str, locate, to) -> None:
    with logged.sessions() as s:
        stored = getattr(s.get(AuditEvent, 17), column)
    raw = stored.encode() if isinstance(stored, str) else stored
    at = locate(raw)
    changed = _one_byte_changed(stored, at, raw[at] ^ 0x01 if to is None else to)
    tamper(logged, update(AuditEvent).where(AuditEvent.seq == 17).values({column: changed}))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 17, report
    assert report.problem.startswith("event 17:"), report.problem


@pytest.mark.parametrize("column,value", [("actor", "user:someone-else"), ("ts", "2020-01-01T00:00:00.000000Z"),
                                          ("subject_id", "x"), ("action", "test.evenT")])
def test_a_changed_column_is_found(logged: Platform, column: str, value: str) -> None:
    tamper(logged, update(AuditEvent).where(AuditEvent.seq == 9).values({column: value}))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 9


def test_a_deleted_event_is_found(logged: Platform) -> None:
    tamper(logged, delete(AuditEvent).where(AuditEvent.seq == 12))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 12 and "missing" in report.problem


def test_reordered_events_are_found(logged: Platform) -> None:
    # Swap the contents of events 20 and 21 (same sequence numbers, other order).
    with logged.sessions() as s:
        a, b = s.get(AuditEvent, 20), s.get(AuditEvent, 21)
        cols = ("ts", "actor", "action", "subject_type", "subject_id", "details", "leaf_hash", "chain_hash")
        va, vb = ({c: getattr(a, c) for c in cols}, {c: getattr(b, c) for c in cols})
    tamper(logged, update(AuditEvent).where(AuditEvent.seq == 20).values(vb))
    tamper(logged, update(AuditEvent).where(AuditEvent.seq == 21).values(va))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 20


def test_truncation_is_found(logged: Platform) -> None:
    tamper(logged, delete(AuditEvent).where(AuditEvent.seq > 26))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 27 and "truncated" in report.problem


@pytest.mark.parametrize("replaced,seq", [(30, 30), (40, 40), ("both", 30)])
def test_a_replaced_checkpoint_signature_is_found(logged: Platform, replaced, seq: int) -> None:
    """Checkpoints at 30 and 40 events: a bad signature is reported at the last sequence number
    the checkpoint covers (its size), the earliest one first."""
    fill(logged, 10)
    logged.audit.checkpoint()
    forged = Ed25519PrivateKey.generate().sign(b"anything")
    which = update(Checkpoint) if replaced == "both" else update(Checkpoint).where(Checkpoint.size == replaced)
    tamper(logged, which.values(signature=forged))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == seq, report
    assert "signature does not verify" in report.problem and f"covering events 1 to {seq}" in report.problem


def test_a_bad_event_before_a_replaced_signature_is_named_first(logged: Platform) -> None:
    tamper(logged, update(AuditEvent).where(AuditEvent.seq == 5).values(actor="user:someone-else"))
    tamper(logged, update(Checkpoint).values(signature=Ed25519PrivateKey.generate().sign(b"x")))
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 5, report


def test_a_forged_checkpoint_beyond_the_log_is_a_bad_signature_not_a_truncation(logged: Platform) -> None:
    with logged.sessions() as s:
        real = s.scalars(select(Checkpoint)).one()
        s.add(Checkpoint(size=45, root=real.root, chain_head=real.chain_head, origin=real.origin, ts=real.ts,
                         key_id=real.key_id, signature=Ed25519PrivateKey.generate().sign(b"x")))
        s.commit()
    report = check(logged)
    assert not report.ok and report.first_bad_seq == 45 and "signature" in report.problem, report


def test_a_consistently_rewritten_chain_is_caught_by_the_checkpoint(logged: Platform) -> None:
    """An attacker with database access rewrites event 5 and recomputes every hash after it:
    each event matches its stored hash, but not the signed checkpoint."""
    from controller.audit.canonical import entry_bytes
    from controller.audit.merkle import leaf_hash
    import hashlib

    with logged.sessions() as s:
        rows = list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))
    head = rows[3].chain_hash
    with logged.engine.begin() as conn:
        for row in rows[4:]:
            actor = "user:nobody" if row.seq == 5 else row.actor
            leaf = leaf_hash(entry_bytes(row.seq, row.ts, actor, row.action, row.subject_type, row.subject_id,
                                         row.decision_id, row.policy_revision, row.details))
            head = hashlib.sha256(head + leaf).digest()
            conn.execute(update(AuditEvent).where(AuditEvent.seq == row.seq)
                         .values(actor=actor, leaf_hash=leaf, chain_hash=head))
    report = check(logged)
    assert not report.ok and report.bad_range == (1, 30)


def test_verify_with_a_key_that_did_not_sign_fails(logged: Platform) -> None:
    report = verify(logged.engine, Ed25519PrivateKey.generate().public_key())
    assert not report.ok and "signature" in report.problem


def test_a_log_without_checkpoint_does_not_verify(platform: Platform) -> None:
    fill(platform, 3)
    report = check(platform)
    assert not report.ok and "no signed checkpoint" in report.problem


def test_cli_verify_names_the_first_bad_event(logged: Platform) -> None:
    runner = CliRunner()
    args = ["audit", "verify", "--home", str(logged.settings.home), "--database-url", logged.settings.db_url]
    ok = runner.invoke(cli, args)
    assert ok.exit_code == 0, ok.output
    assert "30 events" in ok.output
    tamper(logged, delete(AuditEvent).where(AuditEvent.seq == 4))
    bad = runner.invoke(cli, args)
    assert bad.exit_code == 1
    assert "first bad sequence number: 4" in bad.output


def test_cli_verify_against_an_older_checkpoint(logged: Platform) -> None:
    """`--checkpoint N` checks the log against checkpoint N only: newer events are chain-checked,
    newer checkpoints are not consulted, and a changed event before it is still named."""
    with logged.sessions() as s:
        old = s.scalars(select(Checkpoint.id)).one()
    fill(logged, 10)
    new = logged.audit.checkpoint()
    assert new.id != old and new.size == 40
    runner = CliRunner()
    base = ["audit", "verify", "--home", str(logged.settings.home), "--database-url", logged.settings.db_url]
    at_old = runner.invoke(cli, [*base, "--checkpoint", str(old)])
    assert at_old.exit_code == 0, at_old.output
    assert f"checkpoint {old} (size 30) verified; 10 newer event(s)" in at_old.output
    # the newer checkpoint's signature is replaced: the latest fails at 40, the older one still verifies
    tamper(logged, update(Checkpoint).where(Checkpoint.id == new.id)
           .values(signature=Ed25519PrivateKey.generate().sign(b"x")))
    latest = runner.invoke(cli, base)
    assert latest.exit_code == 1 and "first bad sequence number: 40" in latest.output, latest.output
    assert runner.invoke(cli, [*base, "--checkpoint", str(old)]).exit_code == 0
    # an event before the older checkpoint is changed: found at its sequence number
    tamper(logged, update(AuditEvent).where(AuditEvent.seq == 11).values(subject_id="x"))
    bad = runner.invoke(cli, [*base, "--checkpoint", str(old)])
    assert bad.exit_code == 1 and "first bad sequence number: 11" in bad.output, bad.output
    missing = runner.invoke(cli, [*base, "--checkpoint", "999"])
    assert missing.exit_code == 1 and "checkpoint 999 does not exist" in missing.output


# -- crash ----------------------------------------------------------------------------
WRITER = """
import sys
from controller.config import load_settings
from controller.platform import Platform
from controller.audit.log import Event
settings = load_settings(None, checkpoint_interval_seconds=0.05)
with Platform(settings) as p:
    p.audit.checkpoint() if p.audit.size else None
    i = 0
    while True:
        futures = [p.audit.submit(Event("user:crash", "test.event", "thing", str(i + k), {"k": k})) for k in range(50)]
        for f in futures:
            print(f.result().seq, flush=True)
        i += 50
"""


def test_kill_9_loses_no_acknowledged_event(home: Path, db_url: str) -> None:
    engine = make_engine(db_url)
    migrate(engine)
    env = {**os.environ, "BULLES_HOME": str(home), "BULLES_DATABASE_URL": db_url}
    acked: list[int] = []
    for _round in range(3):
        proc = subprocess.Popen([sys.executable, "-c", WRITER], stdout=subprocess.PIPE, env=env, text=True)
        deadline = time.monotonic() + 60
        start = len(acked)
        while len(acked) - start < 2000 and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            acked.append(int(line))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        acked.extend(int(x) for x in proc.stdout.read().split())  # printed just before the kill
        assert len(acked) - start >= 2000, "the writer did not get going"
    with engine.connect() as conn:
        stored = set(conn.execute(select(AuditEvent.seq)).scalars())
        count = conn.execute(select(func.count()).select_from(AuditEvent)).scalar()
        if engine.dialect.name == "sqlite":
            assert conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"
    assert set(acked) <= stored
    assert count == max(stored)  # no hole
    report = verify(engine, load_public_key(home / SIGNING_PUB))
    assert report.ok, report.problem
    engine.dispose()
