"""Bubbles end to end: the API starts a real Jupyter Server in a real bubblewrap sandbox, the
gateway (a real uvicorn on loopback) proxies HTTP and the kernel's WebSocket, code runs in the
kernel, reads a view with `bulle`, writes to the outbox — and then tries to escape.

Needs root and bubblewrap (./dev.sh installs it); SQLite only: the store is covered on both
databases elsewhere, and each bubble costs a Jupyter start.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import uvicorn
import websockets.sync.client
from sqlalchemy import select

from catalog.synthetic import build_demo_pupils
from conftest import Site, example, free_port
from controller import accounts
from controller.store import AuditEvent

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")

PUPILS, IPS = "eleves-synthetiques", "fr-en-ips-colleges-ap2022"
TODAY = dt.date.today()


@pytest.fixture
def db_url(home: Path) -> str:
    return f"sqlite:///{home / 'state.db'}"


class Served:
    """The site's app on a real loopback port, so that the sandbox has a port to fail to reach."""

    def __init__(self, site: Site) -> None:
        from controller.api.app import create_app

        self.site = site
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(create_app(site.platform), host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=60)

    def headers(self, user: str) -> dict[str, str]:
        return self.site.headers(user)

    def close(self) -> None:
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def served(site: Site):
    build_demo_pupils(site.platform.settings.home / "warehouse", n=300)
    for name in (PUPILS, IPS):
        assert site.client.post("/api/v1/sources", json=example(name), headers=site.headers("alice")).status_code == 201
    _, site.tokens["zoe"] = accounts.add_user(site.platform, "test", "zoe", ["researcher"], "labo")
    running = Served(site)
    yield running
    bubbles = site.platform.bubbles
    for bubble_id in bubbles.runtime.list():
        bubbles.runtime.delete(bubble_id)
    running.close()


def project(served: Served, pid: str, owner: str = "bruno") -> None:
    body = {"id": pid, "title": "Absentéisme", "purpose": "research", "legal_basis": "public_task",
            "dpia_reference": "AIPD-1", "start_date": (TODAY - dt.timedelta(days=3)).isoformat(),
            "end_date": (TODAY + dt.timedelta(days=100)).isoformat()}
    assert served.http.post("/api/v1/projects", json=body, headers=served.headers(owner)).status_code == 201


def grant_pupils(served: Served, pid: str, owner: str = "bruno") -> str:
    asked = served.http.post(f"/api/v1/projects/{pid}/access-requests", headers=served.headers(owner), json={
        "source": PUPILS, "columns": ["ine", "sex", "level", "grade_maths"], "justification": "Étude"}).json()
    approved = served.http.post(f"/api/v1/access-requests/{asked['id']}/review", headers=served.headers("alice"),
                                json={"verdict": "approve", "comment": "ok"})
    assert approved.status_code == 200, approved.text
    return approved.json()["grant"]


def start(served: Served, pid: str, user: str = "bruno", **body) -> httpx.Response:
    return served.http.post("/api/v1/bubbles", json={"project": pid, **body}, headers=served.headers(user))


def events(site: Site, action: str) -> list[dict]:
    with site.platform.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)).all()
        return [{"subject": r.subject_id, "actor": r.actor, "details": json.loads(r.details)} for r in rows]


