"""Liveness, readiness and metrics: what an orchestrator and a Prometheus scrape need."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials
from sqlalchemy import text

from catalog.vocab import Role
from controller.api.deps import bearer, platform
from controller.auth import hash_token
from controller.errors import ApiError, forbidden
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


@router.get("/metrics", summary="Prometheus metrics (admins, or the site's metrics token)", response_class=Response)
def metrics(site: Platform = Depends(platform),
            credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Response:
    """Request counts by route and status, audit throughput: operational, not public. A scraper
    sends the token whose SHA-256 is `metrics_token_sha256` (it opens nothing else); an admin's
    token also works."""
    if credentials is None:
        raise ApiError(401, "unauthenticated", "this endpoint needs a bearer token")
    expected = site.settings.metrics_token_sha256
    if not (expected and hmac.compare_digest(hash_token(credentials.credentials), expected)):
        if not site.authenticate(credentials.credentials).has(Role.admin):
            raise forbidden("metrics are read with the site's metrics token or an admin's")
    return Response(site.metrics.render(), media_type="text/plain; version=0.0.4")
