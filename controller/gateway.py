"""The gateway: the only way into a bubble. `/bubbles/<id>/…` is proxied, HTTP and WebSocket,
to the bubble's Jupyter after two checks on every request: who the caller is (a bearer token,
or the session cookie a one-time ticket set) and that they are a member of the bubble's
project. Anyone else gets 404, as if the bubble did not exist, and the attempt is logged.

The caller's own credentials never reach Jupyter: the gateway strips them and presents the
bubble's Jupyter token instead, which the researcher never sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from typing import Any

import httpx
import jwt
import orjson
import websockets
from websockets.asyncio.client import unix_connect
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import RedirectResponse, Response, StreamingResponse
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from controller import projects
from controller.audit.aggregate import Aggregator
from controller.audit.log import Event
from controller.errors import ApiError, not_found
from controller.home import master_secret
from controller.runtimes.base import RUNNING
from controller.store import Bubble

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

COOKIE = "bulles-session"
TICKET_SECONDS = 120
SESSION_HOURS = 8
DENIALS_WINDOW_SECONDS = 60.0
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "authorization", "cookie"}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


def session_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"bulles/gateway-session", hashlib.sha256).digest()


def issue(secret: bytes, username: str, bubble_id: str, purpose: str, seconds: float) -> str:
    now = int(time.time())
    return jwt.encode({"sub": username, "bubble": bubble_id, "purpose": purpose, "iat": now,
                       "exp": now + int(seconds)}, session_key(secret), algorithm="HS256")


def read(secret: bytes, value: str, bubble_id: str, purpose: str) -> str | None:
    """The username a ticket or cookie was issued to, if it is valid for this bubble."""
    try:
        claims = jwt.decode(value, session_key(secret), algorithms=["HS256"], options={"require": ["exp", "sub"]})
    except jwt.PyJWTError:
        return None
    if claims.get("bubble") != bubble_id or claims.get("purpose") != purpose:
        return None
    return str(claims["sub"])


def without_session_cookie(cookie_header: str) -> str:
    parts = [p.strip() for p in cookie_header.split(";") if p.strip()]
    return "; ".join(p for p in parts if not p.startswith(COOKIE + "="))


class Gate:
    """Authentication and membership, then where the bubble's Jupyter is."""

    def __init__(self, platform: Any) -> None:
        self.platform = platform
        self.secret = master_secret(platform.settings.home)
        self._clients: dict[str, tuple[str, httpx.AsyncClient]] = {}
        # Anyone can provoke a denial: counted per caller and bubble rather than logged one by one.
        self.denials = Aggregator(platform.audit, window_seconds=DENIALS_WINDOW_SECONDS)

    def caller(self, headers: Any, cookies: dict[str, str], bubble_id: str) -> str | None:
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            try:
                return self.platform.authenticate(authorization[7:].strip()).username
            except ApiError:
                return None
        if COOKIE in cookies:
            return read(self.secret, cookies[COOKIE], bubble_id, "session")
        return None

    def admit(self, headers: Any, cookies: dict[str, str], bubble_id: str, path: str) -> tuple[str, str]:
        """Both checks of a proxied request, in one call made off the event loop: a bearer token
        and the membership are database reads, which would otherwise hold up every other
        connection the gateway is carrying (kernel channels included)."""
        return self.check(self.caller(headers, cookies, bubble_id), bubble_id, path)

    def check(self, username: str | None, bubble_id: str, path: str) -> tuple[str, str]:
        """(username, socket) or a 404 (logged): unknown caller, not a member, not running."""
        with self.platform.sessions() as session:
            row = session.get(Bubble, bubble_id)
            member = (row is not None and username is not None
                      and projects.role_of(session, row.project_id, username) is not None)
            state = row.state if row is not None else None
        if not member:
            actor = f"user:{username}" if username else "anonymous"
            # Ids of no bubble share one key: inventing ids does not make more events.
            self.denials.record(Event(actor, "gateway.denied", "bubble", bubble_id[:64], {"path": path[:200]}),
                                key=(actor, bubble_id if row is not None else None))
            raise not_found("bubble", bubble_id)
        bubbles = self.platform.bubbles
        endpoint = bubbles.endpoint(bubble_id) if bubbles is not None and state == RUNNING else None
        if endpoint is None:
            raise ApiError(409, "bubble_not_running", f"bubble {bubble_id} is {state}, not running")
        return username, endpoint.address

    def client(self, bubble_id: str, socket: str) -> httpx.AsyncClient:
        known = self._clients.get(bubble_id)
        if known is None or known[0] != socket:
            client = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=socket), base_url="http://bulle",
                                       timeout=httpx.Timeout(300, connect=10))
            self._clients[bubble_id] = (socket, client)
            return client
        return known[1]

    def audit(self, username: str, action: str, bubble_id: str, details: dict[str, Any]) -> None:
        self.platform.audit.append(Event(f"user:{username}", action, "bubble", bubble_id, details))


def _gate(request: Request | WebSocket) -> Gate:
    return request.app.state.gate


