"""The access workflow: a project's member asks for a source, `bulles.access` decides, the
provider reviews when asked to, a grant exists until it expires or is revoked.

The policy input is built by a pure function from what the store holds, so a decision can be
replayed from its recorded input; the decision, its input (by hash) and the state change are
committed together with their audit event.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from catalog.fields import Line, Text
from catalog.vocab import PERSONAL_SENSITIVITIES, AccessMode, Role, Sensitivity
from controller import projects, sources
from controller.audit.log import Event
from controller.auth import Principal
from controller.decisions import AccessDecision
from controller.errors import ApiError, forbidden, not_found
from controller.platform import Platform
from controller.policy import Decision
from controller.store import (
    AccessRequest,
    DecisionInput,
    DecisionRecord,
    Grant,
    Project,
    ProjectMember,
    iso,
    utcnow,
)


PENDING, GRANTED, DENIED, REJECTED = "pending_review", "granted", "denied", "rejected"
ACTIVE, REVOKED, EXPIRED = "active", "revoked", "expired"
PERSONAL_MODES = {AccessMode.raw, AccessMode.minimised, AccessMode.pseudonymised, AccessMode.generalised}


class AccessRequestBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    source: Line = Field(max_length=64)
    columns: list[Line] | None = Field(None, max_length=2000, description="All of the source's columns when absent")
    justification: Text = Field(min_length=1, max_length=10000)
    mode: AccessMode | None = Field(None, description="Let the policy choose when absent")


class ReviewBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    verdict: str = Field(pattern="^(approve|reject)$")
    comment: Text = Field("", max_length=10000)


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: Text = Field(min_length=1, max_length=10000)


def today() -> str:
    return dt.date.today().isoformat()


def policy_input(project: dict[str, Any], source: dict[str, Any], request: dict[str, Any], now: str) -> dict[str, Any]:
    """What `bulles.access` sees; pure, so that a recorded input replays the same decision."""
    return {
        "now": now,
        "project": {k: project[k] for k in ("id", "purpose", "legal_basis", "dpia_reference", "start_date",
                                            "end_date", "members")},
        "source": source,
        "request": request,
    }


def was_member(session: Session, decision_id: str | None, username: str) -> bool:
    """Whether `username` was a member of the project in the input of a recorded decision (the
    members the policy saw when the request was decided or checked)."""
    record = session.get(DecisionRecord, decision_id) if decision_id else None
    document = session.get(DecisionInput, record.input_sha256).document if record else {}
    members = (document.get("project") or {}).get("members") or []
    return any(isinstance(m, dict) and m.get("username") == username for m in members)


def _record_decision(session: Session, decision: Decision, document: dict[str, Any]) -> None:
    if session.get(DecisionInput, decision.input_sha256) is None:
        session.add(DecisionInput(sha256=decision.input_sha256, document=document))
        session.flush()
    session.add(DecisionRecord(id=decision.id, package=decision.package, revision=decision.revision,
                               input_sha256=decision.input_sha256, result=decision.result, error=decision.error,
                               created_at=iso(utcnow())))
    session.flush()  # rows refer to the decision: without relationships, flush order is ours to keep


def request_view(row: AccessRequest, grant: Grant | None = None) -> dict[str, Any]:
    return {"id": row.id, "project": row.project_id, "source": row.source_id, "publisher": row.publisher,
            "requester": row.requester, "columns": row.columns, "justification": row.justification,
            "requested_mode": row.requested_mode, "status": row.status, "mode": row.mode,
            "parameters": row.parameters, "expiry": row.expiry, "reasons": row.reasons, "reviewers": row.reviewers,
            "reviews": row.reviews, "decision_id": row.decision_id, "created_at": row.created_at,
            "decided_at": row.decided_at, "grant": grant.id if grant else None}


def grant_view(row: Grant, now: str | None = None) -> dict[str, Any]:
    status = row.status
    if status == ACTIVE and row.expiry < (now or today()):
        status = EXPIRED
    return {"id": row.id, "request": row.request_id, "project": row.project_id, "source": row.source_id,
            "publisher": row.publisher, "mode": row.mode, "columns": row.columns, "parameters": row.parameters,
            "expiry": row.expiry, "status": status, "decision_id": row.decision_id, "created_at": row.created_at,
            "revoked_at": row.revoked_at, "revoked_by": row.revoked_by, "revoke_reason": row.revoke_reason}


def _new_grant(request: AccessRequest, expiry: str) -> Grant:
    return Grant(id="g-" + uuid.uuid4().hex[:20], request_id=request.id, project_id=request.project_id,
                 source_id=request.source_id, publisher=request.publisher, mode=request.mode,
                 columns=list(request.parameters.get("columns", request.columns)), parameters=request.parameters,
                 expiry=expiry, decision_id=request.decision_id, status=ACTIVE, created_at=iso(utcnow()))


def request_access(platform: Platform, principal: Principal, project_id: str, body: AccessRequestBody) -> dict[str, Any]:
    now = today()
    with platform.sessions() as session:
        project_row = projects.get_visible(session, principal, project_id)
        if projects.role_of(session, project_id, principal.username) is None:
            raise forbidden(f"'{principal.username}' is not a member of project '{project_id}'")
        project = projects.view(session, project_row)
        source_row = sources.get(session, body.source)
        if source_row.status != sources.ACTIVE:
            raise ApiError(409, "source_retired", f"source: '{body.source}' is retired", field="source")
        source = dict(source_row.document)
    names = [c["name"] for c in source["schema"]]
    columns = list(body.columns) if body.columns is not None else names
    for index, name in enumerate(columns):
        if name not in names:
            raise ApiError(422, "validation_error", f"columns.{index}: source '{body.source}' has no column '{name}'",
                           field=f"columns.{index}")
    if not columns or len(set(columns)) != len(columns):
        raise ApiError(422, "validation_error", "columns: give distinct columns", field="columns")
    personal = Sensitivity(source["sensitivity"]) in PERSONAL_SENSITIVITIES
    if personal and body.mode in PERSONAL_MODES and not project["legal_basis"]:
        raise ApiError(422, "validation_error", f"legal_basis: project '{project_id}' has no legal basis, which "
                       f"personal data in the {body.mode} mode needs (ask for aggregated or synthetic data, or "
                       "record the project's legal basis)", field="legal_basis")
    if now > project["end_date"]:
        raise ApiError(409, "project_ended", f"project '{project_id}' ended on {project['end_date']}")
    request = {"columns": columns, "justification": body.justification,
               "mode": body.mode.value if body.mode else None, "requester": principal.username}
    document = policy_input(project, source, request, now)
    decision = platform.decide("access", document)
    result = decision.typed(AccessDecision)
    status = result.status
    request_id = "r-" + uuid.uuid4().hex[:20]

    def apply(session: Session) -> dict[str, Any]:
        _record_decision(session, decision, document)
        row = AccessRequest(
            id=request_id, project_id=project_id, source_id=body.source, publisher=source["publisher"],
            requester=principal.username, columns=columns, justification=body.justification,
            requested_mode=request["mode"], status=status, decision_id=decision.id,
            mode=result.mode.value if result.mode else None, parameters=result.parameters.model_dump(mode="json"),
            expiry=result.expiry, reasons=list(result.reasons),
            reviewers=[r.model_dump(mode="json") for r in result.reviewers], reviews=[],
            created_at=iso(utcnow()), decided_at=None if status == PENDING else iso(utcnow()))
        session.add(row)
        session.flush()
        grant = None
        if status == GRANTED:  # the model guarantees a mode and an expiry
            grant = _new_grant(row, min(row.expiry, project["end_date"]))
            session.add(grant)
            session.flush()
        return request_view(row, grant)

    def event(view: dict[str, Any]) -> Event:
        return Event(principal.actor, "access.requested", "access_request", request_id, {
            "project": project_id, "source": body.source, "status": status, "mode": view["mode"],
            "grant": view["grant"], "expiry": view["expiry"], "input_sha256": decision.input_sha256,
            "reasons": [r.split(":", 1)[0] for r in view["reasons"]], "notify": list(result.notify),
            "policy_error": decision.error}, decision_id=decision.id, policy_revision=decision.revision)

    return platform.audit.append(event, apply).result


def _required_approvals(row: AccessRequest) -> int:
    """The approvals the policy asked for (its reviewers, validated when it decided)."""
    return max(1, sum(int(r["count"]) for r in row.reviewers))


def review(platform: Platform, principal: Principal, request_id: str, body: ReviewBody) -> dict[str, Any]:
    now = today()

    def apply(session: Session) -> dict[str, Any]:
        row = session.get(AccessRequest, request_id, with_for_update=True)
        if row is None or not _may_see(session, principal, row):
            raise not_found("access request", request_id)  # strangers learn nothing: 404
        if not principal.has(Role.provider) or principal.organisation != row.publisher:
            raise forbidden(f"only providers of '{row.publisher}' review requests for its sources")
        if (principal.username == row.requester or projects.role_of(session, row.project_id, principal.username)
                or was_member(session, row.decision_id, principal.username)):
            raise ApiError(403, "member_review", f"members of project '{row.project_id}' never review its access "
                           "requests")
        if row.status != PENDING:
            raise ApiError(409, "already_decided", f"access request '{request_id}' is already {row.status}")
        if any(r["reviewer"] == principal.username for r in row.reviews):
            raise ApiError(409, "already_reviewed", f"'{principal.username}' has already reviewed this request")
        reviews = [*row.reviews, {"reviewer": principal.username, "organisation": principal.organisation,
                                  "verdict": body.verdict, "comment": body.comment, "at": iso(utcnow())}]
        row.reviews = reviews
        grant = None
        if body.verdict == "reject":
            row.status, row.decided_at = REJECTED, iso(utcnow())
        elif sum(r["verdict"] == "approve" for r in reviews) >= _required_approvals(row):
            project = session.get(Project, row.project_id)
            expiry = min(row.expiry or project.end_date, project.end_date)
            if expiry < now:
                raise ApiError(409, "expired", f"the access would already have expired ({expiry})")
            row.status, row.decided_at = GRANTED, iso(utcnow())
            grant = _new_grant(row, expiry)
            session.add(grant)
        session.flush()
        return request_view(row, grant)

    def event(view: dict[str, Any]) -> Event:
        return Event(principal.actor, "access.reviewed", "access_request", request_id, {
            "verdict": body.verdict, "status": view["status"], "grant": view["grant"], "project": view["project"],
            "source": view["source"]}, decision_id=view["decision_id"])

    return platform.audit.append(event, apply).result


def revoke(platform: Platform, principal: Principal, grant_id: str, body: RevokeBody) -> dict[str, Any]:
    def apply(session: Session) -> dict[str, Any]:
        row = session.get(Grant, grant_id, with_for_update=True)
        if row is None or not _may_see(session, principal, row):
            raise not_found("grant", grant_id)  # strangers learn nothing: 404
        if not principal.has(Role.provider) or principal.organisation != row.publisher:
            raise forbidden(f"only providers of '{row.publisher}' revoke grants on its sources")
        if row.status != ACTIVE:
            raise ApiError(409, "not_active", f"grant '{grant_id}' is already {row.status}")
        row.status, row.revoked_at, row.revoked_by, row.revoke_reason = REVOKED, iso(utcnow()), principal.username, body.reason
        session.flush()
        return grant_view(row)

    def event(view: dict[str, Any]) -> Event:
        return Event(principal.actor, "grant.revoked", "grant", grant_id, {
            "project": view["project"], "source": view["source"], "reason": body.reason},
            decision_id=view["decision_id"])

    revoked = platform.audit.append(event, apply).result
    platform.cancel_closed_exports(f"the revocation of grant {grant_id}")
    return revoked


def _visible_filter(query: Any, model: Any, principal: Principal) -> Any:
    """Members see their projects' requests and grants; providers those on their sources."""
    if principal.has(Role.admin, Role.auditor):
        return query
    mine = select(ProjectMember.project_id).where(ProjectMember.username == principal.username)
    clauses = [model.project_id.in_(mine)]
    if principal.has(Role.provider) and principal.organisation:
        clauses.append(model.publisher == principal.organisation)
    return query.where(or_(*clauses))