class Kernel:
    """A kernel started over the Jupyter REST API, driven over its WebSocket channel."""

    def __init__(self, served: Served, bubble_id: str, user: str = "bruno") -> None:
        base = f"/bubbles/{bubble_id}"
        answer = served.http.post(f"{base}/api/kernels", json={"name": "python3"}, headers=served.headers(user))
        assert answer.status_code == 201, answer.text
        self.id = answer.json()["id"]
        self.session = uuid.uuid4().hex
        self.ws = websockets.sync.client.connect(
            f"ws://127.0.0.1:{served.port}{base}/api/kernels/{self.id}/channels?session_id={self.session}",
            additional_headers=served.headers(user), open_timeout=30, max_size=None)

    def run(self, code: str, timeout: float = 120) -> str:
        """stdout of the code; an AssertionError carrying the traceback if it raised."""
        msg_id = uuid.uuid4().hex
        self.ws.send(json.dumps({
            "header": {"msg_id": msg_id, "username": "test", "session": self.session, "msg_type": "execute_request",
                       "version": "5.3", "date": dt.datetime.now(dt.timezone.utc).isoformat()},
            "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
            "content": {"code": code, "silent": False, "store_history": False, "user_expressions": {},
                        "allow_stdin": False, "stop_on_error": True}}))
        out, error, replied, idle = [], None, False, False
        deadline = time.monotonic() + timeout
        while not (replied and idle):
            message = json.loads(self.ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if message.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = message["msg_type"]
            if kind == "stream":
                out.append(message["content"]["text"])
            elif kind == "error":
                error = "\n".join(message["content"]["traceback"])
            elif kind == "execute_reply":
                replied = True
            elif kind == "status" and message["content"]["execution_state"] == "idle":
                idle = True
        assert error is None, error
        return "".join(out)

    def close(self) -> None:
        self.ws.close()


# Everything the researcher's code tries; each entry must come back as a failure. Reads of /proc
# and /sys only: no packet is ever sent to an address outside this machine.
ESCAPES = r'''
import ctypes, errno, glob, json, os, socket, resource, subprocess
results = {}
def attempt(name, fn):
    try:
        value = fn()
        results[name] = ["succeeded", repr(value)[:200]]
    except Exception as exc:
        results[name] = ["failed", type(exc).__name__ + ": " + str(exc)[:150]]
def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=2); s.close(); return port
attempt("tcp_controller", lambda: tcp(CONTROLLER_PORT))
attempt("tcp_warehouse", lambda: tcp(WAREHOUSE_PORT))
def interfaces():
    names = sorted(os.listdir("/sys/class/net"))
    if names != ["lo"]:
        return names
    raise OSError("only lo")
attempt("network_interface", interfaces)
def route():
    lines = [l for l in open("/proc/net/route").read().splitlines()[1:] if l.strip()]
    lines6 = [l for l in open("/proc/net/ipv6_route").read().splitlines() if l.strip() and not l.split()[-1] == "lo"]
    if lines or lines6:
        return lines + lines6
    raise OSError("no route")
attempt("route_out", route)
def resolver():
    text = open("/etc/resolv.conf").read()
    if "nameserver" in text:
        return text
    raise OSError("no nameserver")
attempt("resolver", resolver)
attempt("dns", lambda: socket.getaddrinfo("education.gouv.fr", 443))
attempt("shadow", lambda: open("/etc/shadow").read())
attempt("platform_database", lambda: open(DATABASE).read(10))
attempt("master_secret", lambda: open(MASTER).read(10))
attempt("bubbles_root", lambda: os.listdir(BUBBLES_ROOT))
attempt("other_bubble_home", lambda: os.listdir(OTHER_HOME))
attempt("other_bubble_socket", lambda: socket.socket(socket.AF_UNIX).connect(OTHER_SOCKET))
def write_data():
    name = sorted(os.listdir("/data"))[0]
    with open(f"/data/{name}/planted.txt", "w") as f:
        f.write("x")
attempt("write_data", write_data)
def replace_data():
    name = sorted(os.listdir("/data"))[0]
    os.rename(f"/data/{name}/manifest.json", f"/data/{name}/m.json")
attempt("replace_data", replace_data)
def host_processes():
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    argvs = [open(f"/proc/{p}/cmdline", "rb").read().split(b"\0") for p in pids]
    host = [a for a in argvs if any(b"pytest" in x or b"uvicorn" in x or b"weed" in x for x in a[:3])]
    paths = [a for a in argvs if any(HOST_HOME.encode() in x for x in a)]
    if host or paths:
        return host + paths
    raise OSError(f"{len(pids)} processes, none of the host's, no host path in their arguments")
attempt("host_processes", host_processes)
libc = ctypes.CDLL(None, use_errno=True)
def mount_tmpfs():
    os.makedirs("/tmp/m", exist_ok=True)
    if libc.mount(b"none", b"/tmp/m", b"tmpfs", 0, None) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "mounted"
attempt("mount", mount_tmpfs)
def new_user_namespace():
    if libc.unshare(0x10000000) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return "unshared"
attempt("user_namespace", new_user_namespace)
def raise_nproc():
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    resource.setrlimit(resource.RLIMIT_NPROC, (hard + 1000, hard + 1000))
    return hard
attempt("raise_nproc", raise_nproc)
def cgroup_limit():
    for path in glob.glob("/sys/fs/cgroup/**/memory.limit_in_bytes", recursive=True) + glob.glob("/sys/fs/cgroup/**/memory.max", recursive=True):
        with open(path, "w") as f:
            f.write("-1" if path.endswith("limit_in_bytes") else "max")
        return path
    raise OSError("no cgroup file")
attempt("raise_memory_limit", cgroup_limit)
attempt("write_usr", lambda: open("/usr/planted", "w"))
attempt("write_etc", lambda: open("/etc/planted", "w"))
attempt("write_env", lambda: open(os.path.dirname(os.__file__) + "/planted.py", "w"))
attempt("setuid_root", lambda: os.setuid(0))
def token_leak():
    blobs = [open(f"/proc/{p}/environ", "rb").read() + open(f"/proc/{p}/cmdline", "rb").read()
             for p in os.listdir("/proc") if p.isdigit()]
    files = [open(f, "rb").read() for f in glob.glob("/run/bulle/**", recursive=True) if os.path.isfile(f)]
    if any(TOKEN.encode() in b for b in blobs + files):
        return "token found"
    raise OSError("token not found")
attempt("jupyter_token", token_leak)
print(json.dumps(results))
'''


def test_a_bubble_runs_jupyter_reads_views_writes_outbox_and_cannot_escape(served: Served) -> None:
    site = served.site
    project(served, "projet-a")
    grant = grant_pupils(served, "projet-a")
    # a second project's bubble, to try to reach
    project(served, "projet-b", owner="zoe")
    other = start(served, "projet-b", user="zoe")
    assert other.status_code == 201, other.text

    answer = start(served, "projet-a")
    assert answer.status_code == 201, answer.text
    bubble = answer.json()
    assert bubble["state"] == "running" and bubble["url"] == f"/bubbles/{bubble['id']}/"
    assert bubble["profile"]["network"] == "none"  # personal data: no network
    assert [v["grant"] for v in bubble["views"]] == [grant] and bubble["views"][0]["name"] == PUPILS
    status = served.http.get(f"/bubbles/{bubble['id']}/api/status", headers=served.headers("bruno"))
    assert status.status_code == 200 and "kernels" in status.json()

    kernel = Kernel(served, bubble["id"])
    try:
        listed = json.loads(kernel.run("import bulle, json; print(json.dumps({n: m['mode'] for n, m in bulle.views().items()}))"))
        assert listed == {PUPILS: "pseudonymised"}
        table = json.loads(kernel.run(
            "t = bulle.read('eleves-synthetiques'); print(json.dumps([t.num_rows, t.column_names]))"))
        assert table[0] == 300 and set(table[1]) == {"ine", "sex", "level", "grade_maths"}
        frame = kernel.run("print(type(bulle.read('eleves-synthetiques', pandas=True)).__name__)")
        assert frame.strip() == "DataFrame"
        kernel.run("(bulle.outbox() / 'resultat.csv').write_text('niveau;moyenne\\n6e;12.5\\n')")

        platform = site.platform
        layout_root = platform.settings.home / "bubbles"
        other_id = other.json()["id"]
        code = ESCAPES
        substitutions = {
            "CONTROLLER_PORT": str(served.port), "WAREHOUSE_PORT": str(free_port_in_use(served)),
            "DATABASE": repr(str(platform.settings.home / "state.db")),
            "MASTER": repr(str(platform.settings.home / "master.key")),
            "BUBBLES_ROOT": repr(str(layout_root)), "OTHER_HOME": repr(str(layout_root / other_id / "home")),
            "OTHER_SOCKET": repr(str(platform.bubbles.runtime.layout(other_id).socket)),
            "HOST_HOME": repr(str(platform.settings.home)), "TOKEN": repr(platform.bubbles.token(bubble["id"])),
        }
        for name, value in substitutions.items():
            code = code.replace(name, value)
        results = json.loads(kernel.run(code).strip().splitlines()[-1])
        escaped = {name: detail for name, (outcome, detail) in results.items() if outcome != "failed"}
        assert escaped == {}, escaped
        assert len(results) >= 24
    finally:
        kernel.close()

    outbox = platform.settings.home / "bubbles" / bubble["id"] / "home" / "outbox" / "resultat.csv"
    assert outbox.read_text().startswith("niveau;moyenne")
    actions = {e["details"].get("via") or e["details"].get("path") for e in events(site, "bubble.kernel.started")}
    assert "api/kernels" in actions
    assert events(site, "bubble.channel.opened")
    deadline = time.monotonic() + 15  # the gateway logs the close once both ends are down
    while not events(site, "bubble.channel.closed") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert events(site, "bubble.channel.closed")[0]["details"]["seconds"] > 0

    # someone outside the project: 404, as if there were no bubble, and the attempt is logged
    for user in ("zoe", "alice", "admin"):
        denied = served.http.get(f"/bubbles/{bubble['id']}/api/status", headers=served.headers(user))
        assert denied.status_code == 404, user
    assert served.http.get(f"/bubbles/{bubble['id']}/api/status").status_code == 404
    assert len([e for e in events(site, "gateway.denied") if e["subject"] == bubble["id"]]) >= 4
    with pytest.raises(websockets.exceptions.InvalidStatus):
        websockets.sync.client.connect(f"ws://127.0.0.1:{served.port}/bubbles/{bubble['id']}/api/kernels/x/channels",
                                       additional_headers=served.headers("zoe"), open_timeout=10)

    # deletion wipes everything and records what went, with hashes
    deleted = served.http.delete(f"/api/v1/bubbles/{bubble['id']}", headers=served.headers("bruno"))
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted"
    record = events(site, "bubble.deleted")[-1]["details"]
    removed = {r["path"]: r["sha256"] for r in record["removed"]}
    import hashlib
    assert removed["home/outbox/resultat.csv"] == hashlib.sha256(b"niveau;moyenne\n6e;12.5\n").hexdigest()
    assert not (platform.settings.home / "bubbles" / bubble["id"]).exists()
    assert bubble["id"] not in platform.bubbles.runtime.list()


def free_port_in_use(served: Served) -> int:
    """A loopback port with a listener (the warehouse's stand-in): the sandbox must not reach it."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    served.__dict__.setdefault("_listeners", []).append(listener)
    return listener.getsockname()[1]


def test_open_data_only_bubbles_get_the_network_and_no_grant_means_empty_data(served: Served) -> None:
    project(served, "projet-ouvert")
    asked = served.http.post("/api/v1/projects/projet-ouvert/access-requests", headers=served.headers("bruno"),
                             json={"source": IPS, "justification": "Étude"}).json()
    assert asked["status"] == "granted"
    bubble = start(served, "projet-ouvert").json()
    assert bubble["profile"]["network"] == "open"
    kernel = Kernel(served, bubble["id"])
    try:
        assert kernel.run("import bulle; print(sorted(bulle.views()))").strip() == f"['{IPS}']"
        # what an open network reaches, and what not (the host), is tried in test_network.py
    finally:
        kernel.close()
    served.http.delete(f"/api/v1/bubbles/{bubble['id']}", headers=served.headers("bruno"))

    project(served, "projet-vide")
    empty = start(served, "projet-vide")
    assert empty.status_code == 201 and empty.json()["views"] == []
    kernel = Kernel(served, empty.json()["id"])
    try:
        assert kernel.run("import bulle; print(bulle.views())").strip() == "{}"
    finally:
        kernel.close()


def test_quota_bad_input_and_strangers(served: Served) -> None:
    project(served, "projet-a")
    assert start(served, "projet-a", user="zoe").status_code == 404  # not a member: the project is not theirs
    assert start(served, "projet-inconnu").status_code == 404
    assert start(served, "projet-a", resources={"memory_mb": -1}).status_code == 422
    assert start(served, "projet-a", parameters={"g-nope": {}}).status_code == 422
    first = start(served, "projet-a")
    assert first.status_code == 201
    second = start(served, "projet-a")
    assert second.status_code == 409 and second.json()["error"]["code"] == "bubble_quota"
    assert len(served.site.platform.bubbles.runtime.list()) == 1
    assert served.http.post(f"/api/v1/bubbles/{first.json()['id']}/stop", headers=served.headers("zoe")).status_code == 404
    stopped = served.http.post(f"/api/v1/bubbles/{first.json()['id']}/stop", headers=served.headers("bruno"))
    assert stopped.status_code == 200 and stopped.json()["state"] == "stopped"
    assert served.http.get(f"/bubbles/{first.json()['id']}/api/status", headers=served.headers("bruno")).status_code == 409
    assert start(served, "projet-a").status_code == 201  # a stopped bubble no longer counts


def test_revocation_expiry_death_restart_and_orphans_are_reconciled(served: Served) -> None:
    site = served.site
    platform = site.platform
    project(served, "projet-a")
    grant = grant_pupils(served, "projet-a")
    bubble = start(served, "projet-a").json()
    root = platform.settings.home / "bubbles" / bubble["id"]
    assert root.exists()

    # a controller restart: the sandbox outlives it and is adopted by the next one
    from controller.platform import Platform

    settings = platform.settings
    platform.bubbles.close()
    with Platform(settings) as restarted:  # the same configuration, a new controller
        assert restarted.bubbles.runtime.status(bubble["id"]).state == "running"
        assert events(site, "bubble.orphan_removed") == []

    # the provider revokes the grant: the bubble ends and its data goes
    assert served.http.post(f"/api/v1/grants/{grant}/revoke", json={"reason": "fin"},
                            headers=served.headers("alice")).status_code == 200
    assert (bubble["id"], "deleted") in platform.bubbles.reconcile()
    state = served.http.get(f"/api/v1/bubbles/{bubble['id']}", headers=served.headers("bruno")).json()
    assert state["state"] == "deleted" and state["reason"].startswith("grant_revoked")
    assert not root.exists()

    # a sandbox that dies: failed, with the reason, and cleaned
    project(served, "projet-c")
    dying = start(served, "projet-c").json()
    pid = json.loads((platform.settings.home / "bubbles" / dying["id"] / "sandbox.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while platform.bubbles.runtime.status(dying["id"]).state == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (dying["id"], "failed") in platform.bubbles.reconcile()
    failed = served.http.get(f"/api/v1/bubbles/{dying['id']}", headers=served.headers("bruno")).json()
    assert failed["state"] == "failed" and failed["reason"].startswith("sandbox_died")
    assert dying["id"] not in platform.bubbles.runtime.list()

    # the profile's lifetime: past it, the reconciler ends the bubble
    project(served, "projet-d")
    short = start(served, "projet-d").json()
    from controller.store import Bubble

    with platform.sessions.begin() as session:
        session.get(Bubble, short["id"]).expires_at = "2000-01-01T00:00:00.000000Z"
    assert (short["id"], "deleted") in platform.bubbles.reconcile()

    # something in the runtime the controller does not know of: removed
    (platform.settings.home / "bubbles" / "b-orphan").mkdir()
    assert ("b-orphan", "orphan_removed") in platform.bubbles.reconcile()
    assert platform.bubbles.runtime.list() == []


def test_a_full_home_fails_writes_inside_and_nothing_else(served: Served) -> None:
    project(served, "projet-a")
    bubble = start(served, "projet-a", resources={"disk_mb": 32}).json()
    assert bubble["profile"]["disk_mb"] == 32
    kernel = Kernel(served, bubble["id"])
    try:
        outcome = kernel.run(
            "import errno\n"
            "try:\n"
            "    with open('/home/researcher/big', 'wb') as f:\n"
            "        for _ in range(100): f.write(b'x' * (1 << 20)); f.flush()\n"
            "    print('wrote')\n"
            "except OSError as e:\n"
            "    print(errno.errorcode[e.errno])\n")
        assert outcome.strip() in ("ENOSPC", "EFBIG")
        assert kernel.run("print(1 + 1)").strip() == "2"  # the bubble still works
    finally:
        kernel.close()
    assert served.http.get(f"/bubbles/{bubble['id']}/api/status", headers=served.headers("bruno")).status_code == 200


def test_without_bubblewrap_the_api_says_how_to_install_it(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.runtimes.base import RuntimeUnavailable
    from controller.runtimes.local import check_available

    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(RuntimeUnavailable, match="apt-get install bubblewrap"):
        check_available(site.platform.settings.bubble_env)
    site.platform.bubbles, site.platform.bubbles_unavailable = None, "bubblewrap is not installed: apt-get install bubblewrap"
    answer = site.client.post("/api/v1/bubbles", json={"project": "x"}, headers=site.headers("bruno"))
    assert answer.status_code == 503 and "apt-get install bubblewrap" in answer.json()["error"]["message"]
