"""Registering, updating and retiring sources: the rules, the state change and its audit event.

The API, the CLI and the demo seeding all come through here, so a source can only enter the
catalog validated, owned, and recorded in the audit log in the same transaction.
"""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from catalog import search
from catalog.model import SourceSpec
from catalog.vocab import Role
from connectors import ownership
from controller.audit.canonical import canonical
from controller.audit.log import Event
from controller.auth import Principal
from controller.errors import ApiError, forbidden, not_found
from controller.platform import Platform
from controller.store import Organisation, SourceRow, iso, utcnow
from controller.visibility import redact_source

ACTIVE, RETIRED = "active", "retired"


def document_digest(document: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(document)).hexdigest()


def _require_owner(principal: Principal, publisher: str) -> None:
    if not principal.has(Role.provider):
        raise forbidden("only providers register or change sources")
    if principal.organisation != publisher:
        raise forbidden(f"source belongs to organisation '{publisher}', not to '{principal.organisation}'")


def _check_location(platform: Platform, spec: SourceSpec) -> None:
    """A source names only a warehouse location of its own organisation (connectors.ownership);
    the 422 names the field and speaks only of the organisation's own declarations."""
    refused = ownership.refusal(spec.connector, spec.publisher, platform.settings)
    if refused is not None:
        raise ApiError(422, "validation_error", f"{refused.field}: {refused.message}", field=refused.field)


def _fill(row: SourceRow, spec: SourceSpec, publisher_name: str) -> None:
    row.publisher = spec.publisher
    row.sensitivity = spec.sensitivity.value
    row.title = spec.title
    row.themes = "|" + "|".join(spec.themes) + "|"
    row.search_text = search.search_text(spec, publisher_name)
    row.document = spec.document()


def _publisher_name(session: Session, publisher: str) -> str:
    org = session.get(Organisation, publisher)
    if org is None:
        raise ApiError(422, "validation_error", f"publisher: organisation '{publisher}' does not exist", field="publisher")
    return org.name


def register(platform: Platform, principal: Principal, spec: SourceSpec) -> dict[str, Any]:
    _require_owner(principal, spec.publisher)
    _check_location(platform, spec)

    def apply(session: Session) -> dict[str, Any]:
        name = _publisher_name(session, spec.publisher)
        if session.get(SourceRow, spec.id) is not None:
            raise ApiError(409, "source_exists", f"id: a source '{spec.id}' is already registered", field="id")
        now = iso(utcnow())
        row = SourceRow(id=spec.id, status=ACTIVE, version=1, created_at=now, updated_at=now, retired_at=None)
        _fill(row, spec, name)
        session.add(row)
        return row_view(row, principal)

    appended = platform.audit.append(
        lambda view: Event(
            principal.actor, "source.registered", "source", spec.id,
            {"publisher": spec.publisher, "sensitivity": spec.sensitivity.value, "version": 1,
             "document_sha256": document_digest(view["spec"])},
        ),
        apply,
    )
    return appended.result


def update(
    platform: Platform, principal: Principal, source_id: str, spec: SourceSpec, expected_version: int | None = None
) -> dict[str, Any]:
    if spec.id != source_id:
        raise ApiError(422, "validation_error", f"id: body says '{spec.id}' but the path says '{source_id}'", field="id")
    _require_owner(principal, spec.publisher)
    _check_location(platform, spec)

    def apply(session: Session) -> dict[str, Any]:
        row = session.get(SourceRow, source_id, with_for_update=True)
        if row is None:
            raise not_found("source", source_id)
        if row.publisher != spec.publisher:
            raise ApiError(422, "validation_error", "publisher: a source cannot change organisation", field="publisher")
        if row.status == RETIRED:
            raise ApiError(409, "source_retired", f"source '{source_id}' is retired and cannot change")
        if expected_version is not None and expected_version != row.version:
            raise ApiError(
                412, "version_mismatch",
                f"source '{source_id}' is at version {row.version}, not {expected_version}", current=row.version,
            )
        _fill(row, spec, _publisher_name(session, spec.publisher))
        row.version += 1
        row.updated_at = iso(utcnow())
        return row_view(row, principal)

    appended = platform.audit.append(
        lambda view: Event(
            principal.actor, "source.updated", "source", source_id,
            {"publisher": spec.publisher, "sensitivity": spec.sensitivity.value, "version": view["version"],
             "document_sha256": document_digest(view["spec"])},
        ),
        apply,
    )
    return appended.result


def retire(platform: Platform, principal: Principal, source_id: str, reason: str) -> dict[str, Any]:
    def apply(session: Session) -> dict[str, Any]:
        row = session.get(SourceRow, source_id, with_for_update=True)
        if row is None:
            raise not_found("source", source_id)
        _require_owner(principal, row.publisher)
        if row.status == RETIRED:
            raise ApiError(409, "source_retired", f"source '{source_id}' is already retired")
        row.status = RETIRED
        row.retired_at = row.updated_at = iso(utcnow())
        return row_view(row, principal)

    appended = platform.audit.append(
        lambda view: Event(principal.actor, "source.retired", "source", source_id,
                           {"publisher": view["spec"]["publisher"], "reason": reason, "version": view["version"]}),
        apply,
    )
    platform.cancel_closed_exports(f"the retirement of source {source_id}")
    return appended.result


def row_view(row: SourceRow, principal: Principal | None) -> dict[str, Any]:
    """What a caller sees. Where the data lives is its organisation's providers' and admins'
    business only (controller.visibility)."""
    spec = redact_source(row.document, principal)
    return {
        "id": row.id,
        "status": row.status,
        "version": row.version,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "retired_at": row.retired_at,
        "spec": spec,
    }


def get(session: Session, source_id: str) -> SourceRow:
    row = session.get(SourceRow, source_id)
    if row is None:
        raise not_found("source", source_id)
    return row


def find(
    session: Session,
    *,
    q: str | None = None,
    sensitivity: list[str] | None = None,
    theme: str | None = None,
    publisher: str | None = None,
    status: str = ACTIVE,
    limit: int = 50,
    offset: int = 0,
) -> tuple[int, list[SourceRow]]:
    query = select(SourceRow)
    if status != "all":
        query = query.where(SourceRow.status == status)
    if sensitivity:
        query = query.where(SourceRow.sensitivity.in_(sensitivity))
    if theme:
        query = query.where(SourceRow.themes.like(search.like_pattern(f"|{theme}|"), escape="\\"))
    if publisher:
        query = query.where(SourceRow.publisher == publisher)
    words = search.terms(q or "")
    for word in words:
        query = query.where(SourceRow.search_text.like(search.like_pattern(word), escape="\\"))
    if not words:
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(session.scalars(query.order_by(SourceRow.title, SourceRow.id).limit(limit).offset(offset)))
        return total, rows
    matches = list(session.scalars(query))
    matches.sort(key=lambda r: (-search.rank(r.search_text, words), r.title))
    return len(matches), matches[offset : offset + limit]


def organisation_names(session: Session) -> dict[str, str]:
    return dict(session.execute(select(Organisation.id, Organisation.name)).tuples())

