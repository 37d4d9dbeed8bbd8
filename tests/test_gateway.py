"""The gateway from the attacker's side: files of the home asked for through Jupyter's routes,
a flood of refusals, another site's page driving the researcher's browser, tickets replayed
or read from the logs, sessions outliving their user, and the researcher's own code going
after the Jupyter server's secrets or putting a server of its own in its place.

The routes and checks are pure functions, tested as such; the rest runs a real Jupyter Server
in a real bubble behind a real uvicorn (the fixtures and helpers of test_bubbles.py).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import time
import uuid
from pathlib import Path

import httpx
import jwt
import pytest
import websockets.sync.client
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import open_bubble_link
from controller import gateway
from controller.gateway import same_origin, xsrf_matches
from controller.jupyter_routes import TEXT_MAX_BYTES, Refusal, Route, answer_refusal, channel_allowed, route
from controller.runtimes.sandbox import environment, page_config
from controller.store import UsedTicket
from test_bubbles import PUPILS, Kernel, Served, db_url, events, grant_pupils, project, served, start  # noqa: F401

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")
EVIL = "http://evil.example"
DOWNLOADS = ["@jupyterlab/docmanager-extension:download", "@jupyterlab/docmanager-extension:open-browser-tab",
             "@jupyterlab/filebrowser-extension:download", "@jupyterlab/filebrowser-extension:open-browser-tab",
             "@jupyterlab/notebook-extension:export", "@jupyterlab/imageviewer-extension:plugin",
             "@jupyterlab/pdf-extension:factory", "@jupyterlab/audio-extension:plugin",
             "@jupyterlab/video-extension:plugin"]


# ---------------------------------------------------------------------------- pure parts

def test_the_browser_may_ask_for_what_jupyterlab_needs_and_nothing_that_hands_out_files() -> None:
    json_route, contents = Route("json", 2 << 20), Route("contents", 16 << 20)
    expected = {
        ("GET", "", ""): Route("page", 1 << 20),
        ("GET", "lab", ""): Route("page", 1 << 20),
        ("GET", "lab/tree/analyse.ipynb", ""): Route("page", 1 << 20),
        ("GET", "static/lab/main.js", "v=1"): Route("asset", root="lab", rest="main.js"),
        ("GET", "lab/extensions/jupyterlab_pygments/static/remoteEntry.js", ""):
            Route("asset", root="labextensions", rest="jupyterlab_pygments/static/remoteEntry.js"),
        ("GET", "kernelspecs/python3/logo-64x64.png", ""): Route("asset", root="kernels", rest="python3/logo-64x64.png"),
        ("GET", "static/favicons/favicon.ico", ""): Route("asset", root="server", rest="favicons/favicon.ico"),
        ("GET", "lab/api/settings", ""): json_route,
        ("GET", "lab/api/themes/@jupyterlab/theme-light-extension/index.css", ""): Route("theme", 2 << 20),
        ("GET", "api/kernels", ""): json_route,
        ("GET", "api/contents/analyse.ipynb", "content=1"): contents,
        ("HEAD", "api/contents/", ""): contents,
        ("POST", "api/kernels", ""): json_route,
        ("PUT", "api/contents/resultat.csv", ""): contents,
        ("PATCH", "api/sessions/s1", ""): json_route,
        ("DELETE", "api/kernels/k1", ""): json_route,
        # what hands out files, or could be made to
        ("GET", "files/data.parquet", ""): Refusal("route"),
        ("GET", "view/rapport.html", ""): Refusal("route"),
        ("GET", "nbconvert/script/analyse.ipynb", ""): Refusal("route"),
        ("GET", "nbconvert/html/analyse.ipynb", "download=true"): Refusal("download_parameter"),
        ("GET", "lab/api/licenses", "format=csv&download=1"): Refusal("download_parameter"),
        ("GET", "api/contents/data.parquet", "type=file&format=base64&content=1"): Refusal("base64"),
        ("GET", "api/contents/data.parquet", "format=text&format=BASE64"): Refusal("base64"),
        ("GET", "lab/../files/data.parquet", ""): Refusal("path"),
        ("GET", "api/contents/../../files/x", ""): Refusal("path"),
        ("GET", "/files/data.parquet", ""): Refusal("path"),
        ("GET", "lab/api/unknown", ""): Refusal("route"),
        ("GET", "api/spec.yaml", ""): Refusal("route"),
        ("POST", "api/shutdown", ""): Refusal("route"),  # the API stops bubbles, not the researcher's page
        ("POST", "nbconvert/html", ""): Refusal("route"),
        ("OPTIONS", "api/kernels", ""): Refusal("method"),
    }
    assert {key: route(*key) for key in expected} == expected
    assert [channel_allowed(p) for p in ("api/kernels/k1/channels", "terminals/websocket/1", "api/events/subscribe",
                                         "lsp/ws/pylsp", "api/kernels/k1/channels/x", "api/yjs/room")] == \
        [True, True, True, False, False, False]


def test_answers_pass_as_notebooks_small_text_or_listings_never_as_files() -> None:
    def contents(model: object) -> bytes:
        return json.dumps(model).encode()

    text = {"type": "file", "format": "text", "content": "a;b\n1;2\n", "name": "t.csv"}
    cases = [
        ("contents", 200, "application/json", contents(text), None),
        ("contents", 200, "application/json", contents({**text, "content": "x" * TEXT_MAX_BYTES}), None),
        ("contents", 200, "application/json", contents({**text, "content": "x" * (TEXT_MAX_BYTES + 1)}), "text_too_large"),
        ("contents", 200, "application/json", contents({**text, "content": "é" * (TEXT_MAX_BYTES // 2 + 1)}), "text_too_large"),
        ("contents", 200, "application/json", contents({**text, "format": "base64", "content": "UEFSMQ=="}), "binary_file"),
        ("contents", 200, "application/json", contents({"type": "notebook", "format": "json", "content": {"cells": []}}), None),
        ("contents", 200, "application/json", contents({"type": "notebook", "format": "base64", "content": "eA=="}), "unexpected_body"),
        ("contents", 200, "application/json", contents({"type": "directory", "format": "json", "content": [
            {"type": "file", "name": "data.parquet", "content": None}]}), None),
        ("contents", 200, "application/json", contents({"type": "directory", "format": "json", "content": [
            {"type": "file", "format": "base64", "content": "UEFSMQ=="}]}), "unexpected_body"),
        ("contents", 200, "application/json", contents({"type": "file", "format": None, "content": None}), None),
        ("contents", 200, "application/json", contents([{"id": "checkpoint", "last_modified": "2026-01-01"}]), None),
        ("contents", 200, "application/json", contents({"type": "symlink", "content": "x"}), "unexpected_body"),
        ("contents", 200, "application/octet-stream", b"PAR1....", "unexpected_type"),
        ("contents", 200, "application/json", b"PAR1", "unexpected_body"),
        ("contents", 404, "application/json", contents({"message": "No such file"}), None),
        ("json", 200, "application/json; charset=UTF-8", b"{}", None),
        ("json", 200, "application/octet-stream", b"PAR1", "unexpected_type"),
        ("json", 204, "", b"", None),
        ("page", 200, "text/html; charset=UTF-8", b"<html>", None),
        ("page", 200, "application/vnd.apache.parquet", b"PAR1", "unexpected_type"),
        ("page", 302, "", b"", None),
        ("theme", 200, "text/css", b"body {}", None),
    ]
    assert [answer_refusal(kind, status, media, body) for kind, status, media, body, _ in cases] == \
        [expected for *_, expected in cases]


def test_a_browser_request_is_the_sites_own_when_its_origin_is() -> None:
    site = "https://bulles.example.fr"
    assert same_origin("https://bulles.example.fr", "10.0.0.5:8000", site)  # behind a proxy: the public URL
    assert same_origin("http://127.0.0.1:8000", "127.0.0.1:8000", "http://127.0.0.1:8000")
    assert same_origin("http://LOCALHOST:8000/", "localhost:8000", "http://127.0.0.1:8000")  # the Host it was sent to
    for origin in (EVIL, "null", "", None, "https://bulles.example.fr.evil.example", "file://",
                   "http://127.0.0.1:8001"):
        assert not same_origin(origin, "127.0.0.1:8000", site), origin
    # a name rebound to this machine: Origin and Host agree, but the browser sends no cookie of ours there
    assert same_origin(EVIL, "evil.example", "http://127.0.0.1:8000")
    assert xsrf_matches("2|ab|cd|1", "2|ab|cd|1")
    assert not any([xsrf_matches("2|ab|cd|1", "2|ab|cd|2"), xsrf_matches(None, "x"), xsrf_matches("x", None),
                    xsrf_matches("", "")])


def test_jupyters_data_directory_is_read_only_and_download_plugins_are_not_loaded() -> None:
    from controller.runtimes.base import SandboxSpec

    spec = SandboxSpec(bubble="b-1", project="p", network="none", cpu=1, memory_mb=512, disk_mb=64,
                       base_url="/bubbles/b-1/", token="t")
    env = environment(spec, Path("/opt/env"))
    assert (env["JUPYTER_CONFIG_DIR"], env["JUPYTER_DATA_DIR"]) == ("/run/bulle/config", "/run/bulle/share")
    assert page_config() == {"disabledExtensions": {plugin: True for plugin in DOWNLOADS}}
    # each one is a plugin of the JupyterLab the bubbles run (a renamed plugin would load again)
    bundle = "".join(p.read_text(errors="replace") for p in
                     (Path(__file__).resolve().parents[1] / ".venv-bubble/share/jupyter/lab/static").glob("*.js"))
    assert [plugin for plugin in DOWNLOADS if f'id:"{plugin}"' not in bundle] == []


# ---------------------------------------------------------------------------- in a real bubble

class Browser:
    """A browser on the gateway: a session opened from a ticket link, its cookies, the site's
    Origin on what changes something and Jupyter's XSRF header, as JupyterLab sends them."""

    def __init__(self, served: Served, bubble_id: str, user: str = "bruno") -> None:
        self.origin = f"http://127.0.0.1:{served.port}"
        self.base, self.port = f"/bubbles/{bubble_id}", served.port
        self.http = httpx.Client(base_url=self.origin, timeout=60)
        link = served.http.post(f"/api/v1/bubbles/{bubble_id}/sessions", headers=served.headers(user))
        assert link.status_code == 200, link.text
        assert open_bubble_link(self.http, served_link(served, link.json()["url"])).status_code == 303
        self.lab = self.http.get(f"{self.base}/lab")  # Jupyter sets its _xsrf cookie with the page
        assert self.lab.status_code == 200

    def get(self, path: str) -> httpx.Response:
        return self.http.get(f"{self.base}/{path}")

    def write(self, method: str, path: str, origin: str | None = "own", xsrf: str | None = "cookie",
              **kwargs) -> httpx.Response:
        headers = {}
        if origin is not None:
            headers["Origin"] = self.origin if origin == "own" else origin
        if xsrf is not None:
            headers["X-XSRFToken"] = self.http.cookies["_xsrf"] if xsrf == "cookie" else xsrf
        return self.http.request(method, f"{self.base}/{path}", headers=headers, **kwargs)

    def channel(self, path: str, origin: str | None = "own"):
        headers = {"Cookie": "; ".join(f"{c.name}={c.value}" for c in self.http.cookies.jar)}
        if origin is not None:
            headers["Origin"] = self.origin if origin == "own" else origin
        return websockets.sync.client.connect(f"ws://127.0.0.1:{self.port}{self.base}/{path}",
                                              additional_headers=headers, open_timeout=30)


