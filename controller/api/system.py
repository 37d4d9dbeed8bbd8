"""Liveness, readiness and metrics: what an orchestrator and a Prometheus scrape need."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from controller.api.deps import platform
from controller.platform import Platform

router = APIRouter(tags=["system"])


@router.get("/healthz", summary="The process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="State store reachable and audit writer running")
def readyz(site: Platform = Depends(platform)) -> Response:
    checks = {"database": "ok", "audit_log": "ok"}
    try:
        with site.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # report, do not crash: readiness is a question
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if not site.audit.running:
        checks["audit_log"] = "writer stopped"
    ready = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ready, "checks": checks}, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(site: Platform = Depends(platform)) -> Response:
    return Response(site.metrics.render(), media_type="text/plain; version=0.0.4")
