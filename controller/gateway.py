"""The gateway: the only way into a bubble. `/bubbles/<id>/…` is proxied, HTTP and WebSocket,
to the bubble's Jupyter after these checks on every request: who the caller is (a bearer
token, or the session cookie a one-time ticket set), that they are an enabled member of the
bubble's project, and, for a browser, that a request changing anything comes from this site's
own pages (Origin and Jupyter's XSRF token). Anyone else gets 404, as if the bubble did not
exist. Then the request must be one the browser may make (controller/jupyter_routes.py): data
leaves only through exports, so routes that hand out files are refused, and every answer of
the bubble is bounded and checked before it is passed on.

The caller's own credentials never reach Jupyter: the gateway strips them and presents the
bubble's Jupyter token instead, which no page or answer carries to the browser. Refusals and
denials are audit events, at most one per caller and bubble every minute, each carrying how
many it stands for, so that a loop of them cannot flood the log nor hide in it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import jwt
import orjson
import websockets
from websockets.asyncio.client import unix_connect
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.staticfiles import StaticFiles

from controller import projects
from controller.audit.aggregate import Aggregator
from controller.audit.log import Event
from controller.errors import ApiError, not_found
from controller.home import master_secret
from controller.jupyter_routes import WRITES, Refusal, Route, answer_refusal, channel_allowed, route
from controller.runtimes.base import RUNNING
from controller.store import Bubble, UsedTicket, User, iso, utcnow

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)

COOKIE = "bulles-session"
XSRF_COOKIE, XSRF_HEADER = "_xsrf", "x-xsrftoken"  # Jupyter Server's names, which JupyterLab sends
TICKET_SECONDS = 60
SESSION_HOURS = 8
ATTEMPTS_WINDOW_SECONDS = 60.0
RECHECK_SECONDS = 30.0  # how often an open channel's caller is admitted again
FORM_MAX_BYTES = 4096
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "authorization", "cookie"}
NOT_FORWARDED = HOP_BY_HOP | {"origin", "accept-encoding"}  # the gateway checks Origin; answers are read whole
NOT_RETURNED = HOP_BY_HOP | {"content-length", "content-encoding", "content-disposition", "set-cookie"}
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


# ---------------------------------------------------------------------------- tickets, sessions

def session_key(secret: bytes) -> bytes:
    return hmac.new(secret, b"bulles/gateway-session", hashlib.sha256).digest()


def issue(secret: bytes, username: str, bubble_id: str, purpose: str, seconds: float) -> str:
    now = int(time.time())
    return jwt.encode({"sub": username, "bubble": bubble_id, "purpose": purpose, "jti": uuid.uuid4().hex,
                       "iat": now, "exp": now + int(seconds)}, session_key(secret), algorithm="HS256")


def read(secret: bytes, value: str, bubble_id: str, purpose: str) -> dict[str, Any] | None:
    """The claims of a ticket or cookie (`sub` is the username), if it is valid for this bubble."""
    try:
        claims = jwt.decode(value, session_key(secret), algorithms=["HS256"],
                            options={"require": ["exp", "sub", "jti"]})
    except jwt.PyJWTError:
        return None
    if claims.get("bubble") != bubble_id or claims.get("purpose") != purpose:
        return None
    return claims


def ticket_url(platform: Any, username: str, bubble_id: str, seconds: float = TICKET_SECONDS) -> str:
    """A link that logs `username` into the bubble's Jupyter, once (membership is checked again on
    use). The ticket is in the fragment, which browsers never send: it appears in no access log,
    no proxy's log and no Referer; the page there posts it back."""
    secret = master_secret(platform.settings.home)
    return f"/bubbles/{bubble_id}/open#ticket={issue(secret, username, bubble_id, 'ticket', seconds)}"


def without_session_cookie(cookie_header: str) -> str:
    parts = [p.strip() for p in cookie_header.split(";") if p.strip()]
    return "; ".join(p for p in parts if not p.startswith(COOKIE + "="))


class TicketUsed(Exception):
    pass