def served_link(served: Served, url: str) -> str:
    """A link the API made (on the site's configured URL), on the port the test serves."""
    return url.replace(served.site.platform.settings.base_url, f"http://127.0.0.1:{served.port}", 1)


def lab_page_config(page: str) -> dict:
    found = re.search(r'<script id="jupyter-config-data" type="application/json">(.*?)</script>', page, re.S)
    return json.loads(found.group(1))


def gate_of(served: Served) -> gateway.Gate:
    return served.server.config.app.state.gate


def refusals(served: Served) -> list[dict]:
    gate_of(served).attempts.flush()
    return events(served.site, "gateway.refused")


@as_root
def test_files_of_the_home_do_not_leave_through_the_gateway(served: Served) -> None:
    project(served, "projet-a")
    grant_pupils(served, "projet-a")
    bubble = start(served, "projet-a").json()
    base, bearer = f"/bubbles/{bubble['id']}", served.headers("bruno")
    kernel = Kernel(served, bubble["id"])
    try:
        kernel.run(
            "import json, os, shutil\n"
            f"shutil.copy('/data/{PUPILS}/data.parquet', 'data.parquet')\n"
            "open('petit.csv', 'w').write('niveau;n\\n6e;12\\n')\n"
            f"open('grand.csv', 'w').write('ine;note\\n' + 'x' * {TEXT_MAX_BYTES})\n"
            "json.dump({'cells': [], 'metadata': {}, 'nbformat': 4, 'nbformat_minor': 5}, open('analyse.ipynb', 'w'))\n")
        # nor can the researcher's code make Jupyter serve a file as a lab extension or kernelspec
        planted = kernel.run(
            "import os\n"
            "for d in ('labextensions/x/static', 'kernels/x'):\n"
            "    try:\n"
            "        os.makedirs(os.path.join(os.environ['JUPYTER_DATA_DIR'], d)); print('planted')\n"
            "    except OSError as e:\n"
            "        print(type(e).__name__)\n")
        assert planted.split() == ["PermissionError", "PermissionError"]
    finally:
        kernel.close()
    parquet = (served.site.platform.settings.home / "bubbles" / bubble["id"] / "home" / "data.parquet").read_bytes()
    assert parquet[:4] == b"PAR1"

    long_path = "files/" + "d" * 300 + ".parquet"
    refused = {
        "files/data.parquet": "route",
        "files/data.parquet?download=1": "download_parameter",
        "view/data.parquet": "route",
        "nbconvert/html/analyse.ipynb?download=true": "download_parameter",
        "nbconvert/script/analyse.ipynb": "route",
        "api/contents/data.parquet?content=1": "binary_file",
        "api/contents/data.parquet?content=1&type=file&format=base64": "base64",
        "api/contents/grand.csv?content=1": "text_too_large",
        "api/contents/grand.csv?content=1&format=text&type=file": "text_too_large",
        long_path: "route",
    }
    for path, reason in refused.items():
        answer = served.http.get(f"{base}/{path}", headers=bearer)
        assert answer.status_code == 403, (path, answer.status_code)
        assert answer.json()["error"] == {**answer.json()["error"], "code": "download_refused", "reason": reason}, path
        assert parquet[:64] not in answer.content and b"xxxxxxxx" not in answer.content
    allowed = {
        "api/contents/petit.csv?content=1": lambda a: a.json()["content"] == "niveau;n\n6e;12\n",
        "api/contents/analyse.ipynb": lambda a: a.json()["type"] == "notebook",
        "api/contents?content=1": lambda a: {m["name"] for m in a.json()["content"]} >= {"data.parquet", "outbox"},
        "api/contents/data.parquet?content=0": lambda a: a.json()["size"] == len(parquet) and a.json()["content"] is None,
        "lab": lambda a: "JupyterLab" in a.text,
        "static/favicons/favicon.ico": lambda a: a.headers["content-type"] == "image/vnd.microsoft.icon",
    }
    for path, check in allowed.items():
        answer = served.http.get(f"{base}/{path}", headers=bearer)
        assert answer.status_code == 200 and check(answer), (path, answer.status_code, answer.text[:200])
    config = lab_page_config(served.http.get(f"{base}/lab", headers=bearer).text)
    assert set(DOWNLOADS) <= set(config["disabledExtensions"])
    main = re.search(r"static/lab/(main\.[0-9a-f]+\.js)", served.http.get(f"{base}/lab", headers=bearer).text).group(1)
    image = served.site.platform.settings.bubble_env / "share/jupyter/lab/static" / main
    assert served.http.get(f"{base}/static/lab/{main}", headers=bearer).content == image.read_bytes()

    # every refusal is in the log (at most one event a minute for a caller, each counting its
    # refusals), with the method, the path cut short and the reason: never a byte of the file
    recorded = [e for e in refusals(served) if e["subject"] == bubble["id"]]
    assert sum(e["details"]["count"] for e in recorded) == len(refused)
    assert all(e["actor"] == "user:bruno" for e in recorded)
    assert recorded[0]["details"] == {"method": "GET", "path": "files/data.parquet", "reason": "route", "count": 1}
    assert recorded[-1]["details"]["count"] == len(refused) - 1 and {"since", "until"} <= set(recorded[-1]["details"])
    assert served.http.get(f"{base}/{long_path}", headers=bearer).status_code == 403  # the first of a new window
    assert refusals(served)[-1]["details"] == {"method": "GET", "path": long_path[:200], "reason": "route", "count": 1}


