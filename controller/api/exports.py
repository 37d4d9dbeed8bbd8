"""The airlock: export requests from a bubble's outbox, their checks, reviews and signed releases."""

from __future__ import annotations

import mimetypes
from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from controller.api.deps import LIST_BODY_BYTES, SMALL_BODY_BYTES, platform, principal
from controller.auth import Principal
from controller.exports import ExportBody, Exports, ReasonBody, ResubmitBody, VoteBody
from controller.platform import Platform

router = APIRouter(prefix="/api/v1", tags=["exports"], max_body_size=SMALL_BODY_BYTES)


def airlock(site: Platform = Depends(platform)) -> Exports:
    return site.exports


@router.post("/exports", status_code=202, max_body_size=LIST_BODY_BYTES, summary="Ask to export files or folders of a bubble's outbox "
             "(copied to quarantine at once, then checked)")
async def request_export(body: ExportBody, caller: Principal = Depends(principal),
                         exports: Exports = Depends(airlock)) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(exports.request, caller, body), status_code=202)


@router.get("/exports", summary="Export requests the caller may see (members: their projects'; reviewers: those "
            "in review or reviewed)")
def list_exports(project: str | None = None, state: str | None = None, caller: Principal = Depends(principal),
                 exports: Exports = Depends(airlock)) -> list[dict[str, Any]]:
    return exports.list(caller, project=project, state=state)


@router.get("/exports/{request_id}", summary="One export request: files, findings, decision, votes (hidden "
            "from other reviewers until the required number is in), history")
def get_export(request_id: str, caller: Principal = Depends(principal),
               exports: Exports = Depends(airlock)) -> dict[str, Any]:
    return exports.get(caller, request_id)


@router.post("/exports/{request_id}/votes", summary="Review: approve, ask for changes or refuse, with a comment")
async def vote(request_id: str, body: VoteBody, caller: Principal = Depends(principal),
               exports: Exports = Depends(airlock)) -> dict[str, Any]:
    return await run_in_threadpool(exports.vote, caller, request_id, body)


@router.post("/exports/{request_id}/resubmit", status_code=202, max_body_size=LIST_BODY_BYTES, summary="After changes were asked: take the files "
             "again from the outbox for a new round of checks and review")
async def resubmit(request_id: str, body: ResubmitBody, caller: Principal = Depends(principal),
                   exports: Exports = Depends(airlock)) -> JSONResponse:
    return JSONResponse(await run_in_threadpool(exports.resubmit, caller, request_id, body), status_code=202)


@router.post("/exports/{request_id}/withdraw", summary="The requester withdraws a request not yet decided")
async def withdraw(request_id: str, caller: Principal = Depends(principal),
                   exports: Exports = Depends(airlock)) -> dict[str, Any]:
    return await run_in_threadpool(exports.withdraw, caller, request_id)


@router.post("/exports/{request_id}/revoke", summary="A reviewer revokes a release, with a reason")
async def revoke(request_id: str, body: ReasonBody, caller: Principal = Depends(principal),
                 exports: Exports = Depends(airlock)) -> dict[str, Any]:
    return await run_in_threadpool(exports.revoke, caller, request_id, body)


@router.get("/exports/{request_id}/manifest", summary="The signed release manifest")
def release_manifest(request_id: str, caller: Principal = Depends(principal),
                     exports: Exports = Depends(airlock)) -> dict[str, Any]:
    return exports.release_manifest(caller, request_id)


@router.get("/exports/{request_id}/files/{path:path}", summary="A file of the request: for its project once "
            "released, for its reviewers while in review")
async def file(request_id: str, path: str, caller: Principal = Depends(principal),
               exports: Exports = Depends(airlock)) -> Response:
    data = await run_in_threadpool(exports.file, caller, request_id, path)
    kind = mimetypes.guess_type(path)[0] or "application/octet-stream"
    name = path.rsplit("/", 1)[-1].replace('"', "")
    return Response(data, media_type=kind, headers={"content-disposition": f'attachment; filename="{name}"',
                                                    "x-content-type-options": "nosniff"})
