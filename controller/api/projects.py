"""Projects, access requests, reviews and grants."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from catalog.vocab import Role
from controller import access, projects
from controller.access import AccessRequestBody, ReviewBody, RevokeBody
from controller.api.deps import LIST_BODY_BYTES, SMALL_BODY_BYTES, platform, principal, require, session
from controller.auth import Principal
from controller.errors import not_found
from controller.platform import Platform
from controller.projects import ProjectChanges, ProjectSpec
from controller.store import DecisionInput, DecisionRecord
from controller.visibility import redact

router = APIRouter(prefix="/api/v1", tags=["projects and access"], max_body_size=SMALL_BODY_BYTES)


@router.post("/projects", status_code=201, max_body_size=LIST_BODY_BYTES, summary="Create a project (the creator becomes its owner)")
async def create_project(spec: ProjectSpec, caller: Principal = Depends(principal),
                         site: Platform = Depends(platform)) -> dict[str, Any]:
    return await run_in_threadpool(projects.create, site, caller, spec)


@router.get("/projects", summary="The caller's projects (all of them for admins and auditors)")
def list_projects(caller: Principal = Depends(principal), db: Session = Depends(session)) -> list[dict[str, Any]]:
    return projects.visible(db, caller)


@router.get("/projects/{project_id}", summary="One project")
def get_project(project_id: str, caller: Principal = Depends(principal), db: Session = Depends(session)) -> dict[str, Any]:
    return projects.view(db, projects.get_visible(db, caller, project_id))


@router.patch("/projects/{project_id}", max_body_size=LIST_BODY_BYTES, summary="Change a project (owners); shortening it shortens its grants")
async def change_project(project_id: str, changes: ProjectChanges, caller: Principal = Depends(principal),
                         site: Platform = Depends(platform)) -> dict[str, Any]:
    return await run_in_threadpool(projects.change, site, caller, project_id, changes)


@router.post("/projects/{project_id}/access-requests", status_code=201, max_body_size=LIST_BODY_BYTES,
             summary="Ask for a source; `bulles.access` decides at once (granted, pending review or denied)")
async def request_access(project_id: str, body: AccessRequestBody, caller: Principal = Depends(principal),
                         site: Platform = Depends(platform)) -> dict[str, Any]:
    return await run_in_threadpool(access.request_access, site, caller, project_id, body)


@router.get("/access-requests", summary="Requests of the caller's projects, or on the caller's organisation's sources")
def list_requests(project: str | None = None, status: str | None = None, source: str | None = None,
                  caller: Principal = Depends(principal), db: Session = Depends(session)) -> list[dict[str, Any]]:
    return access.list_requests(db, caller, project=project, status=status, source=source)


@router.get("/access-requests/{request_id}", summary="One access request")
def get_request(request_id: str, caller: Principal = Depends(principal), db: Session = Depends(session)) -> dict[str, Any]:
    return access.get_request(db, caller, request_id)


@router.post("/access-requests/{request_id}/review", summary="Approve or reject (the source's provider organisation)")
async def review(request_id: str, body: Annotated[ReviewBody, Body()], caller: Principal = Depends(principal),
                 site: Platform = Depends(platform)) -> dict[str, Any]:
    return await run_in_threadpool(access.review, site, caller, request_id, body)


@router.get("/grants", summary="Grants of the caller's projects, or on the caller's organisation's sources")
def list_grants(project: str | None = None, caller: Principal = Depends(principal),
                db: Session = Depends(session)) -> list[dict[str, Any]]:
    return access.list_grants(db, caller, project=project)


@router.get("/grants/{grant_id}", summary="One grant (status is 'expired' past its expiry)")
def get_grant(grant_id: str, caller: Principal = Depends(principal), db: Session = Depends(session)) -> dict[str, Any]:
    return access.grant_view(access.get_grant(db, caller, grant_id))


@router.post("/grants/{grant_id}/revoke", summary="Revoke a grant (the source's provider organisation)")
async def revoke(grant_id: str, body: Annotated[RevokeBody, Body()], caller: Principal = Depends(principal),
                 site: Platform = Depends(platform)) -> dict[str, Any]:
    return await run_in_threadpool(access.revoke, site, caller, grant_id, body)


@router.get("/decisions/{decision_id}", summary="A policy decision with its recorded input (auditors, admins)")
def decision(decision_id: str, caller: Principal = Depends(require(Role.auditor, Role.admin)),
             db: Session = Depends(session)) -> dict[str, Any]:
    """The input as the policy saw it, except the locations of the sources it embeds, shown only
    to admins and the sources' providers; `input_sha256` stays that of the recorded input, which
    an admin can check against the input shown to them."""
    row = db.get(DecisionRecord, decision_id)
    if row is None:
        raise not_found("decision", decision_id)
    recorded = db.get(DecisionInput, row.input_sha256)
    return {"id": row.id, "package": row.package, "revision": row.revision, "input_sha256": row.input_sha256,
            "input": redact(recorded.document, caller) if recorded else None, "result": redact(row.result, caller),
            "error": row.error, "created_at": row.created_at}
