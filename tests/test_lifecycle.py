"""The bubble lifecycle under attack: requests that race each other, and homes built to break the
deletion. Real bubbles (bubblewrap, Jupyter Server) through the API, on SQLite and PostgreSQL.

A race is made to happen, not hoped for: a Gate holds one request at a chosen step (a view being
built, the sandbox being created, the readiness wait, a stop or a wipe under way) while the other
request is sent, then lets it go. No sleeps decide the order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from conftest import Site
from controller import views
from controller.api.app import create_app
from controller.platform import Platform
from controller.runtimes import wipe as wiping
from controller.runtimes.local import LocalRuntime
from controller.store import AuditEvent, Bubble
from test_bubbles import Kernel, Served, grant_pupils, project, served, start  # noqa: F401 (fixture)

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")
GiB = 1024**3
DEPTH = 1200


class Gate:
    """Holds the code that calls `pass_` until the test opens it."""

    def __init__(self) -> None:
        self.reached = threading.Event()
        self.opened = threading.Event()

    def pass_(self) -> None:
        self.reached.set()
        assert self.opened.wait(120), "the gate was never opened"

    def wait_reached(self) -> None:
        assert self.reached.wait(120), "the gated step was never reached"


class InThread:
    """A request sent from another thread; its answer once it has one."""

    def __init__(self, call: Callable[[], httpx.Response]) -> None:
        self.answer: httpx.Response | None = None
        self.thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self.thread.start()

    def _run(self, call: Callable[[], httpx.Response]) -> None:
        self.answer = call()

    def result(self) -> httpx.Response:
        self.thread.join(180)
        assert self.answer is not None, "the request did not finish"
        return self.answer


def state_of(site: Site, bubble_id: str) -> str | None:
    with site.platform.sessions() as session:
        return session.scalar(select(Bubble.state).where(Bubble.id == bubble_id))


def wait_state(site: Site, bubble_id: str, *states: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while state_of(site, bubble_id) not in states:
        assert time.monotonic() < deadline, f"bubble {bubble_id} is {state_of(site, bubble_id)}, never {states}"
        time.sleep(0.02)


def history(site: Site, bubble_id: str) -> list[tuple[str, dict]]:
    with site.platform.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.subject_type == "bubble",
                                                        AuditEvent.subject_id == bubble_id)
                               .order_by(AuditEvent.seq)).all()
        return [(r.action, json.loads(r.details)) for r in rows if not r.action.startswith("bubble.kernel")]


def bubble_ids(site: Site, pid: str, state: str) -> list[str]:
    with site.platform.sessions() as session:
        return list(session.scalars(select(Bubble.id).where(Bubble.project_id == pid, Bubble.state == state)))


def delete(served: Served, bubble_id: str, user: str = "bruno") -> httpx.Response:
    return served.http.delete(f"/api/v1/bubbles/{bubble_id}", headers=served.headers(user))


def stop(served: Served, bubble_id: str, user: str = "bruno") -> httpx.Response:
    return served.http.post(f"/api/v1/bubbles/{bubble_id}/stop", headers=served.headers(user))


def requested_id(site: Site, pid: str) -> str:
    """The bubble a start being provisioned has made (the start has not answered yet)."""
    with site.platform.sessions() as session:
        return session.scalar(select(Bubble.id).where(Bubble.project_id == pid, Bubble.state == "provisioning"))


# ------------------------------------------------------------------ races (item 8)

def gate_step(step: str, gate: Gate, runtime: LocalRuntime, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hold provisioning at `step`: building a view, creating the sandbox, or waiting for Jupyter."""
    if step == "view":
        materialise = views.materialise

        def held_view(*args, **kwargs):
            gate.pass_()
            return materialise(*args, **kwargs)

        monkeypatch.setattr(views, "materialise", held_view)
    elif step == "create":
        create = runtime.create

        def held_create(spec):
            gate.pass_()  # past the last check, before the sandbox exists
            return create(spec)

        monkeypatch.setattr(runtime, "create", held_create)
    else:
        create, status = runtime.create, runtime.status
        created = threading.Event()

        def noted_create(spec):
            endpoint = create(spec)
            created.set()
            return endpoint

        def held_status(bubble):
            if created.is_set() and not gate.reached.is_set():  # Jupyter not answering yet: waiting for it
                gate.pass_()
            return status(bubble)

        monkeypatch.setattr(runtime, "create", noted_create)
        monkeypatch.setattr(runtime, "status", held_status)


