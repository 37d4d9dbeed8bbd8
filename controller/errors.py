"""API errors: a stable machine code, a message for people, and the faulty field when known.

Client mistakes are 4xx with this JSON body; only our own bugs may produce a 500.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY

from catalog.vocab import Role
from connectors.base import ConnectorError
from controller.store import SourceRow
from controller.visibility import sees_location

log = logging.getLogger(__name__)


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.field, self.extra = status, code, message, field, extra

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            error["field"] = self.field
        error.update(self.extra)
        return {"error": error}


def not_found(kind: str, ident: str) -> ApiError:
    return ApiError(404, "not_found", f"{kind} '{ident}' does not exist")


def forbidden(message: str) -> ApiError:
    return ApiError(403, "forbidden", message)


def _location(loc: tuple[Any, ...]) -> str:
    """The dotted field path; a request's part ("body", "query", ...) leads FastAPI's paths only,
    so a field that happens to be named "path" keeps its name."""
    if loc and loc[0] in ("body", "query", "path", "header", "cookie"):
        loc = loc[1:]
    return ".".join(str(p) for p in loc) or "body"


def validation_problems(exc: ValidationError | RequestValidationError) -> list[dict[str, str]]:
    """One entry per problem, with the dotted path of the field (cross-field rules included)."""
    from catalog.model import FieldError

    problems = []
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        loc = tuple(err.get("loc", ()))
        # pydantic adds the union member's tag to the path (connector.file.path): drop it.
        loc = tuple(p for p in loc if p not in ("s3", "postgresql", "http", "file") or loc.index(p) == 0)
        if isinstance(cause, FieldError):
            prefix = _location(loc)
            field = cause.field if prefix == "body" else f"{prefix}.{cause.field}"
            problems.append({"field": field, "message": cause.message})
            continue
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        problems.append({"field": _location(loc), "message": message})
    return problems


def validation_error(exc: ValidationError | RequestValidationError) -> ApiError:
    problems = validation_problems(exc)
    first = problems[0] if problems else {"field": "body", "message": "invalid"}
    return ApiError(422, "validation_error", f"{first['field']}: {first['message']}", field=first["field"], problems=problems)


# The warehouse, not the caller, is at fault for most warehouse errors: 502 says so.
WAREHOUSE_STATUS = {"unknown_column": 422, "invalid_location": 422, "schema_mismatch": 409, "empty": 409,
                    "location_refused": 409}


def warehouse_error_body(exc: ConnectorError, *, full: bool) -> dict[str, Any]:
    """A warehouse error as the API answers it: the detail for those who may see where the
    source lives, the public text (with the incident id to quote) for everyone else."""
    error: dict[str, Any] = {"code": f"warehouse_{exc.code}", "message": exc.full if full else str(exc),
                             "source": exc.source, "incident": exc.incident}
    if exc.field is not None:
        error["field"] = exc.field
    return {"error": error}


def _sees_detail(request: Request, source_id: str) -> bool:
    """Whether the caller may read a warehouse error's detail: an admin, or a provider of the
    source's organisation (whose publisher is looked up only for providers)."""
    caller = getattr(request.state, "principal", None)
    if caller is None or not caller.has(Role.admin, Role.provider):
        return False
    with request.app.state.platform.sessions() as session:
        row = session.get(SourceRow, source_id)
    return sees_location(caller, row.publisher if row is not None else None)


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        err = validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(ValidationError)
    async def _model_validation(_request: Request, exc: ValidationError) -> JSONResponse:
        err = validation_error(exc)
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthenticated", 403: "forbidden",
                 413: "payload_too_large"}
        code = codes.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        limit = request.scope.get(MAX_BODY_SIZE_SCOPE_KEY)
        if exc.status_code == 413 and limit is not None:
            message = f"request body over this endpoint's limit of {limit} bytes"
        return JSONResponse({"error": {"code": code, "message": message}}, status_code=exc.status_code)

    @app.exception_handler(ConnectorError)
    async def _warehouse(request: Request, exc: ConnectorError) -> JSONResponse:
        full = await run_in_threadpool(_sees_detail, request, exc.source)
        body = warehouse_error_body(exc, full=full)
        return JSONResponse(body, status_code=WAREHOUSE_STATUS.get(exc.code, 502))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error", exc_info=exc)
        body = {"error": {"code": "internal_error", "message": "internal error; it has been logged"}}
        return JSONResponse(body, status_code=500)
