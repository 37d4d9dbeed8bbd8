"""Views for the controller: materialise a source in an access mode for a project.

Until grants exist (policies issue), only admins may build views: a view of personal data must
come from a decision, and the only decision-maker today is the operator.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from catalog.model import SourceSpec
from catalog.vocab import AccessMode, Role
from connectors.registry import open_connector
from controller import sources, views
from controller.api.deps import platform, principal, require, session
from controller.auth import Principal
from controller.errors import forbidden, not_found
from controller.platform import Platform

router = APIRouter(prefix="/api/v1", tags=["views"])


class ViewBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str
    mode: AccessMode
    project: str = Field(min_length=1, max_length=128)
    columns: list[str] | None = None
    parameters: dict[str, Any] = {}
    grant: str | None = None
    decision_id: str | None = None


@router.post("/views", summary="Materialise a view (201 when built, 200 when it already existed)")
async def build_view(body: ViewBody, caller: Principal = Depends(require(Role.admin)),
                     site: Platform = Depends(platform)) -> JSONResponse:
    request = views.ViewRequest(**body.model_dump())
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
async def probe(source_id: str, caller: Principal = Depends(principal), db: Any = Depends(session),
                site: Platform = Depends(platform)) -> dict[str, Any]:
    row = sources.get(db, source_id)
    if not (caller.has(Role.admin) or caller.organisation == row.publisher):
        raise forbidden("only the source's organisation and admins may probe its warehouse")
    spec = SourceSpec.model_validate(row.document)
    found = await run_in_threadpool(lambda: open_connector(spec, site.settings).probe())
    declared = {c.name: c.type.value for c in spec.schema_}
    return {"source": source_id, "rows": found.rows, "exact": found.exact,
            "columns": [{"name": f.name, "type": str(f.type), "declared": declared.get(f.name)} for f in found.schema],
            "missing": [name for name in declared if name not in found.schema.names]}