@as_root
def test_a_thousand_refusals_make_a_few_events_that_count_them_all(served: Served) -> None:
    project(served, "projet-a")
    bubble = start(served, "projet-a").json()
    attempts = gate_of(served).attempts
    attempts.window = 3600
    attempts.flush()  # a new window of an hour: however slow this machine, the thousand fall in one
    with httpx.Client(base_url=f"http://127.0.0.1:{served.port}", timeout=60, headers=served.headers("bruno")) as http:
        codes = {http.get(f"/bubbles/{bubble['id']}/files/outbox/{i}.csv").status_code for i in range(1000)}
    assert codes == {403}
    before_flush = events(served.site, "gateway.refused")
    attempts.flush()  # the end of the window (or the audit log's closing) writes the count still pending
    recorded = events(served.site, "gateway.refused")
    assert len(before_flush) == 1 and len(recorded) == 2
    assert sum(e["details"]["count"] for e in recorded) == 1000
    assert recorded[0]["details"]["count"] == 1 and recorded[-1]["details"]["count"] == 999


@as_root
def test_cross_site_requests_are_refused_and_the_token_never_reaches_the_browser(served: Served) -> None:
    project(served, "projet-a")
    bubble = start(served, "projet-a").json()
    token = served.site.platform.bubbles.token(bubble["id"])
    browser = Browser(served, bubble["id"])
    assert lab_page_config(browser.lab.text)["token"] == ""

    def kernels() -> list:
        return browser.get("api/kernels").json()

    new = {"json": {"name": "python3"}}
    foreign = browser.write("POST", "api/kernels", origin=EVIL, **new)
    assert foreign.status_code == 403 and foreign.json()["error"]["reason"] == "cross_origin"
    assert browser.write("POST", "api/kernels", origin=None, **new).json()["error"]["reason"] == "cross_origin"
    assert browser.write("POST", "api/kernels", xsrf=None, **new).json()["error"]["reason"] == "xsrf"
    assert browser.write("POST", "api/kernels", xsrf="2|00000000|00|1", **new).json()["error"]["reason"] == "xsrf"
    assert browser.write("DELETE", "api/contents/outbox", origin=EVIL).status_code == 403
    assert kernels() == []
    started = browser.write("POST", "api/kernels", **new)
    assert started.status_code == 201, started.text
    channel = f"api/kernels/{started.json()['id']}/channels?session_id={uuid.uuid4().hex}"
    for origin in (EVIL, None):
        with pytest.raises(websockets.exceptions.InvalidStatus):
            browser.channel(channel, origin=origin)
    with browser.channel(channel) as ws:
        ws.ping().wait(10)
    # a program with a bearer token is not a browser: it needs no Origin
    assert served.http.post(f"{browser.base}/api/kernels", headers=served.headers("bruno"), **new).status_code == 201
    assert len(kernels()) == 2
    reasons = [e["details"]["reason"] for e in refusals(served)]
    assert reasons[0] == "cross_origin"

    # no answer through the gateway carries the Jupyter token
    answers = [browser.lab, started] + [browser.get(p) for p in (
        "", "lab", "lab/tree/outbox", "api", "api/me", "api/status", "api/kernels", "api/sessions", "api/kernelspecs",
        "api/terminals", "api/contents", "lab/api/settings", "lab/api/workspaces", "api/config/notebook", "lsp/status")]
    assert [a.status_code for a in answers if a.status_code >= 400] == []
    assert [str(a.url) for a in answers if token in a.text or token in str(a.headers)] == []