def _upstream_headers(headers: Any, token: str) -> dict[str, str]:
    forwarded = {k: v for k, v in headers.items() if k.lower() not in HOP_BY_HOP}
    cookies = without_session_cookie(headers.get("cookie", ""))
    if cookies:
        forwarded["cookie"] = cookies
    forwarded["host"] = headers.get("host", "bulle")
    forwarded["authorization"] = f"token {token}"
    return forwarded


@router.get("/bubbles/{bubble_id}/open")
async def open_session(bubble_id: str, ticket: str, request: Request) -> Response:
    """A ticket (from POST /api/v1/bubbles/{id}/sessions, valid minutes) becomes a session cookie
    scoped to the bubble, and the browser goes on to JupyterLab."""
    gate = _gate(request)
    username = read(gate.secret, ticket, bubble_id, "ticket")
    await run_in_threadpool(gate.check, username, bubble_id, "open")
    await run_in_threadpool(gate.audit, username, "bubble.session.opened", bubble_id, {"via": "ticket"})
    response = RedirectResponse(f"/bubbles/{bubble_id}/lab", status_code=303)
    response.set_cookie(COOKIE, issue(gate.secret, username, bubble_id, "session", SESSION_HOURS * 3600),
                        max_age=SESSION_HOURS * 3600, path=f"/bubbles/{bubble_id}/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https")
    return response


@router.api_route("/bubbles/{bubble_id}/{path:path}", methods=METHODS)
async def proxy(bubble_id: str, path: str, request: Request) -> Response:
    gate = _gate(request)
    username, socket = await run_in_threadpool(gate.admit, request.headers, request.cookies, bubble_id, path)
    client = gate.client(bubble_id, socket)
    url = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    upstream = client.build_request(request.method, url, headers=_upstream_headers(request.headers,
                                    request.app.state.platform.bubbles.token(bubble_id)), content=request.stream())
    try:
        answer = await client.send(upstream, stream=True)
    except httpx.TransportError as exc:
        raise ApiError(502, "bubble_unreachable", f"bubble {bubble_id} did not answer: {type(exc).__name__}") from None
    headers = {k: v for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP}
    if request.method == "POST" and answer.status_code == 201 and path.rstrip("/") in ("api/kernels", "api/sessions"):
        body = await answer.aread()
        await answer.aclose()
        try:
            document = orjson.loads(body)
            kernel = (document.get("kernel") or {}).get("id") if "kernel" in document else document.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            kernel = None
        await run_in_threadpool(gate.audit, username, "bubble.kernel.started", bubble_id,
                                {"kernel": kernel, "via": path.rstrip("/")})
        headers.pop("content-length", None)
        return Response(body, status_code=answer.status_code, headers=headers)
    return StreamingResponse(answer.aiter_raw(), status_code=answer.status_code, headers=headers,
                             background=BackgroundTask(answer.aclose))


@router.websocket("/bubbles/{bubble_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, bubble_id: str, path: str) -> None:
    """Kernel channels (and terminals): frames pass both ways untouched; opening and closing a
    channel are audit events."""
    gate = _gate(websocket)
    try:
        username, socket = await run_in_threadpool(gate.admit, websocket.headers, websocket.cookies, bubble_id, path)
    except ApiError:
        await websocket.close(code=1008)
        return
    token = websocket.app.state.platform.bubbles.token(bubble_id)
    query = websocket.url.query
    uri = f"ws://{websocket.headers.get('host', 'bulle')}{websocket.url.path}{'?' + query if query else ''}"
    subprotocols = websocket.scope.get("subprotocols") or None
    origin = websocket.headers.get("origin")
    try:
        upstream = await unix_connect(
            socket, uri, additional_headers={"Authorization": f"token {token}"}, subprotocols=subprotocols,
            origin=origin, max_size=None, ping_interval=None, open_timeout=10)
    except (OSError, websockets.exceptions.WebSocketException, asyncio.TimeoutError) as exc:
        log.warning("bubble %s: websocket upstream failed: %s", bubble_id, exc)
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    opened = time.monotonic()
    channel = {"path": path[:200]}
    await run_in_threadpool(gate.audit, username, "bubble.channel.opened", bubble_id, channel)

    async def to_bubble() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes") if message.get("bytes") is not None else message.get("text")
            if data is not None:
                await upstream.send(data)

    async def to_client() -> None:
        async for data in upstream:
            if isinstance(data, bytes):
                await websocket.send_bytes(data)
            else:
                await websocket.send_text(data)

    tasks = [asyncio.ensure_future(to_bubble()), asyncio.ensure_future(to_client())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(Exception):  # the client may have gone already
            await websocket.close()
        await run_in_threadpool(gate.audit, username, "bubble.channel.closed", bubble_id,
                                {**channel, "seconds": round(time.monotonic() - opened, 3)})


def ticket_url(platform: Any, username: str, bubble_id: str, seconds: float = TICKET_SECONDS) -> str:
    """A link that logs `username` into the bubble's Jupyter (membership is checked again on use)."""
    secret = master_secret(platform.settings.home)
    return f"/bubbles/{bubble_id}/open?ticket={issue(secret, username, bubble_id, 'ticket', seconds)}"
