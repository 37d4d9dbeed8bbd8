"""Offline verification of the audit log against signed checkpoints.

Trusts nothing stored: every entry is rebuilt from its columns and rehashed, the chain and the
Merkle tree are recomputed, and checkpoints are checked with a public key given by the caller
(never one read from the database). The report names the first bad sequence number where the
damage can be located to one event (for a checkpoint whose signature fails, the last sequence
number it covers, which is its size); where an attacker rewrote the chain consistently, only
the signed checkpoints can tell, and the report gives the range between the last good and
the first bad checkpoint.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from controller.audit import checkpoint as cp
from controller.audit.canonical import entry_bytes
from controller.audit.log import GENESIS, signed_from_row
from controller.audit.merkle import MerkleLevels
from controller.store import AuditEvent, Checkpoint


@dataclass
class Report:
    ok: bool = True
    events: int = 0
    checkpoint_id: int | None = None
    checkpoint_size: int | None = None
    first_bad_seq: int | None = None
    bad_range: tuple[int, int] | None = None
    problem: str | None = None
    uncovered: int = 0
    notes: list[str] = field(default_factory=list)

    def fail(self, problem: str, seq: int | None = None, bad_range: tuple[int, int] | None = None) -> "Report":
        if self.ok:  # keep the first problem
            self.ok, self.problem, self.first_bad_seq, self.bad_range = False, problem, seq, bad_range
        return self

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


_COLUMNS = (
    AuditEvent.seq, AuditEvent.ts, AuditEvent.actor, AuditEvent.action, AuditEvent.subject_type,
    AuditEvent.subject_id, AuditEvent.decision_id, AuditEvent.policy_revision, AuditEvent.details,
    AuditEvent.leaf_hash, AuditEvent.chain_hash,
)


def verify(engine: Engine, public_key: Ed25519PublicKey, checkpoint_id: int | None = None) -> Report:
    report = Report()
    with Session(engine) as session:
        checkpoints = list(session.scalars(select(Checkpoint).order_by(Checkpoint.size, Checkpoint.id)))
        conn = session.connection()
        if checkpoint_id is not None:
            target = next((c for c in checkpoints if c.id == checkpoint_id), None)
            if target is None:
                return report.fail(f"checkpoint {checkpoint_id} does not exist")
        else:
            target = max(checkpoints, key=lambda c: (c.size, c.id), default=None)
        if target is not None:
            report.checkpoint_id, report.checkpoint_size = target.id, target.size
            checkpoints = [c for c in checkpoints if c.size <= target.size]
        wanted_kid = cp.key_id(public_key)
        forged = {c.id for c in checkpoints
                  if c.key_id != wanted_kid or not cp.signature_valid(public_key, signed_from_row(c))}
        by_size: dict[int, list[Checkpoint]] = {}
        for c in checkpoints:
            by_size.setdefault(c.size, []).append(c)
        result = conn.execution_options(stream_results=True, yield_per=20_000).execute(
            select(*_COLUMNS).order_by(AuditEvent.seq)
        )
        _walk(result, by_size, forged, report)
    if report.ok and target is None and report.events:
        report.fail("no signed checkpoint covers the log")
    if report.ok and target is not None:
        report.uncovered = report.events - target.size
    return report


def _walk(rows: Any, by_size: dict[int, list[Checkpoint]], forged: set[int], report: Report) -> None:
    """Rehash the events in order; a checkpoint of size n is checked at event n, the last one it
    covers, so a checkpoint whose signature fails is reported at that sequence number (after any
    bad event before it)."""
    sha256 = hashlib.sha256
    loads = orjson.loads
    tree = MerkleLevels()
    append_leaf = tree.append
    head = GENESIS
    expected = 1
    last_good_size = 0
    for seq, ts, actor, action, stype, sid, decision, revision, details, leaf_stored, chain_stored in rows:
        if seq != expected:
            if seq > expected:
                report.fail(f"event {expected} is missing (the next stored event is {seq})", expected)
            else:
                report.fail(f"event {seq} is out of order", seq)
            return
        try:
            parsed = loads(details)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            report.fail(f"event {seq}: details are not a JSON object", seq)
            return
        leaf = sha256(b"\x00" + entry_bytes(seq, ts, actor, action, stype, sid, decision, revision, details)).digest()
        head = sha256(head + leaf).digest()
        if leaf != leaf_stored or head != chain_stored:
            report.fail(f"event {seq}: content does not match its stored hash", seq)
            return
        append_leaf(leaf)
        for c in by_size.get(seq, ()):
            if c.id in forged:
                report.fail(f"checkpoint {c.id} (size {c.size}, covering events 1 to {seq}): "
                            "signature does not verify with the given key", seq)
                return
            if head != c.chain_head or tree.root(seq) != c.root:
                report.fail(
                    f"checkpoint {c.id} (size {c.size}) does not match the log: events between "
                    f"{last_good_size + 1} and {seq} were rewritten",
                    bad_range=(last_good_size + 1, seq),
                )
                return
            last_good_size = seq
        expected += 1
    report.events = expected - 1
    beyond = sorted((c.size, c.id) for size, cs in by_size.items() if size > report.events for c in cs)
    genuine = [size for size, cid in beyond if cid not in forged]
    if genuine:
        report.fail(
            f"log truncated: a signed checkpoint covers {genuine[-1]} events but only {report.events} are stored",
            report.events + 1,
        )
    elif beyond:  # only checkpoints that nobody signed claim more events than stored
        size, cid = beyond[0]
        report.fail(f"checkpoint {cid} (size {size}, covering events 1 to {size}): "
                    "signature does not verify with the given key", size)
