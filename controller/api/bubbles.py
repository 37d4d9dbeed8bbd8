"""Bubbles of a project: start (policy decides the profile), list, look, stop, delete, and a
link that opens the bubble's Jupyter in a browser through the gateway."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from catalog.vocab import Role
from controller import gateway, projects
from controller.api.deps import SMALL_BODY_BYTES, platform, principal, session
from controller.auth import Principal
from controller.bubbles import BubbleBody, Bubbles, describe
from controller.errors import ApiError
from controller.platform import Platform
from controller.runtimes.base import RUNNING
from controller.store import Bubble, ProjectMember

router = APIRouter(prefix="/api/v1", tags=["bubbles"], max_body_size=SMALL_BODY_BYTES)


def lifecycle(site: Platform = Depends(platform)) -> Bubbles:
    if site.bubbles is None:
        raise ApiError(503, "runtime_unavailable", f"bubbles cannot run on this site: {site.bubbles_unavailable}")
    return site.bubbles


@router.post("/bubbles", status_code=201, summary="Start a bubble for a project (the bubble policy fixes its profile)")
async def start(body: BubbleBody, caller: Principal = Depends(principal), bubbles: Bubbles = Depends(lifecycle)) -> JSONResponse:
    created = await run_in_threadpool(bubbles.create, caller, body)
    return JSONResponse(created, status_code=201)


@router.get("/bubbles", summary="Bubbles of the caller's projects (all of them for admins and auditors)")
def list_bubbles(project: str | None = None, state: str | None = None, caller: Principal = Depends(principal),
                 db: Session = Depends(session)) -> list[dict[str, Any]]:
    query = select(Bubble).order_by(Bubble.created_at)
    if not caller.has(Role.admin, Role.auditor):
        mine = select(ProjectMember.project_id).where(ProjectMember.username == caller.username)
        query = query.where(Bubble.project_id.in_(mine))
    if project is not None:
        query = query.where(Bubble.project_id == project)
    if state is not None:
        query = query.where(Bubble.state == state)
    return [describe(row) for row in db.scalars(query)]


@router.get("/bubbles/{bubble_id}", summary="One bubble, with its memory use when running")
def get_bubble(bubble_id: str, caller: Principal = Depends(principal), db: Session = Depends(session),
               bubbles: Bubbles = Depends(lifecycle)) -> dict[str, Any]:
    row = bubbles.get(db, caller, bubble_id)
    found = describe(row)
    if row.state == RUNNING:
        found["memory_bytes"] = bubbles.runtime.status(bubble_id).memory_bytes
    return found


@router.post("/bubbles/{bubble_id}/stop", summary="Stop the sandbox; the home is kept until deletion")
async def stop(bubble_id: str, caller: Principal = Depends(principal), bubbles: Bubbles = Depends(lifecycle)) -> dict[str, Any]:
    return await run_in_threadpool(bubbles.stop, caller, bubble_id)


@router.delete("/bubbles/{bubble_id}", summary="Stop and wipe; the log keeps the list and hashes of what was removed")
async def delete(bubble_id: str, caller: Principal = Depends(principal), bubbles: Bubbles = Depends(lifecycle)) -> dict[str, Any]:
    return await run_in_threadpool(bubbles.delete, caller, bubble_id)


@router.post("/bubbles/{bubble_id}/sessions", summary="A link (valid one minute, once) that opens the bubble in a browser")
def open_link(bubble_id: str, caller: Principal = Depends(principal), db: Session = Depends(session),
              site: Platform = Depends(platform), bubbles: Bubbles = Depends(lifecycle)) -> dict[str, Any]:
    row = bubbles.get(db, caller, bubble_id)
    if projects.role_of(db, row.project_id, caller.username) is None:
        raise ApiError(403, "forbidden", f"only members of project '{row.project_id}' open its bubbles")
    if row.state != RUNNING:
        raise ApiError(409, "bubble_not_running", f"bubble {bubble_id} is {row.state}, not running")
    path = gateway.ticket_url(site, caller.username, bubble_id)
    return {"url": site.settings.base_url + path, "expires_in": gateway.TICKET_SECONDS}