def _may_see(session: Session, principal: Principal, row: AccessRequest | Grant) -> bool:
    """The rule of `_visible_filter` for one row: whoever it does not show gets a 404 for it."""
    if principal.has(Role.admin, Role.auditor):
        return True
    if principal.has(Role.provider) and principal.organisation == row.publisher:
        return True
    return projects.role_of(session, row.project_id, principal.username) is not None


def list_requests(session: Session, principal: Principal, *, project: str | None = None, status: str | None = None,
                  source: str | None = None) -> list[dict[str, Any]]:
    query = _visible_filter(select(AccessRequest), AccessRequest, principal)
    for column, value in ((AccessRequest.project_id, project), (AccessRequest.status, status),
                          (AccessRequest.source_id, source)):
        if value:
            query = query.where(column == value)
    grants = {g.request_id: g for g in session.scalars(select(Grant))}
    return [request_view(r, grants.get(r.id)) for r in session.scalars(query.order_by(AccessRequest.created_at))]


def get_request(session: Session, principal: Principal, request_id: str) -> dict[str, Any]:
    query = _visible_filter(select(AccessRequest).where(AccessRequest.id == request_id), AccessRequest, principal)
    row = session.scalars(query).first()
    if row is None:
        raise not_found("access request", request_id)
    grant = session.scalars(select(Grant).where(Grant.request_id == request_id)).first()
    return request_view(row, grant)


def list_grants(session: Session, principal: Principal, *, project: str | None = None) -> list[dict[str, Any]]:
    query = _visible_filter(select(Grant), Grant, principal)
    if project:
        query = query.where(Grant.project_id == project)
    return [grant_view(g) for g in session.scalars(query.order_by(Grant.created_at))]


def get_grant(session: Session, principal: Principal, grant_id: str) -> Grant:
    row = session.scalars(_visible_filter(select(Grant).where(Grant.id == grant_id), Grant, principal)).first()
    if row is None:
        raise not_found("grant", grant_id)
    return row
