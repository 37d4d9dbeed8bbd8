"""The FastAPI application of one site."""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_plus

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from starlette.middleware.body_limit import MAX_BODY_SIZE_SCOPE_KEY
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from catalog.fields import forbidden_character
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
        send = self._in_our_format(scope, send)

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

    @staticmethod
    def _in_our_format(scope: Scope, send: Send) -> Send:
        """An endpoint's own limit (`max_body_size`) is enforced by Starlette, which answers a
        declared oversized body in plain text: the same refusal in this API's JSON, naming it."""
        replaced = False

        async def send_json(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start" and message["status"] == 413:
                kind = dict(message.get("headers") or []).get(b"content-type", b"")
                if not kind.startswith(b"application/json"):
                    replaced = True
                    limit = scope.get(MAX_BODY_SIZE_SCOPE_KEY, "its")
                    await _send_error(send, 413, "payload_too_large",
                                      f"request body over this endpoint's limit of {limit} bytes")
                    return
            if not replaced:
                await send(message)

        return send_json

    async def _refuse(self, send: Send) -> None:
        await _send_error(send, 413, "payload_too_large", f"request body over the limit of {self.limit} bytes")


class _TooLarge(Exception):
    pass


class PlainUrls:
    """Refuse a URL whose decoded path or query holds a control character (NUL, line breaks,
    bidirectional overrides) before anything routes it: no id, name or filter of this API has
    one, and such characters would otherwise reach the database (PostgreSQL text cannot hold
    NUL) or the audit log through every endpoint that takes an id."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            query = unquote_plus(scope.get("query_string", b"").decode("latin-1"), errors="replace")
            found = forbidden_character(scope["path"]) or forbidden_character(query)
            if found is not None:
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await _send_error(send, 400, "invalid_url", f"the URL holds the control character {found}")
                return
        await self.app(scope, receive, send)


async def _send_error(send: Send, status: int, code: str, message: str) -> None:
    body = orjson.dumps({"error": {"code": code, "message": message}})
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def create_app(platform: Platform) -> FastAPI:
    app = FastAPI(
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
    app.add_middleware(PlainUrls)
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