@as_root
@pytest.mark.parametrize("step", ["view", "create", "ready"])
def test_a_bubble_deleted_while_provisioned_never_comes_back_nor_beats_the_quota(
        served: Served, step: str, monkeypatch: pytest.MonkeyPatch) -> None:
    site = served.site
    runtime = site.platform.bubbles.runtime
    project(served, "projet-a")
    grant_pupils(served, "projet-a")
    gate = Gate()
    gate_step(step, gate, runtime, monkeypatch)

    starting = InThread(lambda: start(served, "projet-a"))
    gate.wait_reached()
    bubble_id = requested_id(site, "projet-a")
    deleting = InThread(lambda: delete(served, bubble_id))
    wait_state(site, bubble_id, "deleting", "deleted")  # held on the sandbox's lock, or done already
    gate.opened.set()
    deleted, started = deleting.result(), starting.result()

    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted", deleted.text
    assert started.status_code == 409, started.text
    assert started.json()["error"]["code"] in ("bubble_deleting", "bubble_deleted")
    assert state_of(site, bubble_id) == "deleted"
    assert [action for action, _ in history(site, bubble_id)] == ["bubble.requested", "bubble.deleting", "bubble.deleted"]
    assert bubble_id not in runtime.list() and not runtime.layout(bubble_id).root.exists()

    monkeypatch.undo()  # the quota still holds: one bubble running, whatever was tried before
    again = start(served, "projet-a")
    assert again.status_code == 201, again.text
    assert start(served, "projet-a").json()["error"]["code"] == "bubble_quota"
    assert bubble_ids(site, "projet-a", "running") == [again.json()["id"]]
    assert runtime.list() == [again.json()["id"]]


@as_root
def test_two_starts_at_once_against_a_quota_of_one(served: Served) -> None:
    site = served.site
    project(served, "projet-a")
    together = threading.Barrier(2)

    def racing() -> httpx.Response:
        together.wait(30)
        return start(served, "projet-a")

    answers = [InThread(racing) for _ in range(2)]
    codes = sorted(a.result().status_code for a in answers)
    assert codes == [201, 409]
    assert [a.result().json()["error"]["code"] for a in answers if a.result().status_code == 409] == ["bubble_quota"]
    assert len(bubble_ids(site, "projet-a", "running")) == 1 and len(site.platform.bubbles.runtime.list()) == 1


