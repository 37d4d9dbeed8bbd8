"""The FastAPI application of one site."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.model import SourceSpec
from controller import errors
from controller import gateway
from controller.api import accounts, audit, bubbles, exports, projects, sources, system, views
from controller.metrics import MetricsMiddleware
from controller.platform import Platform


class BodyLimit:
    """Refuse bodies over `limit` bytes, declared or streamed, before anything reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith("/bubbles/"):
            # The gateway streams to the bubble: Jupyter uploads come in chunks of its own size.
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0
        refused = False

        async def counting_receive() -> Message:
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    refused = True
                    raise _TooLarge()
            return message

        try:
            await self.app(scope, counting_receive, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        import orjson

        body = orjson.dumps({"error": {"code": "payload_too_large",
                                       "message": f"request body over the limit of {self.limit} bytes"}})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await run_in_threadpool(app.state.gate.close)  # the gateway's pending counts of refusals go in the log before it closes


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
        lifespan=_lifespan,
        title="bulles",
        version="0.1.0",
        summary="Secure per-project processing bubbles for sensitive education data",
        openapi_url="/api/v1/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.platform = platform
    errors.install(app)
    for module in (system, accounts, sources, projects, views, bubbles, exports, audit):
        app.include_router(module.router)
    app.include_router(gateway.router)
    app.state.gate = gateway.Gate(platform)
    app.add_middleware(MetricsMiddleware, metrics=platform.metrics)
    app.add_middleware(BodyLimit, limit=platform.settings.max_body_bytes)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the source document's, which endpoints read by hand (JSON or YAML)."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    spec_schema = SourceSpec.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.update(spec_schema.pop("$defs", {}))
    components["SourceSpec"] = spec_schema
    for path in schema["paths"].values():
        for operation in path.values():
            media = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if media is not None and media.get("schema", {}).get("title") == "SourceSpec":
                media["schema"] = {"$ref": "#/components/schemas/SourceSpec"}
    app.openapi_schema = schema
    return schema