def consume_ticket(session: Session, ticket_id: str, expires_at: str) -> None:
    """Remember a used ticket in the state database (so that every controller process of the
    site, and the next one after a restart, refuses it again) until it would have expired;
    those past their expiry are forgotten."""
    session.execute(delete(UsedTicket).where(UsedTicket.expires_at < iso(utcnow())))
    if session.get(UsedTicket, ticket_id) is not None:
        raise TicketUsed(ticket_id)
    session.add(UsedTicket(id=ticket_id, expires_at=expires_at))
    session.flush()  # a second process inserting the same ticket at once fails here (primary key)


OPEN_SCRIPT = (
    "const ticket = new URLSearchParams(location.hash.slice(1)).get('ticket');"
    "history.replaceState(null, '', location.pathname);"
    "const form = document.getElementById('open');"
    "if (ticket) { form.ticket.value = ticket; form.submit(); }"
    "else { document.getElementById('why').textContent = 'This link holds no ticket: ask for a new one.'; }"
)
OPEN_PAGE = ("<!doctype html><html lang='en'><meta charset='utf-8'><title>bulles</title>"
             "<form id='open' method='post'><input type='hidden' name='ticket'></form>"
             "<p id='why'><noscript>Opening a bubble needs JavaScript.</noscript></p>"
             f"<script>{OPEN_SCRIPT}</script></html>")
OPEN_PAGE_HEADERS = {
    "content-security-policy": "default-src 'none'; form-action 'self'; script-src "
                               f"'sha256-{base64.b64encode(hashlib.sha256(OPEN_SCRIPT.encode()).digest()).decode()}'",
    "cache-control": "no-store", "referrer-policy": "no-referrer",
}


# ---------------------------------------------------------------------------- browsers

def same_origin(origin: str | None, host: str | None, site_url: str) -> bool:
    """Whether a browser's request comes from this site's own pages: its Origin (which page
    script cannot set) is the site's public origin, or that of the Host it was sent to, as
    Jupyter Server checks. A missing Origin is refused: browsers send one with every request
    that changes something and every WebSocket."""
    if not origin:
        return False
    origin = origin.strip().lower().rstrip("/")
    site = urlsplit(site_url)
    if origin == f"{site.scheme}://{site.netloc}".lower():
        return True
    found = urlsplit(origin)
    return found.scheme in ("http", "https") and host is not None and found.netloc == host.strip().lower()


def xsrf_matches(cookie: str | None, header: str | None) -> bool:
    """Jupyter's XSRF check (double submit): the header repeats the `_xsrf` cookie, which another
    site's page can neither read nor set. JupyterLab sends the cookie's value as it is."""
    return bool(cookie) and bool(header) and hmac.compare_digest(cookie.encode(), header.encode())


def browser_refusal(method: str, headers: Any, cookies: dict[str, str], site_url: str) -> Refusal | None:
    """For a caller authenticated by the session cookie (a browser; a bearer token is not sent
    by browsers on their own): what changes state must come from this site, with the XSRF token."""
    if method not in WRITES:
        return None
    if not same_origin(headers.get("origin"), headers.get("host"), site_url):
        return Refusal("cross_origin")
    if not xsrf_matches(cookies.get(XSRF_COOKIE), headers.get(XSRF_HEADER)):
        return Refusal("xsrf")
    return None


# ---------------------------------------------------------------------------- the audit trail

# ---------------------------------------------------------------------------- the gate

@dataclass(frozen=True)
class Admitted:
    username: str
    socket: str
    browser: bool  # came with the session cookie, not a bearer token: Origin and XSRF apply


class Assets:
    """JupyterLab's static files, served by the gateway from the bubble image (the bubbles'
    Python environment, as the controller sees it), never from the bubble: they are the only
    large answers, and the bubble's server cannot be trusted to send only them."""

    def __init__(self, env: Path) -> None:
        share = env / "share" / "jupyter"
        server = sorted(env.glob("lib/python3*/site-packages/jupyter_server/static"))
        roots = {"lab": share / "lab" / "static", "labextensions": share / "labextensions",
                 "kernels": share / "kernels", "server": server[0] if server else env / "missing"}
        self._files = {name: StaticFiles(directory=root, check_dir=False) for name, root in roots.items()}

    async def serve(self, found: Route, scope: Any) -> Response:
        return await self._files[found.root or ""].get_response(found.rest or "", scope)