@as_root
@pytest.mark.parametrize("first", ["stop", "delete"])
def test_stop_racing_delete_ends_deleted_with_one_409_and_one_event_per_change(
        served: Served, first: str, monkeypatch: pytest.MonkeyPatch) -> None:
    site = served.site
    runtime = site.platform.bubbles.runtime
    project(served, "projet-a")
    bubble = start(served, "projet-a").json()
    bubble_id = bubble["id"]
    gate = Gate()
    original = getattr(runtime, first)

    def held(bubble):
        gate.pass_()
        return original(bubble)

    monkeypatch.setattr(runtime, first, held)
    if first == "stop":  # the stop is killing and unmounting when the delete comes
        stopping = InThread(lambda: stop(served, bubble_id))
        gate.wait_reached()
        deleting = InThread(lambda: delete(served, bubble_id))
        wait_state(site, bubble_id, "deleting")
        gate.opened.set()
        stopped, deleted = stopping.result(), deleting.result()
        expected = ["bubble.requested", "bubble.started", "bubble.stopping", "bubble.deleting", "bubble.deleted"]
    else:  # the wipe is under way when the stop comes
        deleting = InThread(lambda: delete(served, bubble_id))
        gate.wait_reached()
        stopped = stop(served, bubble_id)
        refused = start(served, "projet-a")  # a bubble being deleted still counts against the quota
        assert refused.status_code == 409 and refused.json()["error"]["code"] == "bubble_quota"
        gate.opened.set()
        deleted = deleting.result()
        expected = ["bubble.requested", "bubble.started", "bubble.deleting", "bubble.deleted"]

    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted", deleted.text
    assert stopped.status_code == 409 and stopped.json()["error"]["code"] == "bubble_deleting", stopped.text
    assert state_of(site, bubble_id) == "deleted"
    events = history(site, bubble_id)
    assert [action for action, _ in events] == expected
    record = events[-1][1]
    assert record["reason"] == "deleted by bruno"
    assert all("not_removed" not in r for r in record["removed"])
    assert bubble_id not in runtime.list() and not runtime.layout(bubble_id).root.exists()


# ------------------------------------------------------------------ deleting what a researcher made (item 9)

ODD_HOME = r'''
import os, socket
os.chdir("/home/researcher")
for _ in range(DEPTH):
    os.mkdir("d"); os.chdir("d")
open("fond.txt", "w").write("au fond")
os.chdir("/home/researcher")
open(b"caf\xe9 \xff.csv", "w").write("niveau;moyenne\n")
os.mkfifo("tube")
os.symlink("/etc/shadow", "lien")
socket.socket(socket.AF_UNIX).bind("prise")
open("secret.txt", "w").write("illisible")
os.chmod("secret.txt", 0)
os.mkdir("ferme")
open("ferme/dedans.txt", "w").write("dedans")
os.chmod("ferme", 0)
print("ok")
'''.replace("DEPTH", str(DEPTH))


def sparse_files(home: Path, owner: int) -> list[str]:
    """Three files of 10 GiB, written by truncate only: no byte of them is on the disk."""
    names = []
    for n in range(3):
        path = home / f"creux-{n}.bin"
        with path.open("wb") as handle:
            handle.truncate(10 * GiB)
        os.chown(path, owner, owner)
        names.append(f"home/{path.name}")
    return names


