"""The audit log writer: one thread, group commit, state change and event in one transaction.

Callers submit an event and, optionally, the state change it records (`apply`, run inside a
SAVEPOINT of the writer's transaction). The writer takes everything queued (up to
`batch_max`), assigns sequence numbers, chains hashes and commits once; each caller is
answered only after that commit, so an acknowledged event is durable, and an event exists if
and only if its state change does. The event is built and encoded inside the change's
savepoint: a change that fails (constraint, conflict), or whose event cannot be built or
encoded (`EventNotRecorded`), is rolled back to its savepoint and its caller gets the
exception; the rest of the batch goes on.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from controller.audit import checkpoint as cp
from controller.audit.canonical import canonical, entry_bytes
from controller.audit.merkle import MerkleLevels
from controller.store import AuditEvent, Checkpoint, iso, utcnow, writer_engine

log = logging.getLogger(__name__)
GENESIS = bytes(32)


@dataclass(frozen=True)
class Event:
    actor: str
    action: str
    subject_type: str
    subject_id: str
    details: Mapping[str, Any] = field(default_factory=dict)
    decision_id: str | None = None
    policy_revision: str | None = None


@dataclass(frozen=True)
class Appended:
    seq: int
    ts: str
    chain_hash: bytes
    result: Any = None


Apply = Callable[[Session], Any]
Events = Event | tuple[Event, ...]  # one change may be recorded by several events (a vote that releases)
EventOrFactory = Events | Callable[[Any], Events]


@dataclass
class _Item:
    event: EventOrFactory | None
    apply: Apply | None
    future: Future
    checkpoint: bool = False
    only_if_new: bool = False


_STOP = object()


class AuditLogClosed(RuntimeError):
    pass


class AuditLog:
    """Single writer of `audit_events`; one instance per controller process."""

    def __init__(
        self,
        engine: Engine,
        *,
        origin: str,
        signing_key: Ed25519PrivateKey | None = None,
        batch_max: int = 1000,
        checkpoint_interval: float = 0.0,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._engine = writer_engine(engine)
        self.origin = origin
        self._key = signing_key
        self.batch_max = batch_max
        self.checkpoint_interval = checkpoint_interval
        self._on_batch = on_batch
        self._queue: queue.Queue[Any] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._lock = threading.Lock()
        self.tree = MerkleLevels()
        self._size = 0
        self._head = GENESIS
        self._last_checkpoint_size = 0
        self._closers: list[Callable[[], None]] = []

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "AuditLog":
        self._load_tail()
        self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
        self._thread.start()
        return self

    def on_close(self, callback: Callable[[], None]) -> None:
        """Run `callback` when the log closes, before its last events are drained (an aggregator
        appends the counts it holds)."""
        self._closers.append(callback)

    def close(self, *, final_checkpoint: bool = True) -> None:
        """Drain what is queued, sign a last checkpoint if anything is new, stop the writer."""
        if self._closed:
            return
        for callback in self._closers:
            try:
                callback()
            except Exception:  # one failing hook must not keep the log from closing
                log.exception("audit log close hook failed")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if final_checkpoint and self._key is not None:
            self._queue.put(_Item(None, None, Future(), checkpoint=True, only_if_new=True))
        self._queue.put(_STOP)
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> "AuditLog":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    @property
    def size(self) -> int:
        return self._size

    @property
    def head(self) -> bytes:
        return self._head

    # -- appending -----------------------------------------------------------------
    def submit(self, event: EventOrFactory, apply: Apply | None = None) -> Future:
        """Queue an event (and the change it records); the future resolves once durable.

        `event` may be a function of what `apply` returned, for details known only after
        the change (a new version number, say), and may be a tuple of events when one change
        is several things to record (they get consecutive numbers, in the same transaction;
        the future carries the last one's). `apply` must return plain values.
        """
        future: Future = Future()
        if self._closed:
            raise AuditLogClosed("the audit log is closed")
        self._queue.put(_Item(event, apply, future))
        return future

    def append(self, event: EventOrFactory, apply: Apply | None = None, timeout: float | None = 60) -> Appended:
        return self.submit(event, apply).result(timeout)

    def checkpoint(self, timeout: float | None = 60) -> Checkpoint:
        """Sign the log as it stands after everything queued so far."""
        if self._key is None:
            raise RuntimeError("this audit log has no signing key")
        if self._closed:
            raise AuditLogClosed("the audit log is closed")
        future: Future = Future()
        self._queue.put(_Item(None, None, future, checkpoint=True))
        return future.result(timeout)

    # -- writer --------------------------------------------------------------------
    def _load_tail(self) -> None:
        with self._engine.connect() as conn:
            leaves = conn.execute(select(AuditEvent.leaf_hash).order_by(AuditEvent.seq)).scalars().all()
            last = conn.execute(select(AuditEvent.seq, AuditEvent.chain_hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
            cp_size = conn.execute(select(Checkpoint.size).order_by(Checkpoint.id.desc()).limit(1)).scalar()
        self.tree = MerkleLevels(leaves)
        self._size, self._head = (last[0], last[1]) if last else (0, GENESIS)
        if self._size != self.tree.size:
            raise RuntimeError(f"audit log has {self.tree.size} leaves but its last sequence number is {self._size}")
        self._last_checkpoint_size = cp_size or 0

    def _run(self) -> None:
        stop = False
        last_checkpoint = time.monotonic()
        while not stop:
            timeout = None
            if self.checkpoint_interval and self._key is not None:
                timeout = max(0.0, last_checkpoint + self.checkpoint_interval - time.monotonic())
            try:
                first = self._queue.get(timeout=timeout)
            except queue.Empty:
                first = None
            batch: list[_Item] = []
            if first is _STOP:
                stop = True
            elif first is not None:
                batch.append(first)
                while len(batch) < self.batch_max:
                    try:
                        nxt = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is _STOP:
                        stop = True
                        break
                    batch.append(nxt)
            periodic = (
                self.checkpoint_interval > 0
                and self._key is not None
                and time.monotonic() - last_checkpoint >= self.checkpoint_interval
            )
            if periodic:
                last_checkpoint = time.monotonic()
            if batch or periodic:
                self._write(batch, periodic_checkpoint=periodic)
        # Anything submitted after the stop marker is refused rather than left hanging.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Item):
                item.future.set_exception(AuditLogClosed("the audit log is closed"))

    def _write(self, batch: list[_Item], *, periodic_checkpoint: bool = False) -> None:
        """Commit one batch; whatever goes wrong is reported to its callers, never kills the writer."""
        try:
            try:
                self._write_once(batch, periodic_checkpoint)
            except IntegrityError:
                # Another process appended since we loaded the tail (a CLI beside the server):
                # catch up from the database and run the whole batch again.
                log.warning("audit log moved under us; reloading its tail and retrying")
                self._load_tail()
                self._write_once(batch, periodic_checkpoint)
        except BaseException as exc:
            self._fail(batch, exc)

    def _fail(self, batch: list[_Item], exc: BaseException) -> None:
        log.error("audit batch of %d items failed to commit: %s", len(batch), exc)
        for item in batch:
            if not item.future.done():
                item.future.set_exception(exc)

    def _write_once(self, batch: list[_Item], periodic_checkpoint: bool) -> None:
        rows: list[dict[str, Any]] = []
        wants_checkpoint = False
        acks: list[tuple[_Item, Appended | Checkpoint]] = []
        failed: list[tuple[_Item, BaseException]] = []
        seq, head = self._size, self._head
        sha256 = hashlib.sha256
        try:
            with Session(self._engine, expire_on_commit=False) as session, session.begin():
                for item in batch:
                    if item.checkpoint:
                        continue
                    result = None
                    try:
                        if item.apply is None:
                            built = _rows(item.event, None, seq + 1)
                        else:
                            # The events are built and encoded inside the change's savepoint: if
                            # any fails, all are rolled back, and the change never commits
                            # without the events that record it.
                            with session.begin_nested():
                                result = item.apply(session)
                                session.flush()
                                built = _rows(item.event, result, seq + 1)
                    except Exception as exc:  # the caller's own failure, reported to it
                        failed.append((item, exc))
                        continue
                    for row in built:
                        seq += 1
                        leaf = sha256(b"\x00" + row.pop("entry")).digest()
                        head = sha256(head + leaf).digest()
                        self.tree.append(leaf)
                        rows.append({**row, "leaf_hash": leaf, "chain_hash": head})
                    acks.append((item, Appended(seq, built[-1]["ts"], head, result)))
                if rows:
                    session.connection().execute(insert(AuditEvent.__table__), rows)
                wants_checkpoint = periodic_checkpoint and seq > self._last_checkpoint_size
                for item in batch:
                    if item.checkpoint and self._key is not None:
                        floor = self._last_checkpoint_size if item.only_if_new else 0
                        wants_checkpoint = wants_checkpoint or seq > floor
                if wants_checkpoint:
                    signed = cp.sign(self._key, self.origin, seq, self.tree.root(seq), head)
                    checkpoint_row = Checkpoint(
                        size=seq, root=signed.root, chain_head=head, origin=self.origin,
                        ts=iso(utcnow()), key_id=signed.key_id, signature=signed.signature,
                    )
                    session.add(checkpoint_row)
                    session.flush()
                    for item in batch:
                        if item.checkpoint:
                            acks.append((item, checkpoint_row))
        except BaseException:
            self.tree.truncate(self._size)
            raise
        self._size, self._head = seq, head
        if wants_checkpoint:
            self._last_checkpoint_size = seq
        if self._on_batch is not None and rows:
            self._on_batch(len(rows))
        for item, ack in acks:
            item.future.set_result(ack)
        for item, exc in failed:
            item.future.set_exception(exc)
        for item in batch:  # a checkpoint asked of an empty log, or nothing new at close
            if item.checkpoint and not item.future.done():
                item.future.set_exception(ValueError("the audit log is empty: nothing to checkpoint"))


class EventNotRecorded(RuntimeError):
    """The event of a change could not be built or encoded; the change was rolled back with it."""


# The text columns of an event and their widths in `audit_events`: checked before the row is
# written, so that one bad event fails alone instead of failing the whole group commit.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_TEXT_COLUMNS = {name: AuditEvent.__table__.c[name].type.length
                 for name in ("actor", "action", "subject_type", "subject_id", "decision_id", "policy_revision")}


def _rows(event: EventOrFactory | None, result: Any, seq: int) -> list[dict[str, Any]]:
    """The stored columns of the events of one change, numbered from `seq`, each with its entry
    bytes (`entry`) to hash; raises EventNotRecorded when one cannot be built or encoded."""
    try:
        built = event(result) if callable(event) else event
        events = built if isinstance(built, tuple) else (built,)
        if not events or not all(isinstance(e, Event) for e in events):
            raise TypeError(f"expected an Event or a tuple of them, got {type(built).__name__}")
    except Exception as exc:
        raise EventNotRecorded(f"the audit event could not be recorded ({type(exc).__name__}: {exc}); "
                               "nothing was changed") from exc
    return [_row(e, seq + i) for i, e in enumerate(events)]


def _row(built: Event, seq: int) -> dict[str, Any]:
    """The stored columns of one event, with its entry bytes (`entry`) to hash."""
    try:
        for name, width in _TEXT_COLUMNS.items():
            value = getattr(built, name)
            if value is None and name in ("decision_id", "policy_revision"):
                continue
            if not isinstance(value, str) or len(value) > width:
                raise ValueError(f"{name} must be a string of at most {width} characters")
            if _UNSAFE.search(value):
                raise ValueError(f"{name} holds a control character or a lone surrogate")
        details = canonical(dict(built.details)).decode()
        ts = iso(utcnow())
        entry = entry_bytes(seq, ts, built.actor, built.action, built.subject_type, built.subject_id,
                            built.decision_id, built.policy_revision, details)
    except Exception as exc:
        raise EventNotRecorded(f"the audit event could not be recorded ({type(exc).__name__}: {exc}); "
                               "nothing was changed") from exc
    return {"seq": seq, "ts": ts, "actor": built.actor, "action": built.action,
            "subject_type": built.subject_type, "subject_id": built.subject_id,
            "decision_id": built.decision_id, "policy_revision": built.policy_revision,
            "details": details, "entry": entry}


# -- reading -------------------------------------------------------------------------
def event_dict(row: AuditEvent) -> dict[str, Any]:
    import orjson

    return {
        "seq": row.seq,
        "ts": row.ts,
        "actor": row.actor,
        "action": row.action,
        "subject": {"type": row.subject_type, "id": row.subject_id},
        "decision_id": row.decision_id,
        "policy_revision": row.policy_revision,
        "details": orjson.loads(row.details),
        "leaf_hash": row.leaf_hash.hex(),
        "chain_hash": row.chain_hash.hex(),
    }


def checkpoint_dict(row: Checkpoint) -> dict[str, Any]:
    import base64

    return {
        "id": row.id,
        "size": row.size,
        "root": row.root.hex(),
        "chain_head": row.chain_head.hex(),
        "origin": row.origin,
        "ts": row.ts,
        "key_id": row.key_id,
        "signature": base64.b64encode(row.signature).decode(),
        "note": cp.note_body(row.origin, row.size, row.root, row.chain_head).decode(),
    }


def signed_from_row(row: Checkpoint) -> cp.SignedCheckpoint:
    return cp.SignedCheckpoint(row.origin, row.size, row.root, row.chain_head, row.key_id, row.signature)


def time_bound(value: dt.datetime) -> str:
    return iso(value if value.tzinfo else value.replace(tzinfo=dt.UTC))