@as_root
def test_a_ticket_opens_one_session_once_and_is_never_logged(served: Served) -> None:
    platform = served.site.platform
    project(served, "projet-a")
    bubble = start(served, "projet-a").json()
    logged: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            logged.append(record.getMessage())

    capture, access, root = Capture(), logging.getLogger("uvicorn.access"), logging.getLogger()
    levels = access.level, root.level
    access.setLevel(logging.INFO)
    root.setLevel(logging.DEBUG)
    root.addHandler(capture)
    access.addHandler(capture)  # uvicorn's access log does not propagate
    try:
        link = served.http.post(f"/api/v1/bubbles/{bubble['id']}/sessions", headers=served.headers("bruno")).json()
        assert link["url"].startswith(f"{platform.settings.base_url}/bubbles/{bubble['id']}/open#ticket=")
        link["url"] = served_link(served, link["url"])
        page, _, fragment = link["url"].partition("#")
        ticket = fragment.removeprefix("ticket=")
        claims = jwt.decode(ticket, options={"verify_signature": False})
        assert link["expires_in"] == 60 and claims["exp"] - claims["iat"] == 60
        assert page == f"http://127.0.0.1:{served.port}/bubbles/{bubble['id']}/open"
        with httpx.Client(timeout=60) as browser, httpx.Client(timeout=60) as replayer:
            shown = browser.get(page)
            assert shown.status_code == 200 and ticket not in shown.text
            assert "script-src 'sha256-" in shown.headers["content-security-policy"]
            assert shown.headers["cache-control"] == "no-store" and shown.headers["referrer-policy"] == "no-referrer"
            opened = open_bubble_link(browser, link["url"])
            assert opened.status_code == 303 and opened.headers["location"] == f"/bubbles/{bubble['id']}/lab"
            cookie = opened.headers["set-cookie"].lower()
            assert all(part in cookie for part in ("max-age=28800", "httponly", "samesite=strict",
                                                   f"path=/bubbles/{bubble['id']}/"))
            assert browser.get(f"{page.removesuffix('/open')}/api/status").status_code == 200
            assert open_bubble_link(replayer, link["url"]).status_code == 404  # used
            assert replayer.get(f"{page.removesuffix('/open')}/api/status").status_code == 404
    finally:
        root.removeHandler(capture)
        access.removeHandler(capture)
        access.setLevel(levels[0])
        root.setLevel(levels[1])
    assert any(f"POST /bubbles/{bubble['id']}/open" in line for line in logged)  # the access log was captured
    assert [line for line in logged if ticket in line or claims["jti"] in line] == []
    opened = events(served.site, "bubble.session.opened")
    assert len(opened) == 1 and opened[0]["actor"] == "user:bruno" and opened[0]["details"]["via"] == "ticket"
    gate_of(served).attempts.flush()
    assert {"path": "open", "reason": "ticket_used", "count": 1} in [e["details"] for e in events(served.site, "gateway.denied")]

    # another controller process of the site refuses it too (the state database remembers it),
    # lets a fresh ticket in, and forgets tickets past their expiry
    from controller.api.app import create_app
    from controller.platform import Platform

    with platform.sessions.begin() as session:
        session.add(UsedTicket(id="old", expires_at="2000-01-01T00:00:00.000000Z"))
    with Platform(platform.settings) as other:
        client = TestClient(create_app(other), follow_redirects=False)
        assert open_bubble_link(client, link["url"].replace(f"127.0.0.1:{served.port}", "testserver")).status_code == 404
        fresh = gateway.ticket_url(other, "bruno", bubble["id"])
        assert open_bubble_link(client, "http://testserver" + fresh).status_code == 303
        expired = gateway.ticket_url(other, "bruno", bubble["id"], seconds=-1)
        assert open_bubble_link(client, "http://testserver" + expired).status_code == 404
        other_bubble = gateway.ticket_url(other, "bruno", "b-0000", seconds=60).replace("b-0000", bubble["id"], 1)
        assert open_bubble_link(client, "http://testserver" + other_bubble).status_code == 404
        # posted from another site's page, a valid ticket is refused (and stays unused)
        foreign = gateway.ticket_url(other, "bruno", bubble["id"])
        page = "http://testserver" + foreign.partition("#")[0]
        assert client.post(page, data={"ticket": foreign.partition("#ticket=")[2]},
                           headers={"Origin": EVIL}).status_code == 403
        assert open_bubble_link(client, "http://testserver" + foreign).status_code == 303
    with platform.sessions() as session:
        assert session.get(UsedTicket, "old") is None
        assert len(session.scalars(select(UsedTicket)).all()) == 3