def count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every file the wipe reads, through the one function that reads them."""
    sizes: list[int] = []
    read = wiping.bounded_sha256

    def counted(handle, limit):
        sizes.append(limit)
        return read(handle, limit)

    monkeypatch.setattr(wiping, "bounded_sha256", counted)
    return sizes


def check_record(removed: list[dict], sparse: list[str]) -> None:
    by_path = {r["path"]: r for r in removed}
    deep = by_path["home/" + "d/" * DEPTH + "fond.txt"]
    assert deep["sha256"] == hashlib.sha256(b"au fond").hexdigest() and deep["kind"] == "file"
    odd = by_path["home/caf\\xe9 \\xff.csv"]
    assert base64.b64decode(odd["path_base64"]) == b"home/caf\xe9 \xff.csv"
    assert odd["sha256"] == hashlib.sha256(b"niveau;moyenne\n").hexdigest()
    for name, kind in (("tube", "fifo"), ("lien", "symlink"), ("prise", "socket")):
        entry = by_path[f"home/{name}"]
        assert entry["kind"] == kind and entry["sha256"] is None and entry["not_hashed"], entry
    assert by_path["home/secret.txt"]["sha256"] == hashlib.sha256(b"illisible").hexdigest()
    assert by_path["home/ferme/dedans.txt"]["sha256"] == hashlib.sha256(b"dedans").hexdigest()
    for path in sparse:
        entry = by_path[path]
        assert entry["sha256"] is None and entry["not_hashed"].startswith("sparse")
        assert entry["bytes"] == 10 * GiB and entry["allocated"] < wiping.SPARSE_SLACK
    assert [r for r in removed if "not_removed" in r] == []


@as_root
def test_a_home_built_to_break_the_deletion_is_wiped_and_recorded(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    site = served.site
    runtime = site.platform.bubbles.runtime
    project(served, "projet-a")
    bubble_id = start(served, "projet-a").json()["id"]
    kernel = Kernel(served, bubble_id)
    try:
        assert kernel.run(ODD_HOME).strip() == "ok"
    finally:
        kernel.close()
    layout = runtime.layout(bubble_id)
    sparse = sparse_files(layout.home, int((layout.root / "uid").read_text()))
    reads = count_reads(monkeypatch)

    deleted = delete(served, bubble_id)
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted", deleted.text
    events = history(site, bubble_id)
    assert events[-1][0] == "bubble.deleted"
    check_record(events[-1][1]["removed"], sparse)
    assert reads and sum(reads) < GiB  # all the bytes read: none of the 30 GiB the sparse files declare
    assert not layout.root.exists() and not layout.run.exists() and bubble_id not in runtime.list()
    assert Path("/etc/shadow").exists()  # the link went, not what it named


def odd_tree(home: Path) -> None:
    """From the host side: the depth that broke `rglob` and `rmtree`, and a name that is not UTF-8."""
    fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(DEPTH):
        os.mkdir("d", dir_fd=fd)
        deeper = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = deeper
    with open(os.open("fond.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "w") as handle:
        handle.write("au fond")
    os.close(fd)
    (home / os.fsdecode(b"caf\xe9 \xff.csv")).write_text("niveau;moyenne\n")


@as_root
def test_the_site_starts_and_serves_while_an_expired_bubble_with_such_a_home_is_wiped(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    site = served.site
    platform = site.platform
    project(served, "projet-a")
    bubble_id = start(served, "projet-a").json()["id"]
    layout = platform.bubbles.runtime.layout(bubble_id)
    odd_tree(layout.home)
    sparse = sparse_files(layout.home, int((layout.root / "uid").read_text()))
    with platform.sessions.begin() as session:
        session.get(Bubble, bubble_id).expires_at = "2000-01-01T00:00:00.000000Z"
    platform.bubbles.close()

    gate = Gate()
    wipe = LocalRuntime.delete

    def held(runtime, bubble):
        gate.pass_()
        return wipe(runtime, bubble)

    monkeypatch.setattr(LocalRuntime, "delete", held)
    with Platform(platform.settings) as restarted:  # the controller restarts: the bubble must go
        gate.wait_reached()  # the wipe is under way, held: the site has started all the same
        client = TestClient(create_app(restarted))
        seen = client.get(f"/api/v1/bubbles/{bubble_id}", headers=site.headers("bruno"))
        assert seen.status_code == 200 and seen.json()["state"] == "deleting"
        assert seen.json()["reason"].startswith("expired")
        assert client.get("/api/v1/bubbles", headers=site.headers("bruno")).status_code == 200
        gate.opened.set()
        wait_state(site, bubble_id, "deleted")
    events = history(site, bubble_id)
    assert [a for a, _ in events][-2:] == ["bubble.deleting", "bubble.deleted"]
    removed = {r["path"]: r for r in events[-1][1]["removed"]}
    assert removed["home/" + "d/" * DEPTH + "fond.txt"]["sha256"] == hashlib.sha256(b"au fond").hexdigest()
    assert base64.b64decode(removed["home/caf\\xe9 \\xff.csv"]["path_base64"]) == b"home/caf\xe9 \xff.csv"
    assert all(removed[p]["sha256"] is None for p in sparse)
    assert not layout.root.exists()


@as_root
def test_a_bubble_whose_wipe_fails_is_reported_and_retried_and_holds_up_nothing_else(
        served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    site = served.site
    bubbles = site.platform.bubbles
    project(served, "projet-a")
    bubble_id = start(served, "projet-a").json()["id"]
    with site.platform.sessions.begin() as session:
        session.get(Bubble, bubble_id).expires_at = "2000-01-01T00:00:00.000000Z"
    (site.platform.settings.home / "bubbles" / "b-orphan").mkdir()
    wipe, failures = bubbles.runtime.delete, []

    def failing_once(bubble):
        if bubble == bubble_id and not failures:
            failures.append(bubble)
            raise RecursionError("maximum recursion depth exceeded")
        return wipe(bubble)

    monkeypatch.setattr(bubbles.runtime, "delete", failing_once)
    first = bubbles.reconcile()
    assert (bubble_id, "error") in first and ("b-orphan", "orphan_removed") in first
    assert state_of(site, bubble_id) == "deleting"
    assert bubbles.reconcile() == [(bubble_id, "deleted")]
    assert [a for a, _ in history(site, bubble_id)][-2:] == ["bubble.deleting", "bubble.deleted"]


@as_root
def test_a_disk_that_no_longer_mounts_is_still_wiped_and_the_record_says_it_was_not_listed(served: Served) -> None:
    site = served.site
    project(served, "projet-a")
    bubble_id = start(served, "projet-a").json()["id"]
    assert stop(served, bubble_id).status_code == 200  # unmounted: the next mount is the deletion's
    layout = site.platform.bubbles.runtime.layout(bubble_id)
    with layout.disk.open("r+b") as image:  # the ext4 superblock, gone
        image.seek(1024)
        image.write(bytes(1024))
    deleted = delete(served, bubble_id)
    assert deleted.status_code == 200 and deleted.json()["state"] == "deleted", deleted.text
    removed = history(site, bubble_id)[-1][1]["removed"]
    assert [(r["path"], r["kind"], r["sha256"]) for r in removed] == [("home", "disk image", None)]
    assert removed[0]["not_hashed"].startswith("its disk could not be mounted")
    assert not layout.root.exists()


# ------------------------------------------------------------------ the wipe's bounds, on any file system

def test_the_wipe_reads_within_its_budget_and_notes_a_file_that_changes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "a.txt").write_bytes(b"a" * 100)
    (home / "b.bin").write_bytes(b"b" * (2 << 20))
    (home / "c.txt").write_bytes(b"c" * 100)
    (home / "grows.txt").write_bytes(b"g" * 10)
    read = wiping.bounded_sha256

    def growing(handle, limit):
        if os.fstat(handle.fileno()).st_size == 10:  # someone writes while it is read
            with (home / "grows.txt").open("ab") as other:
                other.write(b"more")
        return read(handle, limit)

    monkeypatch.setattr(wiping, "bounded_sha256", growing)
    removed = {r.path: r for r in wiping.wipe(home, label="home", budget=1 << 20)}
    assert removed["home/a.txt"].sha256 == hashlib.sha256(b"a" * 100).hexdigest()
    assert removed["home/b.bin"].sha256 is None and removed["home/b.bin"].not_hashed.startswith("beyond")
    assert removed["home/c.txt"].sha256 == hashlib.sha256(b"c" * 100).hexdigest()  # the budget left still serves
    assert removed["home/grows.txt"].sha256 is None and removed["home/grows.txt"].not_hashed == "changed while it was read"
    assert not home.exists()


def test_recorded_paths_are_text_and_reversible() -> None:
    assert wiping.recorded_path((b"home", "résultat.csv".encode())) == ("home/résultat.csv", None)
    text, exact = wiping.recorded_path((b"home", b"caf\xe9", b"\xed\xa0\x80"))
    assert text == "home/caf\\xe9/\\xed\\xa0\\x80" and base64.b64decode(exact) == b"home/caf\xe9/\xed\xa0\x80"
    text.encode("utf-8")  # no lone surrogate: the audit event encodes
