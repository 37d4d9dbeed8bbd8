"""Crash and restart, with real processes: a controller killed with SIGKILL takes its SeaweedFS
along, and what a crash leaves behind (a warehouse that outlived it, half-built views, its port
taken meanwhile) does not stop the next start; one warehouse per home, which a command run
beside a serving site uses without disturbing it."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import ROOT, free_port
from connectors.seaweed import SeaweedError, SeaweedFS, WarehouseBusy, attach, ensure_bucket, find_weed, s3_client, upload
from controller import views
from controller.config import load_settings
from controller.home import init_home
from controller.platform import Platform
from controller.processes import start_time
from running import Bulles, wait_gone, wait_ready, weed_processes

NO_BUBBLES = {"BULLES_RUNTIME": "none"}  # bubbles have their own restart tests (test_bubbles.py)
OPEN_DATA = ROOT / "catalog" / "demo" / "opendata" / "fr-en-ips-colleges-ap2022.csv"


def _serve(home: Path) -> tuple[Bulles, str]:
    port = free_port()
    site = Bulles("serve", "--home", str(home), "--port", str(port), env=NO_BUBBLES)
    site.wait_for(r"bulles API: ")
    wait_ready(f"http://127.0.0.1:{port}")
    return site, f"http://127.0.0.1:{port}"


def _children(pid: int) -> list[str]:
    return [child for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def _run_dir(weed: int) -> Path:
    """Where a running SeaweedFS keeps its Unix sockets (in its directory, or in /tmp when that
    path is too long for a socket name), read from its command line."""
    for arg in Path(f"/proc/{weed}/cmdline").read_bytes().decode().split("\0"):
        if arg.startswith("-filer.localSocket="):
            return Path(arg.split("=", 1)[1]).parent
    raise AssertionError("no -filer.localSocket option")


def _reap_weeds(home: Path) -> None:
    """What a failing test may have left: SeaweedFS processes it started, through its controller."""
    for pid in weed_processes(home):
        os.kill(pid, signal.SIGKILL)
        os.kill(pid, signal.SIGCONT)


def test_a_controller_killed_with_sigkill_takes_its_warehouse_along_and_starts_again(tmp_path: Path) -> None:
    home = tmp_path / "home"
    site, _ = _serve(home)
    try:
        weeds = weed_processes(home)
        assert len(weeds) == 1
        assert _children(weeds[0]) == []  # `weed mini` serves from one process and forks none
        creds = attach(home / "seaweedfs", timeout=30)
        ensure_bucket(creds, "kept")
        upload(creds, "kept", "ips.csv", OPEN_DATA)

        site.kill()  # SIGKILL: no handler runs, no `with` block unwinds
        assert wait_gone(weeds) == [], "the warehouse outlived its controller"
        # What a view build cut short by the crash leaves, beside a view that was finished.
        root = views.views_root(home)
        finished = root / ("a" * 32)
        finished.mkdir(parents=True)
        (finished / views.MANIFEST).write_text("{}")
        half_built = Path(tempfile.mkdtemp(prefix=f".{'b' * 32}-", dir=root))
        (half_built / views.DATA_FILE).write_bytes(b"PAR1 cut short")

        site, url = _serve(home)
        assert httpx.get(f"{url}/api/v1/sources", timeout=10).status_code == 200
        assert not half_built.exists() and (finished / views.MANIFEST).exists()
        again = attach(home / "seaweedfs", timeout=30)
        assert s3_client(again).get_object("kept", "ips.csv").read() == OPEN_DATA.read_bytes()
    finally:
        site.stop()
        _reap_weeds(home)


def test_a_warehouse_that_outlives_its_killed_controller_is_stopped_by_the_next_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    site, _ = _serve(home)
    try:
        [weed] = weed_processes(home)
        started = start_time(weed)
        os.kill(weed, signal.SIGSTOP)  # a stopped process keeps its parent-death SIGTERM pending
        site.kill()
        assert start_time(weed) == started, "the stopped warehouse should have outlived its controller"

        site, url = _serve(home)
        # gone (a zombie, should nobody have reaped it yet, or its pid reused by another process)
        assert start_time(weed) != started or wait_gone([weed], timeout=0) == []
        [new] = [pid for pid in weed_processes(home) if wait_gone([pid], timeout=0)]
        assert (new, start_time(new)) != (weed, started)
        assert f"stopped pid {weed}, left running by a previous starter" in (home / "seaweedfs" / "weed.log").read_text()
        assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    finally:
        site.stop()
        _reap_weeds(home)


@pytest.mark.parametrize("record", ["pid reused since", "forged with the start time"])
def test_a_pid_file_naming_another_process_never_gets_it_signalled(tmp_path: Path, record: str) -> None:
    """A recorded SeaweedFS that died long ago, its pid since given to an unrelated process (or a
    record made up to name one): the next start leaves that process alone."""
    directory = tmp_path / "sw"
    directory.mkdir()
    bystander = subprocess.Popen(["sleep", "600"])
    try:
        started = start_time(bystander.pid)
        assert started is not None
        (directory / "weed.pid").write_text(json.dumps({
            "pid": bystander.pid, "started": started - 1 if record == "pid reused since" else started,
            "exe": os.path.realpath(find_weed()), "owner": 1, "ports": {}, "endpoint": None}))
        with SeaweedFS(directory, stop_timeout=5) as server:
            s3_client(server.credentials()).list_buckets()
            assert json.loads((directory / "weed.pid").read_text())["pid"] == server._proc.pid
        assert bystander.poll() is None, "an unrelated process was signalled"
    finally:
        bystander.kill()
        bystander.wait()


def test_a_warehouse_started_from_a_thread_that_ends_keeps_running(tmp_path: Path) -> None:
    """The parent-death signal follows the thread that forked, not the process: a warehouse
    started from a passing thread must not stop when that thread ends."""
    server = SeaweedFS(tmp_path / "sw")
    starter = threading.Thread(target=server.start)
    starter.start()
    starter.join(120)
    try:
        assert server.running
        with pytest.raises(subprocess.TimeoutExpired):
            server._proc.wait(timeout=5)
        s3_client(server.credentials()).list_buckets()
    finally:
        server.stop()


def _state(directory: Path, run_dir: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of what a rival start would rewrite or remove: identity, keys, sockets."""
    paths = [directory / "s3.json", directory / "config" / "security.toml", directory / "weed.pid",
             *run_dir.iterdir()]
    return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


