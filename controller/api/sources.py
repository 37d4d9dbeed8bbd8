"""Catalog endpoints. Reading the catalog is open to all (metadata, never data); changing a
source is its provider organisation's business."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from catalog import dcat
from catalog.dcat import Publisher
from catalog.fields import Text
from catalog.model import SourceSpec
from catalog.vocab import Role, Sensitivity, Theme
from controller import accounts, sources
from controller.api.bodies import parse_document
from controller.api.deps import SMALL_BODY_BYTES, optional_principal, platform, require, session
from controller.auth import Principal
from controller.errors import ApiError, validation_error
from controller.platform import Platform

router = APIRouter(prefix="/api/v1", tags=["catalog"], max_body_size=SMALL_BODY_BYTES)
# The role is checked before the body is read: a caller who may not register gets 403 at once.
provider = require(Role.provider)

_SPEC_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"title": "SourceSpec"}},  # filled in by app._openapi
            "application/yaml": {"schema": {"type": "string", "description": "The same document in YAML"}},
        },
    }
}


# A source document of 2,000 columns with short descriptions fits; the examples are under 8 KiB.
SOURCE_BODY_BYTES = 256 * 1024


async def read_spec(request: Request) -> SourceSpec:
    """A source document from a JSON or YAML body, with errors that name the line or field.

    The body is bounded by the route's `max_body_size`; parsing and validation are CPU work and
    run off the event loop, so that a large document holds up no other request."""
    raw = await request.body()
    content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
    return await run_in_threadpool(_spec, raw, content_type)


def _spec(raw: bytes, content_type: str) -> SourceSpec:
    data = parse_document(raw, content_type)
    try:
        return SourceSpec.model_validate(data)
    except ValidationError as exc:
        raise validation_error(exc) from None


MAX_OFFSET = 10**9  # far beyond any catalog; within what every database's OFFSET takes


class SourceList(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[dict[str, Any]]


class RetireBody(BaseModel):
    reason: Text = Field(min_length=1, max_length=2000)


@router.post("/sources", status_code=201, openapi_extra=_SPEC_BODY, max_body_size=SOURCE_BODY_BYTES,
             summary="Register a source (providers)")
async def register_source(
    request: Request, caller: Principal = Depends(provider), site: Platform = Depends(platform)
) -> dict[str, Any]:
    spec = await read_spec(request)
    return await run_in_threadpool(sources.register, site, caller, spec)


@router.get("/sources", response_model=SourceList, summary="Search the catalog")
def list_sources(
    q: Annotated[str | None, Query(max_length=500, description="Full-text query")] = None,
    sensitivity: Annotated[list[Sensitivity] | None, Query()] = None,
    theme: Theme | None = None,
    publisher: Annotated[str | None, Query(max_length=64)] = None,
    status: Annotated[str, Query(pattern="^(active|retired|all)$")] = "active",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET, description="At most a billion")] = 0,
    caller: Principal | None = Depends(optional_principal),
    db: Session = Depends(session),
) -> SourceList:
    total, rows = sources.find(
        db, q=q, sensitivity=[s.value for s in sensitivity or []], theme=theme.value if theme else None,
        publisher=publisher, status=status, limit=limit, offset=offset,
    )
    return SourceList(total=total, limit=limit, offset=offset, items=[sources.row_view(r, caller) for r in rows])


@router.get("/sources/{source_id}", summary="One source")
def get_source(source_id: str, caller: Principal | None = Depends(optional_principal),
               db: Session = Depends(session)) -> dict[str, Any]:
    return sources.row_view(sources.get(db, source_id), caller)


@router.put("/sources/{source_id}", openapi_extra=_SPEC_BODY, max_body_size=SOURCE_BODY_BYTES,
            summary="Replace a source's description (providers)")
async def update_source(
    source_id: str,
    request: Request,
    if_match: Annotated[str | None, Header(max_length=40, description="Expected current version")] = None,
    caller: Principal = Depends(provider),
    site: Platform = Depends(platform),
) -> dict[str, Any]:
    spec = await read_spec(request)
    expected = None
    if if_match is not None:
        try:
            expected = int(if_match.strip('"W/ '))
        except ValueError:
            raise ApiError(400, "invalid_header", "If-Match: expected a version number", field="If-Match") from None
    return await run_in_threadpool(sources.update, site, caller, source_id, spec, expected)


@router.post("/sources/{source_id}/retire", summary="Retire a source (kept, no longer offered; providers)")
async def retire_source(
    source_id: str, body: Annotated[RetireBody, Body()], caller: Principal = Depends(provider),
    site: Platform = Depends(platform),
) -> dict[str, Any]:
    return await run_in_threadpool(sources.retire, site, caller, source_id, body.reason)



JSONLD = "application/ld+json"


def _publishers(db: Session) -> dict[str, Publisher]:
    return {o["id"]: Publisher(o["id"], o["name"], o["homepage"], o["email"]) for o in accounts.list_organisations(db)}


def _meta(row: Any) -> dict[str, Any]:
    return {"issued": dt.datetime.fromisoformat(row.created_at), "modified": dt.datetime.fromisoformat(row.updated_at),
            "status": row.status}


@router.get("/catalog", summary="The whole catalog as DCAT-AP 3 JSON-LD", response_class=JSONResponse,
            responses={200: {"content": {JSONLD: {}}}})
def catalog(db: Session = Depends(session), site: Platform = Depends(platform)) -> JSONResponse:
    settings = site.settings
    publishers = _publishers(db)
    _, rows = sources.find(db, status="all", limit=1_000_000)
    entries = [(SourceSpec.model_validate(r.document), publishers[r.publisher], _meta(r)) for r in rows]
    operator = Publisher(settings.site, settings.site_title)
    document = dcat.catalog_to_dcat(entries, base_uri=settings.base_url, title=settings.site_title,
                                    description=f"Sources offered by the bulles site '{settings.site}'",
                                    publisher=operator)
    return JSONResponse(document, media_type=JSONLD)


@router.get("/sources/{source_id}/dcat", summary="One source as DCAT-AP 3 JSON-LD", response_class=JSONResponse,
            responses={200: {"content": {JSONLD: {}}}})
def source_dcat(source_id: str, db: Session = Depends(session), site: Platform = Depends(platform)) -> JSONResponse:
    row = sources.get(db, source_id)
    meta = _meta(row)
    document = dcat.source_document(SourceSpec.model_validate(row.document), publisher=_publishers(db)[row.publisher],
                                    base_uri=site.settings.base_url, **meta)
    return JSONResponse(document, media_type=JSONLD)