class Gate:
    """Authentication, membership and the audit trail, then where the bubble's Jupyter is."""

    def __init__(self, platform: Any) -> None:
        self.platform = platform
        self.secret = master_secret(platform.settings.home)
        self.site_url = platform.settings.base_url
        self.assets = Assets(platform.settings.bubble_env.resolve())
        self.recheck_seconds = RECHECK_SECONDS
        self._clients: dict[str, tuple[str, httpx.AsyncClient]] = {}
        # Anyone can provoke a denial or a refusal: counted per caller and bubble, not logged one by one.
        self.attempts = Aggregator(platform.audit, window_seconds=ATTEMPTS_WINDOW_SECONDS)

    def caller(self, headers: Any, cookies: dict[str, str], bubble_id: str) -> tuple[str | None, bool]:
        """(username or None, whether by the session cookie)."""
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            try:
                return self.platform.authenticate(authorization[7:].strip()).username, False
            except ApiError:
                return None, False
        if COOKIE in cookies:
            claims = read(self.secret, cookies[COOKIE], bubble_id, "session")
            return (str(claims["sub"]) if claims else None), True
        return None, False

    def admit(self, headers: Any, cookies: dict[str, str], bubble_id: str, path: str) -> Admitted:
        """Every check of a proxied request, in one call made off the event loop: a bearer token,
        the membership and the user's state are database reads, which would otherwise hold up
        every other connection the gateway is carrying (kernel channels included)."""
        username, browser = self.caller(headers, cookies, bubble_id)
        return Admitted(username or "", self.check(username, bubble_id, path), browser)

    def check(self, username: str | None, bubble_id: str, path: str) -> str:
        """The bubble's socket, or a 404 (recorded): unknown caller, a user disabled since the
        session opened, not (or no longer) a member; a 409 when the bubble is not running."""
        with self.platform.sessions() as session:
            row = session.get(Bubble, bubble_id)
            user = session.get(User, username) if username is not None else None
            member = (row is not None and username is not None and not (user is not None and user.disabled)
                      and projects.role_of(session, row.project_id, username) is not None)
            state = row.state if row is not None else None
        if not member:
            raise self.deny(username, bubble_id, path)
        bubbles = self.platform.bubbles
        endpoint = bubbles.endpoint(bubble_id) if bubbles is not None and state == RUNNING else None
        if endpoint is None:
            raise ApiError(409, "bubble_not_running", f"bubble {bubble_id} is {state}, not running")
        return endpoint.address

    def deny(self, username: str | None, bubble_id: str, path: str, reason: str | None = None) -> ApiError:
        """The 404 of a caller who may not enter, recorded."""
        details = {"path": path[:200], **({"reason": reason} if reason else {})}
        self.record("gateway.denied", username, bubble_id, details)
        return not_found("bubble", bubble_id)

    def record(self, action: str, username: str | None, bubble_id: str, details: dict[str, Any]) -> None:
        """A denial or refusal, counted per caller and bubble (per caller alone when anonymous,
        so that probing many ids makes no more events)."""
        actor = f"user:{username}" if username else "anonymous"
        key = (action, actor, bubble_id if username else "")
        self.attempts.record(Event(actor, action, "bubble", bubble_id[:64], details), key=key)

    def refuse(self, username: str, bubble_id: str, method: str, path: str, reason: str) -> ApiError:
        """The answer to a request the gateway does not pass on, recorded (the path, cut short;
        never a byte of what was asked for)."""
        self.record("gateway.refused", username, bubble_id, {"method": method, "path": path[:200], "reason": reason})
        if reason in ("cross_origin", "xsrf"):
            return ApiError(403, "cross_site_refused", "a request that changes something must come from this "
                            "site's own pages, with Jupyter's XSRF token (the X-XSRFToken header repeating the "
                            "_xsrf cookie)", reason=reason)
        return ApiError(403, "download_refused", "the gateway does not pass this request on: data leaves a bubble "
                        "only through an export request (POST /api/v1/exports)", reason=reason)

    def use_ticket(self, claims: dict[str, Any], bubble_id: str, session_id: str) -> None:
        """Use a ticket: its id is remembered and the session recorded, in one transaction."""
        expires = iso(dt.datetime.fromtimestamp(claims["exp"], dt.timezone.utc))
        try:
            self.platform.audit.append(
                Event(f"user:{claims['sub']}", "bubble.session.opened", "bubble", bubble_id,
                      {"via": "ticket", "session": session_id}),
                lambda session: consume_ticket(session, str(claims["jti"]), expires))
        except (TicketUsed, IntegrityError):
            raise self.deny(str(claims["sub"]), bubble_id, "open", "ticket_used") from None

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

    def close(self) -> None:
        self.attempts.close()


