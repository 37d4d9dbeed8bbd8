"""The audit log for auditors: events with filters, checkpoints, and Merkle proofs."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import PlainTextResponse
from cryptography.hazmat.primitives import serialization
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from catalog.fields import INT64_MAX
from catalog.vocab import Role
from controller.api.deps import SMALL_BODY_BYTES, platform, require, session
from controller.audit.log import checkpoint_dict, event_dict, time_bound
from controller.auth import Principal
from controller.errors import ApiError, not_found
from controller.platform import Platform
from controller.store import AuditEvent, Checkpoint

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], max_body_size=SMALL_BODY_BYTES)
auditor = require(Role.auditor)
Seq = Annotated[int, Path(ge=1, le=INT64_MAX, description="Sequence number of an event")]


@router.get("/events", summary="Events, oldest first, with filters")
def events(
    actor: str | None = None,
    action: Annotated[str | None, Query(description="Exact action, or a prefix ending in '.', e.g. 'source.'")] = None,
    subject_type: str | None = None,
    subject_id: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    after_seq: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    _: Principal = Depends(auditor),
    db: Session = Depends(session),
) -> dict[str, Any]:
    query = select(AuditEvent).where(AuditEvent.seq > after_seq)
    if actor:
        query = query.where(AuditEvent.actor == actor)
    if action:
        query = query.where(AuditEvent.action.startswith(action, autoescape=True) if action.endswith(".")
                            else AuditEvent.action == action)
    if subject_type:
        query = query.where(AuditEvent.subject_type == subject_type)
    if subject_id:
        query = query.where(AuditEvent.subject_id == subject_id)
    if since:
        query = query.where(AuditEvent.ts >= time_bound(since))
    if until:
        query = query.where(AuditEvent.ts < time_bound(until))
    if since and until and until <= since:
        raise ApiError(422, "validation_error", "until: must be after 'since'", field="until")
    rows = list(db.scalars(query.order_by(AuditEvent.seq).limit(limit)))
    items = [event_dict(r) for r in rows]
    return {"items": items, "next_after_seq": rows[-1].seq if len(rows) == limit else None}


@router.get("/events/{seq}", summary="One event")
def event(seq: Seq, _: Principal = Depends(auditor), db: Session = Depends(session)) -> dict[str, Any]:
    row = db.get(AuditEvent, seq)
    if row is None:
        raise not_found("event", str(seq))
    return event_dict(row)


@router.get("/events/{seq}/proof", summary="RFC 6962 inclusion proof of an event in a checkpoint")
def proof(
    seq: Seq,
    checkpoint: Annotated[int | None, Query(ge=1, le=INT64_MAX, description="Checkpoint id; the latest by default")] = None,
    _: Principal = Depends(auditor),
    db: Session = Depends(session),
    site: Platform = Depends(platform),
) -> dict[str, Any]:
    cp = _checkpoint(db, checkpoint)
    row = db.get(AuditEvent, seq)
    if row is None:
        raise not_found("event", str(seq))
    if seq > cp.size:
        raise ApiError(409, "not_covered", f"event {seq} is newer than checkpoint {cp.id} (size {cp.size}); "
                       "ask for a newer checkpoint")
    path = site.audit.tree.inclusion_proof(seq - 1, cp.size)
    return {"seq": seq, "leaf_index": seq - 1, "leaf_hash": row.leaf_hash.hex(), "tree_size": cp.size,
            "proof": [p.hex() for p in path], "checkpoint": checkpoint_dict(cp)}


@router.get("/consistency", summary="RFC 6962 consistency proof between two tree sizes")
def consistency(
    first: Annotated[int, Query(ge=1, le=INT64_MAX)], second: Annotated[int, Query(ge=1, le=INT64_MAX)],
    _: Principal = Depends(auditor), site: Platform = Depends(platform),
) -> dict[str, Any]:
    if first > second or second > site.audit.size:
        raise ApiError(422, "validation_error", f"second: need 1 <= first <= second <= {site.audit.size}",
                       field="second")
    return {"first": first, "second": second,
            "proof": [p.hex() for p in site.audit.tree.consistency_proof(first, second)]}


@router.get("/checkpoints", summary="Signed checkpoints, newest first")
def checkpoints(limit: Annotated[int, Query(ge=1, le=1000)] = 100, _: Principal = Depends(auditor),
                db: Session = Depends(session)) -> list[dict[str, Any]]:
    rows = db.scalars(select(Checkpoint).order_by(Checkpoint.id.desc()).limit(limit))
    return [checkpoint_dict(r) for r in rows]


@router.get("/checkpoints/latest", summary="The newest signed checkpoint")
def latest(_: Principal = Depends(auditor), db: Session = Depends(session)) -> dict[str, Any]:
    return checkpoint_dict(_checkpoint(db, None))


@router.post("/checkpoints", status_code=201, summary="Sign a checkpoint of the log as it stands now")
async def create_checkpoint(caller: Principal = Depends(require(Role.auditor, Role.admin)),
                            site: Platform = Depends(platform)) -> dict[str, Any]:
    if site.signing_key is None:
        raise ApiError(409, "no_signing_key", "this site has no audit signing key")
    try:
        row = await run_in_threadpool(site.audit.checkpoint)
    except ValueError as exc:
        raise ApiError(409, "empty_log", str(exc)) from None
    return checkpoint_dict(row)


@router.get("/public-key", summary="The Ed25519 key that signs checkpoints (PEM)", response_class=PlainTextResponse)
def public_key(site: Platform = Depends(platform)) -> PlainTextResponse:
    if site.signing_key is None:
        raise ApiError(404, "no_signing_key", "this site has no audit signing key")
    pem = site.signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PlainTextResponse(pem.decode(), media_type="application/x-pem-file")


def _checkpoint(db: Session, checkpoint_id: int | None) -> Checkpoint:
    if checkpoint_id is None:
        row = db.scalars(select(Checkpoint).order_by(Checkpoint.size.desc(), Checkpoint.id.desc()).limit(1)).first()
        if row is None:
            raise ApiError(404, "no_checkpoint", "no checkpoint has been signed yet")
        return row
    row = db.get(Checkpoint, checkpoint_id)
    if row is None:
        raise not_found("checkpoint", str(checkpoint_id))
    return row