@as_root
def test_a_session_ends_with_the_membership_the_user_and_its_lifetime(served: Served) -> None:
    body = {"id": "projet-a", "title": "Absentéisme", "purpose": "research", "legal_basis": "public_task",
            "dpia_reference": "AIPD-1", "start_date": dt.date.today().isoformat(),
            "end_date": (dt.date.today() + dt.timedelta(days=100)).isoformat(),
            "members": [{"username": "zoe", "role": "member"}]}
    assert served.http.post("/api/v1/projects", json=body, headers=served.headers("bruno")).status_code == 201
    bubble = start(served, "projet-a").json()
    gate_of(served).recheck_seconds = 0.2
    zoe = Browser(served, bubble["id"], user="zoe")
    assert zoe.get("api/status").status_code == 200

    def members(names: list[str]) -> None:
        answer = served.http.patch("/api/v1/projects/projet-a", headers=served.headers("bruno"),
                                   json={"members": [{"username": n, "role": "member"} for n in names]})
        assert answer.status_code == 200, answer.text

    def channel_ends(ws) -> bool:
        try:
            while True:
                ws.recv(timeout=15)
        except websockets.exceptions.ConnectionClosed:
            return True
        except TimeoutError:
            return False

    kernel = zoe.write("POST", "api/kernels", json={"name": "python3"}).json()["id"]
    channel = f"api/kernels/{kernel}/channels?session_id={uuid.uuid4().hex}"
    with zoe.channel(channel) as ws:
        members([])  # removed from the project: her next request, and her open channel, end
        assert zoe.get("api/status").status_code == 404
        assert channel_ends(ws)
    members(["zoe"])
    assert zoe.get("api/status").status_code == 200
    with zoe.channel(channel) as ws:
        disabled = served.http.post("/api/v1/users/zoe/disabled", json={"disabled": True},
                                    headers=served.headers("admin"))
        assert disabled.status_code == 200, disabled.text
        assert zoe.get("api/status").status_code == 404
        assert channel_ends(ws)
    # a session cookie past its lifetime opens nothing
    secret = gate_of(served).secret
    stale = gateway.issue(secret, "bruno", bubble["id"], "session", -1)
    assert served.http.get(f"/bubbles/{bubble['id']}/api/status", cookies={gateway.COOKIE: stale}).status_code == 404
    fresh = gateway.issue(secret, "bruno", bubble["id"], "session", 60)
    assert served.http.get(f"/bubbles/{bubble['id']}/api/status", cookies={gateway.COOKIE: fresh}).status_code == 200