def _gate(request: Request | WebSocket) -> Gate:
    return request.app.state.gate


def _upstream_headers(headers: Any, token: str) -> dict[str, str]:
    forwarded = {k: v for k, v in headers.items() if k.lower() not in NOT_FORWARDED}
    cookies = without_session_cookie(headers.get("cookie", ""))
    if cookies:
        forwarded["cookie"] = cookies
    forwarded["host"] = headers.get("host", "bulle")
    forwarded["authorization"] = f"token {token}"
    return forwarded


def _returned_headers(response: Response, upstream: httpx.Headers) -> None:
    """Jupyter's headers, less those that would let an answer be saved as a file, let another
    site read it, or set a cookie other than Jupyter's XSRF token."""
    for name, value in upstream.multi_items():
        lower = name.lower()
        if lower == "set-cookie" and value.startswith(XSRF_COOKIE + "="):
            response.headers.append(name, value)
        elif lower not in NOT_RETURNED and not lower.startswith("access-control-"):
            response.headers.append(name, value)
    response.headers["x-content-type-options"] = "nosniff"


async def _bounded(answer: httpx.Response, limit: int) -> bytes | None:
    """The whole answer, or None past `limit` bytes (what is read beyond it is dropped)."""
    chunks, size = [], 0
    async for chunk in answer.aiter_bytes():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------- routes

@router.get("/bubbles/{bubble_id}/open")
async def open_page(bubble_id: str) -> Response:
    """The page a ticket link opens: it reads the ticket from the fragment and posts it here."""
    return HTMLResponse(OPEN_PAGE, headers=OPEN_PAGE_HEADERS)


@router.post("/bubbles/{bubble_id}/open")
async def open_session(bubble_id: str, request: Request) -> Response:
    """A ticket (from POST /api/v1/bubbles/{id}/sessions, valid a minute, once) becomes a session
    cookie scoped to the bubble, and the browser goes on to JupyterLab."""
    gate = _gate(request)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX_BYTES:
            raise ApiError(413, "payload_too_large", f"a ticket form is at most {FORM_MAX_BYTES} bytes")
    ticket = dict(parse_qsl(body.decode("latin-1"))).get("ticket", "")
    claims = read(gate.secret, ticket, bubble_id, "ticket")
    username = str(claims["sub"]) if claims else None
    if username is not None and not same_origin(request.headers.get("origin"), request.headers.get("host"),
                                                gate.site_url):
        raise await run_in_threadpool(gate.refuse, username, bubble_id, "POST", "open", "cross_origin")
    await run_in_threadpool(gate.check, username, bubble_id, "open")
    session_id = uuid.uuid4().hex
    await run_in_threadpool(gate.use_ticket, claims, bubble_id, session_id)
    response = RedirectResponse(f"/bubbles/{bubble_id}/lab", status_code=303)
    response.set_cookie(COOKIE, issue(gate.secret, username, bubble_id, "session", SESSION_HOURS * 3600),
                        max_age=SESSION_HOURS * 3600, path=f"/bubbles/{bubble_id}/", httponly=True, samesite="strict",
                        secure=request.url.scheme == "https" or gate.site_url.startswith("https:"))
    return response