def wait_stopped(pid: int, timeout: float = 30.0) -> None:
    """Until every thread of `pid` is stopped: SIGSTOP is sent at once but taken by each thread
    in its turn, and a thread still running may answer one more request."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = [Path(f"/proc/{pid}/task/{t}/stat").read_text().rsplit(")", 1)[1].split()[0]
                  for t in os.listdir(f"/proc/{pid}/task")]
        if all(state == "T" for state in states):
            return
        time.sleep(0.01)
    raise AssertionError(f"process {pid} did not stop")


def test_a_second_starter_on_a_running_warehouse_is_refused_touches_nothing_and_can_attach(tmp_path: Path) -> None:
    directory = tmp_path / "sw"
    with SeaweedFS(directory) as running:
        assert running._run_dir is not None and any(p.is_socket() for p in running._run_dir.iterdir())
        before = _state(directory, running._run_dir)
        with pytest.raises(WarehouseBusy, match=f"already run by process {os.getpid()}"):
            SeaweedFS(directory).start()
        assert _state(directory, running._run_dir) == before
        assert attach(directory, timeout=30) == running.credentials()

        os.kill(running._proc.pid, signal.SIGSTOP)
        try:
            wait_stopped(running._proc.pid)
            with pytest.raises(SeaweedError, match="but it does not answer at http://127.0.0.1:"):
                attach(directory, timeout=1)
        finally:
            os.kill(running._proc.pid, signal.SIGCONT)
        s3_client(running.credentials()).list_buckets()
    with pytest.raises(SeaweedError, match="no process runs"):
        attach(directory, timeout=1)


def test_only_half_built_views_are_removed_at_start(tmp_path: Path) -> None:
    home = tmp_path / "home"
    init_home(home)
    root = views.views_root(home)
    finished = root / ("a" * 32)
    finished.mkdir(parents=True)
    (finished / views.MANIFEST).write_text("{}")
    (finished / views.DATA_FILE).write_bytes(b"PAR1")
    half_built = Path(tempfile.mkdtemp(prefix=f".{'b' * 32}-", dir=root))
    (half_built / views.DATA_FILE).write_bytes(b"PAR1 cut short")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the views' to remove")
    link = root / f".{'c' * 32}-linked00"  # a staging name, but a link to outside the root
    link.symlink_to(elsewhere, target_is_directory=True)
    unknown = root / ".not-a-view"
    unknown.mkdir()
    beside = home / f".{'d' * 32}-beside00"  # a staging name, but not in the views root
    beside.mkdir()
    settings = load_settings(home, runtime="none", checkpoint_interval_seconds=0, reconcile_seconds=0)

    building = views._building(root)  # a build under way (in any process) keeps its directory
    try:
        with Platform(settings):
            pass
        assert half_built.exists()
    finally:
        building.close()
    with Platform(settings):
        pass
    assert not half_built.exists()
    assert (finished / views.MANIFEST).exists() and (finished / views.DATA_FILE).exists()
    assert link.is_symlink() and (elsewhere / "keep.txt").exists()
    assert unknown.is_dir() and beside.is_dir()


def _demo(home: Path, *args: str) -> Bulles:
    return Bulles("demo", "--home", str(home), "--pupils", "50", *args, env=NO_BUBBLES)


def _listening_line(demo: Bulles) -> re.Match[str]:
    return demo.wait_for(r"^bulles demo: listening on http://127\.0\.0\.1:(\d+)( \(port (\d+) is taken)?")


def test_the_demo_holds_its_port_from_the_start_and_keeps_it_across_restarts(tmp_path: Path) -> None:
    home, port = tmp_path / "home", free_port()
    demo = _demo(home, "--port", str(port))
    try:
        assert int(_listening_line(demo).group(1)) == port
        # Announced before the warehouse starts and the demo is seeded: from then on nobody
        # else can take the port, and a client that connects now is answered once it serves.
        with pytest.raises(OSError):
            socket.create_server(("127.0.0.1", port))
        early = socket.create_connection(("127.0.0.1", port), timeout=120)
        early.sendall(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        demo.wait_for(r"Press Ctrl\+C")
        with early:
            assert early.recv(64).startswith(b"HTTP/1.1 200")
        assert demo.stop() == 0

        demo = _demo(home)  # no --port: the last run's
        assert int(_listening_line(demo).group(1)) == port
        demo.wait_for(r"Press Ctrl\+C")
        assert demo.stop() == 0

        with socket.create_server(("127.0.0.1", port)):  # another site took it meanwhile
            demo = _demo(home)
            moved = _listening_line(demo)
            other = int(moved.group(1))
            assert other != port and moved.group(3) == str(port)
            docs = demo.wait_for(r"API docs:\s+(\S+)")
            assert docs.group(1) == f"http://127.0.0.1:{other}/docs" and f"port {port} is taken" in docs.string
            demo.wait_for(r"Press Ctrl\+C")
            wait_ready(f"http://127.0.0.1:{other}")
            assert demo.stop() == 0
    finally:
        demo.stop()
        _reap_weeds(home)


def test_view_build_beside_a_running_demo_reads_through_its_warehouse_and_leaves_it_working(tmp_path: Path) -> None:
    home = tmp_path / "home"
    demo = _demo(home)
    try:
        url = f"http://127.0.0.1:{_listening_line(demo).group(1)}"
        demo.wait_for(r"Press Ctrl\+C")
        alice = re.search(r"alice\s+(blt_\S+)", demo.output).group(1)
        weeds = weed_processes(home)
        directory = home / "seaweedfs"
        run_dir = _run_dir(weeds[0])
        before = _state(directory, run_dir)

        build = Bulles("view", "build", "eleves-synthetiques", "--mode", "pseudonymised", "--project", "p-restart",
                       "--home", str(home), env=NO_BUBBLES)
        assert build.finish() == 0, build.output
        assert '"row_count": 50' in build.output

        assert weed_processes(home) == weeds and _state(directory, run_dir) == before
        probe = httpx.get(f"{url}/api/v1/sources/eleves-synthetiques/probe",
                          headers={"Authorization": f"Bearer {alice}"}, timeout=30)
        assert probe.status_code == 200 and probe.json()["rows"] == 50

        # A second site on the same home is refused, saying why, and changes nothing either.
        rival = Bulles("serve", "--home", str(home), "--port", "0", env=NO_BUBBLES)
        assert rival.finish() == 1
        assert f"already run by process {demo.proc.pid}" in rival.output and "another --home" in rival.output
        assert weed_processes(home) == weeds and _state(directory, run_dir) == before
        assert httpx.get(f"{url}/api/v1/sources/eleves-synthetiques/probe",
                         headers={"Authorization": f"Bearer {alice}"}, timeout=30).status_code == 200
    finally:
        demo.stop()
        _reap_weeds(home)