# Run in the kernel: everything the researcher's code tries against its own Jupyter server.
AGAINST_THE_SERVER = r'''
import ctypes, errno, glob, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
server = os.getppid()
assert b"jupyter_server" in open(f"/proc/{server}/cmdline", "rb").read()
results = {}
def attempt(name, fn):
    try:
        results[name] = ["succeeded", repr(fn())[:100]]
    except OSError as exc:
        results[name] = ["failed", errno.errorcode.get(exc.errno, str(exc.errno))]
def check(value):
    if value < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return value
attempt("ptrace_attach", lambda: check(libc.ptrace(16, server, None, None)))  # PTRACE_ATTACH
attempt("ptrace_seize", lambda: check(libc.ptrace(0x4206, server, None, None)))  # PTRACE_SEIZE
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buffer = ctypes.create_string_buffer(64)
local, remote = iovec(ctypes.cast(buffer, ctypes.c_void_p), 64), iovec(0x400000, 64)
attempt("process_vm_readv", lambda: check(libc.process_vm_readv(server, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)))
for name in ("mem", "environ", "maps", "fd/0"):
    attempt(f"proc_{name}", lambda name=name: open(f"/proc/{server}/{name}", "rb").read(64))
attempt("proc_fds", lambda: os.listdir(f"/proc/{server}/fd"))
def socket_with_token():
    s = socket.socket(socket.AF_UNIX)
    s.connect("/run/bulle/jupyter.sock")
    s.sendall(b"GET BASEapi/status HTTP/1.1\r\nHost: bulle\r\nAuthorization: token TOKEN\r\n\r\n")
    status = s.recv(64).split(b"\r\n")[0]
    if b" 200 " in status:
        return status
    raise PermissionError(errno.EACCES, status.decode())
attempt("socket_with_token", socket_with_token)
attempt("rename_config", lambda: os.rename("/run/bulle/config", "/run/bulle/mine"))
found, secret_files = [], []
for root in ("/tmp", "/home/researcher", "/run/bulle"):
    for path in glob.glob(root + "/**", recursive=True):
        if "cookie_secret" in path:
            secret_files.append(path)
        if os.path.isfile(path) and not os.path.islink(path):
            try:
                if b"TOKEN" in open(path, "rb").read():
                    found.append(path)
            except OSError:
                pass
results["token_in_a_file"] = found
results["cookie_secret_file"] = secret_files
results["token_file_left"] = os.path.exists("/run/bulle/token")
print(json.dumps(results))
'''