@router.api_route("/bubbles/{bubble_id}/{path:path}", methods=METHODS)
async def proxy(bubble_id: str, path: str, request: Request) -> Response:
    gate = _gate(request)
    admitted = await run_in_threadpool(gate.admit, request.headers, request.cookies, bubble_id, path)
    method, query = request.method, request.url.query
    refusal = browser_refusal(method, request.headers, request.cookies, gate.site_url) if admitted.browser else None
    allowed = refusal or route(method, path, query)
    if isinstance(allowed, Refusal):
        raise await run_in_threadpool(gate.refuse, admitted.username, bubble_id, method, path, allowed.reason)
    if allowed.kind == "asset":
        return await gate.assets.serve(allowed, request.scope)
    client = gate.client(bubble_id, admitted.socket)
    url = quote(f"/bubbles/{bubble_id}/{path}") + (f"?{query}" if query else "")
    upstream = client.build_request(method, url, headers=_upstream_headers(request.headers,
                                    request.app.state.platform.bubbles.token(bubble_id)), content=request.stream())
    try:
        answer = await client.send(upstream, stream=True)
        try:
            body = await _bounded(answer, allowed.limit)
        finally:
            await answer.aclose()
    except httpx.TransportError as exc:
        raise ApiError(502, "bubble_unreachable", f"bubble {bubble_id} did not answer: {type(exc).__name__}") from None
    reason = "too_large" if body is None else answer_refusal(allowed.kind, answer.status_code,
                                                             answer.headers.get("content-type", ""), body)
    if reason is not None:
        raise await run_in_threadpool(gate.refuse, admitted.username, bubble_id, method, path, reason)
    if method == "POST" and answer.status_code == 201 and path.rstrip("/") in ("api/kernels", "api/sessions"):
        try:
            document = orjson.loads(body)
            kernel = (document.get("kernel") or {}).get("id") if "kernel" in document else document.get("id")
        except (orjson.JSONDecodeError, AttributeError):
            kernel = None
        await run_in_threadpool(gate.audit, admitted.username, "bubble.kernel.started", bubble_id,
                                {"kernel": kernel, "via": path.rstrip("/")})
    response = Response(body if method != "HEAD" else b"", status_code=answer.status_code)
    _returned_headers(response, answer.headers)
    return response


@router.websocket("/bubbles/{bubble_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, bubble_id: str, path: str) -> None:
    """Kernel channels, terminals and Jupyter's events, the on-screen channel: frames pass both
    ways untouched; opening and closing a channel are audit events. The caller is admitted again
    every `recheck_seconds`: a channel ends with the session, the membership or the user."""
    gate = _gate(websocket)
    headers, cookies = websocket.headers, websocket.cookies
    try:
        admitted = await run_in_threadpool(gate.admit, headers, cookies, bubble_id, path)
    except ApiError:
        await websocket.close(code=1008)
        return
    reason = None if channel_allowed(path) else "route"
    foreign = admitted.browser and not same_origin(headers.get("origin"), headers.get("host"), gate.site_url)
    if reason is None and foreign:
        reason = "cross_origin"
    if reason is not None:
        await run_in_threadpool(gate.refuse, admitted.username, bubble_id, "WEBSOCKET", path, reason)
        await websocket.close(code=1008)
        return
    token = websocket.app.state.platform.bubbles.token(bubble_id)
    query = websocket.url.query
    uri = f"ws://{headers.get('host', 'bulle')}{quote(f'/bubbles/{bubble_id}/{path}')}{'?' + query if query else ''}"
    subprotocols = websocket.scope.get("subprotocols") or None
    try:
        upstream = await unix_connect(
            admitted.socket, uri, additional_headers={"Authorization": f"token {token}"}, subprotocols=subprotocols,
            max_size=None, ping_interval=None, open_timeout=10)
    except (OSError, websockets.exceptions.WebSocketException, asyncio.TimeoutError) as exc:
        log.warning("bubble %s: websocket upstream failed: %s", bubble_id, exc)
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    opened = time.monotonic()
    channel = {"path": path[:200]}
    await run_in_threadpool(gate.audit, admitted.username, "bubble.channel.opened", bubble_id, channel)

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

    async def still_admitted() -> None:
        while True:
            await asyncio.sleep(gate.recheck_seconds)
            try:
                await run_in_threadpool(gate.admit, headers, cookies, bubble_id, path)
            except ApiError:
                return

    tasks = [asyncio.ensure_future(to_bubble()), asyncio.ensure_future(to_client()),
             asyncio.ensure_future(still_admitted())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await upstream.close()
        with contextlib.suppress(Exception):  # the client may have gone already
            await websocket.close(code=1008 if tasks[2].done() and not tasks[2].cancelled() else 1000)
        await run_in_threadpool(gate.audit, admitted.username, "bubble.channel.closed", bubble_id,
                                {**channel, "seconds": round(time.monotonic() - opened, 3)})
