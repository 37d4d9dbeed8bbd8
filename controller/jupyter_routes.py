"""What a browser may ask of a bubble's Jupyter through the gateway, and what may come back.

Data leaves a bubble only through exports; the one other channel a TRE accepts is what the
researcher's own screen shows (kernel and terminal output). So the gateway works from an
allow-list, never a list of known leaks: every route JupyterLab needs is named here with how
its answer is checked, and anything else is refused. Jupyter itself is not trusted to keep to
this: it runs as the researcher, whose code can replace its socket with a server of its own. So
JupyterLab's static files (the only large answers) are served by the gateway from the bubble
image, never from the bubble, and every answer that does come from the bubble is bounded in
size, and in shape where its shape is known: a Contents API answer may carry a notebook, a
small text file or a directory listing, never a file as base64.

Pure functions; the gateway (controller/gateway.py) applies them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

import orjson

TEXT_MAX_BYTES = 256 << 10  # "small text": a script, a log, a short table opened in the editor
CONTENTS_MAX_BYTES = 16 << 20  # a notebook with its outputs (what was on screen), as the airlock's file bound
JSON_MAX_BYTES = 2 << 20  # Jupyter's and JupyterLab's other answers (the settings list is ~150 KB)
PAGE_MAX_BYTES = 1 << 20  # the lab page (~5 KB)
THEME_MAX_BYTES = 2 << 20  # a theme's CSS, rewritten by JupyterLab's server, and its images

Kind = Literal["asset", "page", "json", "contents", "theme"]
READS = ("GET", "HEAD")
WRITES = ("POST", "PUT", "PATCH", "DELETE")


@dataclass(frozen=True)
class Route:
    """An allowed request. `asset`: a file of the image, served by the gateway from `root`
    (lab, labextensions, kernels or server, see Assets in the gateway) at `rest`; the other kinds
    are proxied, their answer bounded by `limit` and checked as its kind says."""

    kind: Kind
    limit: int = 0
    root: str | None = None
    rest: str | None = None


@dataclass(frozen=True)
class Refusal:
    reason: str  # a short code, recorded in the gateway.refused event


_ID = r"[^/]+"
_ASSETS = [
    (re.compile(r"static/lab/(.+)"), "lab"),
    (re.compile(r"lab/extensions/(.+)"), "labextensions"),
    (re.compile(r"kernelspecs/(.+)"), "kernels"),
    (re.compile(r"static/(.+)"), "server"),
]
_READ_ROUTES: list[tuple[re.Pattern[str], Route]] = [
    (re.compile(r"|lab|lab/(?!api/).*"), Route("page", PAGE_MAX_BYTES)),  # the redirect at /, lab, lab/tree/…
    (re.compile(r"api/contents(/.*)?"), Route("contents", CONTENTS_MAX_BYTES)),
    (re.compile(r"api(/(status|me|kernelspecs|kernels|sessions|terminals|config|nbconvert)(/.*)?)?"),
     Route("json", JSON_MAX_BYTES)),
    (re.compile(r"lab/api/themes/.+"), Route("theme", THEME_MAX_BYTES)),
    (re.compile(r"lab/api/(settings|workspaces|listings|translations|plugins|extensions|licenses)(/.*)?"),
     Route("json", JSON_MAX_BYTES)),
    (re.compile(r"lsp/status"), Route("json", JSON_MAX_BYTES)),
]
_WRITE_ROUTES: list[tuple[re.Pattern[str], Route]] = [
    (re.compile(r"api/contents(/.*)?"), Route("contents", CONTENTS_MAX_BYTES)),
    (re.compile(r"api/(kernels|sessions|terminals|config)(/.*)?"), Route("json", JSON_MAX_BYTES)),
    (re.compile(r"api/security/csp-report"), Route("json", JSON_MAX_BYTES)),
    (re.compile(r"lab/api/(settings|workspaces|translations)(/.*)?"), Route("json", JSON_MAX_BYTES)),
]
_CHANNELS = [re.compile(rf"api/kernels/{_ID}/channels"), re.compile(rf"terminals/websocket/{_ID}"),
             re.compile(r"api/events/subscribe")]


def _suspicious(path: str, query: str) -> Refusal | None:
    """What no route takes, whatever its path: dot or empty segments (the bubble's server might
    resolve them to a route the gateway did not check), any `download` parameter, any base64
    format."""
    parts = path.split("/")
    if any(part in (".", "..") for part in parts) or "" in parts[:-1] or "\\" in path or "\x00" in path:
        return Refusal("path")
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name == "download":
            return Refusal("download_parameter")
        if name == "format" and value.strip().lower() == "base64":
            return Refusal("base64")
    return None


def route(method: str, path: str, query: str) -> Route | Refusal:
    """How the gateway answers `method path?query` (path after /bubbles/<id>/)."""
    suspicious = _suspicious(path, query)
    if suspicious is not None:
        return suspicious
    if method in READS:
        for pattern, root in _ASSETS:
            found = pattern.fullmatch(path)
            if found is not None:
                return Route("asset", root=root, rest=found.group(1))
        table = _READ_ROUTES
    elif method in WRITES:
        table = _WRITE_ROUTES
    else:
        return Refusal("method")
    for pattern, allowed in table:
        if pattern.fullmatch(path):
            return allowed
    return Refusal("route")


def channel_allowed(path: str) -> bool:
    """Kernel channels, terminals and Jupyter's event stream: the on-screen channel."""
    return any(pattern.fullmatch(path) for pattern in _CHANNELS)


def _model_refusal(model: Any) -> str | None:
    if not isinstance(model, dict):
        return "unexpected_body"
    content = model.get("content")
    if content is None:  # metadata only (content=0, a save, a rename, an error)
        return None
    kind = model.get("type")
    if kind == "directory":
        if not isinstance(content, list) or any(not isinstance(m, dict) or m.get("content") is not None
                                                for m in content):
            return "unexpected_body"
        return None
    if kind == "notebook":
        return None if model.get("format") == "json" else "unexpected_body"
    if kind == "file":
        if model.get("format") != "text" or not isinstance(content, str):
            return "binary_file"
        return "text_too_large" if len(content.encode()) > TEXT_MAX_BYTES else None
    return "unexpected_body"


def answer_refusal(kind: Kind, status: int, content_type: str, body: bytes) -> str | None:
    """Why an answer of the bubble's Jupyter (already within its route's bound) may not reach the
    browser, or None. Errors and redirects pass (their bodies are Jupyter's messages, bounded);
    a successful answer must be of its route's type, and a Contents API one of an allowed shape."""
    if not 200 <= status < 300 or not body:
        return None
    media = content_type.split(";")[0].strip().lower()
    if kind == "page":
        return None if media == "text/html" else "unexpected_type"
    if kind in ("json", "contents") and media != "application/json":
        return "unexpected_type"
    if kind != "contents":
        return None
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "unexpected_body"
    for model in document if isinstance(document, list) else [document]:
        if isinstance(model, dict) and set(model) <= {"id", "last_modified"}:
            continue  # a checkpoint
        refused = _model_refusal(model)
        if refused is not None:
            return refused
    return None