@as_root
def test_the_kernel_can_neither_read_its_servers_memory_nor_find_its_secrets(served: Served) -> None:
    project(served, "projet-a")
    bubble = start(served, "projet-a").json()
    kernel = Kernel(served, bubble["id"])
    try:
        code = (AGAINST_THE_SERVER.replace("TOKEN", served.site.platform.bubbles.token(bubble["id"]))
                .replace("BASE", f"/bubbles/{bubble['id']}/"))
        results = json.loads(kernel.run(code).strip().splitlines()[-1])
    finally:
        kernel.close()
    assert results == {
        "ptrace_attach": ["failed", "EPERM"], "ptrace_seize": ["failed", "EPERM"],
        "process_vm_readv": ["failed", "EPERM"],
        "proc_mem": ["failed", "EACCES"], "proc_environ": ["failed", "EACCES"], "proc_maps": ["failed", "EACCES"],
        "proc_fd/0": ["failed", "EACCES"], "proc_fds": ["failed", "EACCES"],
        "socket_with_token": ["failed", "EACCES"],  # the token is not enough: the request must come from outside
        "rename_config": ["failed", "EPERM"],
        "token_in_a_file": [], "cookie_secret_file": [], "token_file_left": False,
    }


# Run in the kernel: a server of the researcher's own put in place of Jupyter's socket, which
# answers every request with the parquet file (as is, or in a Contents API answer as base64).
FAKE_SERVER = r'''
import base64, http.server, json, os, shutil, socketserver, threading
shutil.copy("/data/PUPILS/data.parquet", "data.parquet")
PARQUET = open("data.parquet", "rb").read()
os.rename("/run/bulle/jupyter.sock", "/run/bulle/real.sock")
seen = []
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        seen.append(self.headers.get("Authorization", ""))
        if "/api/contents/" in self.path:
            body, kind = json.dumps({"type": "file", "format": "base64", "name": "data.parquet",
                                     "content": base64.b64encode(PARQUET).decode()}).encode(), "application/json"
        else:
            body, kind = PARQUET, "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def address_string(self):
        return "bubble"
    def log_message(self, *args):
        pass
class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
fake = Server("/run/bulle/jupyter.sock", Handler)
threading.Thread(target=fake.serve_forever, daemon=True).start()
print(len(PARQUET))
'''


