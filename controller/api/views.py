"""Views: a grant materialised for its project's members; admins may also build views by hand
(an operator's decision, recorded as such)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from catalog.fields import Line
from catalog.model import SourceSpec
from catalog.vocab import AccessMode, Role
from controller import access, projects, sources, views
from controller.api.deps import LIST_BODY_BYTES, platform, principal, require, session
from controller.auth import Principal
from controller.errors import ApiError, forbidden, not_found
from controller.platform import Platform
from controller.visibility import sees_location

router = APIRouter(prefix="/api/v1", tags=["views"], max_body_size=LIST_BODY_BYTES)


class ViewBody(BaseModel):
    """Either a grant (members of its project; the grant fixes source, mode, columns, k and
    threshold) or, for admins, everything spelt out."""

    model_config = ConfigDict(extra="forbid")

    grant: Line | None = Field(None, max_length=64)
    source: Line | None = Field(None, max_length=64)
    mode: AccessMode | None = None
    project: Line | None = Field(None, min_length=1, max_length=128)
    columns: list[Line] | None = Field(None, max_length=2000)
    parameters: dict[Line, Any] = Field({}, max_length=10, description="What the mode takes (see the views section)")
    decision_id: Line | None = Field(None, max_length=64)


def _request(body: ViewBody, caller: Principal, db: Session) -> views.ViewRequest:
    if body.grant is not None:
        extra = sorted(k for k in ("source", "mode", "project", "columns", "decision_id") if getattr(body, k) is not None)
        if extra:
            raise ApiError(422, "validation_error", f"{extra[0]}: fixed by the grant", field=extra[0])
        grant = access.get_grant(db, caller, body.grant)
        if not (caller.has(Role.admin) or projects.role_of(db, grant.project_id, caller.username)):
            raise not_found("grant", body.grant)
        state = access.grant_view(grant)["status"]
        if state != access.ACTIVE:
            raise ApiError(409, f"grant_{state}", f"grant '{body.grant}' is {state}")
        return views.request_for_grant(grant, body.parameters)
    if not caller.has(Role.admin):
        raise forbidden("without a grant, only admins build views")
    missing = [k for k in ("source", "mode", "project") if getattr(body, k) is None]
    if missing:
        raise ApiError(422, "validation_error", f"{missing[0]}: required without a grant", field=missing[0])
    return views.ViewRequest(source=body.source, mode=body.mode, project=body.project, columns=body.columns,
                             parameters=body.parameters, decision_id=body.decision_id)


@router.post("/views", summary="Materialise a view (201 when built, 200 when it already existed)")
async def build_view(body: ViewBody, caller: Principal = Depends(principal), db: Session = Depends(session),
                     site: Platform = Depends(platform)) -> JSONResponse:
    request = _request(body, caller, db)
    manifest, created = await run_in_threadpool(views.materialise, site, caller.actor, request)
    return JSONResponse(manifest, status_code=201 if created else 200)


@router.get("/views/{view_id}", summary="A view's manifest")
def get_view(view_id: str, _: Principal = Depends(require(Role.admin)),
             site: Platform = Depends(platform)) -> dict[str, Any]:
    manifest = views.read_manifest(site.settings.home, view_id) if view_id.isalnum() else None
    if manifest is None:
        raise not_found("view", view_id)
    return manifest


@router.get("/sources/{source_id}/probe", summary="Reach the warehouse: schema found and row estimate")
async def probe(source_id: str,
                scan: Annotated[bool, Query(description="Also read every row, as a view would")] = False,
                caller: Principal = Depends(principal), db: Any = Depends(session),
                site: Platform = Depends(platform)) -> dict[str, Any]:
    row = sources.get(db, source_id)
    if not sees_location(caller, row.publisher):
        raise forbidden("only providers of the source's organisation and admins may probe its warehouse")
    spec = SourceSpec.model_validate(row.document)
    return await run_in_threadpool(views.probe, site, caller.actor, spec, scan=scan)