@as_root
def test_a_server_put_in_place_of_jupyters_gets_no_file_out_and_no_use_of_the_token(served: Served) -> None:
    project(served, "projet-a")
    grant_pupils(served, "projet-a")
    bubble = start(served, "projet-a").json()
    base, bearer = f"/bubbles/{bubble['id']}", served.headers("bruno")
    main = re.search(r"static/lab/(main\.[0-9a-f]+\.js)", served.http.get(f"{base}/lab", headers=bearer).text).group(1)
    kernel = Kernel(served, bubble["id"])
    try:
        size = int(kernel.run(FAKE_SERVER.replace("PUPILS", PUPILS)).strip())
        parquet = (served.site.platform.settings.home / "bubbles" / bubble["id"] / "home" / "data.parquet").read_bytes()
        assert len(parquet) == size
        # the gateway's idle keep-alive connections (5 s) still reach the real server; its next ones do not
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(6)
            if served.http.get(f"{base}/api/status", headers=bearer).status_code != 200:
                break
        answers = {path: served.http.get(f"{base}/{path}", headers=bearer) for path in (
            "api/status", "lab", "api/contents/data.parquet", "lab/api/settings", "static/lab/data.parquet",
            f"static/lab/{main}", "lab/extensions/x/static/data.parquet", "kernelspecs/python3/data.parquet")}
        assert {p: a.status_code for p, a in answers.items()} == {
            "api/status": 403, "lab": 403, "api/contents/data.parquet": 403, "lab/api/settings": 403,
            "static/lab/data.parquet": 404, f"static/lab/{main}": 200, "lab/extensions/x/static/data.parquet": 404,
            "kernelspecs/python3/data.parquet": 404}
        assert [p for p, a in answers.items() if parquet[:64] in a.content or b"UEFSM" in a.content] == []
        assert [p for p, a in answers.items() if a.status_code == 403 and
                a.json()["error"]["reason"] not in ("unexpected_type", "binary_file")] == []
        # the fake server did see the gateway's token; it opens nothing on the real server
        tried = kernel.run(
            "import socket\n"
            "s = socket.socket(socket.AF_UNIX); s.connect('/run/bulle/real.sock')\n"
            f"s.sendall(b'GET {base}/api/status HTTP/1.1\\r\\nHost: bulle\\r\\nAuthorization: ' + seen[-1].encode() + b'\\r\\n\\r\\n')\n"
            "print(seen[-1][:6], s.recv(64).split(b'\\r\\n')[0].decode())\n"
            "fake.shutdown(); fake.server_close(); os.replace('/run/bulle/real.sock', '/run/bulle/jupyter.sock')\n")
        assert tried.strip() == "token  HTTP/1.1 403 Forbidden"
    finally:
        kernel.close()
    assert served.http.get(f"{base}/api/status", headers=bearer).status_code == 200  # the real one again
