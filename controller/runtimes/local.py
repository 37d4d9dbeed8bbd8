"""The local runtime: one bubblewrap sandbox per bubble on this machine (sandbox.py builds the
command, limits.py the cgroups and the home's disk). Needs root: per-bubble host users,
cgroups and loop mounts are root's to make. Sandboxes outlive the controller (they are not
its children for long: their own session, no parent-death signal) and are found again from
`sandbox.json`, checked against the kernel's start time of the process so that a recycled pid
is never mistaken for a bubble.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from controller.runtimes import limits
from controller.runtimes.base import (EXITED, MISSING, RUNNING, Endpoint, Removed, RuntimeFailure,
                                      RuntimeUnavailable, SandboxSpec, SandboxStatus)
from controller.runtimes.sandbox import TOKEN_FILE, Layout, bwrap_command, etc_files, jupyter_config, state_document
from controller.runtimes.wipe import wipe

UID_BASE = 200_000
UID_RANGE = 50_000
REPO = Path(__file__).resolve().parents[2]
DEFAULT_ENV = REPO / ".venv-bubble"
SOCKETS = Path("/run/bulles")  # root only; one directory per controller home, one per bubble inside
HASH_BUDGET_WITHOUT_DISK = 10 * 1024**3  # bytes a deletion reads when the home has no disk of its own
log = logging.getLogger(__name__)


def python_base(python_env: Path) -> Path:
    """The Python installation a venv was made from (its pyvenv.cfg `home`, minus bin/)."""
    config = python_env / "pyvenv.cfg"
    if config.exists():
        for line in config.read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "home":
                return Path(value.strip()).parent
    return Path(sys.base_prefix)


def check_available(python_env: Path) -> None:
    """A clear error, saying how to fix it, when bubbles cannot run here."""
    if shutil.which("bwrap") is None:
        raise RuntimeUnavailable("bubblewrap is not installed: run `apt-get install bubblewrap` "
                                 "(./dev.sh installs it when run as root)")
    if os.geteuid() != 0:
        raise RuntimeUnavailable("the local runtime needs root: it gives each bubble its own host user, "
                                 "cgroups and disk; run the controller as root or use another runtime")
    for tool in ("setpriv", "prlimit"):
        if shutil.which(tool) is None:
            raise RuntimeUnavailable(f"{tool} (util-linux) is missing: run `apt-get install util-linux`")
    if not list(python_env.glob("lib/python3*/site-packages/jupyter_server")):
        raise RuntimeUnavailable(f"the bubble environment {python_env} has no Jupyter Server: "
                                 "`./dev.sh` builds it from bubble_images/requirements.txt")


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class LocalRuntime:
    name = "local"

    def __init__(self, root: Path, python_env: Path = DEFAULT_ENV) -> None:
        check_available(python_env)
        self.root = root
        self.python_env = python_env.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # only root enters: bubbles never see each other's directories
        digest = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.sockets = SOCKETS / digest  # made at the first start, removed with the last bubble
        self._children: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self.cgroups = limits.cgroup_version()
        self.disks = limits.loop_disks_available()

    def layout(self, bubble: str) -> Layout:
        if not bubble.replace("-", "").isalnum():
            raise RuntimeFailure(f"not a bubble id: {bubble!r}")
        return Layout(self.root / bubble, self.sockets)

    def outbox(self, bubble: str) -> Path:
        return self.layout(bubble).home / "outbox"

    def _state(self, bubble: str) -> dict | None:
        try:
            return json.loads(self.layout(bubble).state.read_text())
        except (OSError, ValueError):
            return None

    def _uid(self, layout: Layout) -> int:
        """The bubble's own host user, kept for its whole life (its files are owned by it)."""
        path = layout.root / "uid"
        with self._lock:  # concurrent starts: one allocation at a time, each file whole when seen
            if path.exists():
                return int(path.read_text())
            taken = {int(p.read_text()) for p in self.root.glob("*/uid")}
            uid = next(u for u in range(UID_BASE, UID_BASE + UID_RANGE) if u not in taken)
            staging = layout.root / ".uid"
            staging.write_text(str(uid))
            os.rename(staging, path)
            return uid

    def _prepare(self, spec: SandboxSpec, layout: Layout, uid: int) -> None:
        layout.root.mkdir(mode=0o700, exist_ok=True)
        if self.disks:
            limits.make_disk(layout.disk, layout.home, size_mb=spec.disk_mb, owner=uid)
            lost = layout.home / "lost+found"
            if lost.exists():
                shutil.rmtree(lost)
        else:
            layout.home.mkdir(exist_ok=True)
        os.chown(layout.home, uid, uid)
        os.chmod(layout.home, 0o700)
        outbox = layout.home / "outbox"
        outbox.mkdir(exist_ok=True)
        os.chown(outbox, uid, uid)
        layout.etc.mkdir(exist_ok=True)
        for name, text in etc_files(spec).items():
            (layout.etc / name).write_text(text)
            os.chmod(layout.etc / name, 0o644)
        if layout.run.exists():
            shutil.rmtree(layout.run)
        SOCKETS.mkdir(mode=0o700, exist_ok=True)
        self.sockets.mkdir(mode=0o700, exist_ok=True)
        layout.run.mkdir(mode=0o700)
        config = layout.run / "config"
        config.mkdir(mode=0o755)
        (config / "jupyter_server_config.py").write_text(jupyter_config())
        token = layout.run / TOKEN_FILE
        token.write_text(spec.token)
        os.chmod(token, 0o600)
        os.chown(token, uid, uid)
        os.chown(layout.run, uid, uid)

    def create(self, spec: SandboxSpec) -> Endpoint:
        layout = self.layout(spec.bubble)
        if self.status(spec.bubble).state == RUNNING:
            raise RuntimeFailure(f"bubble {spec.bubble} is already running")
        layout.root.mkdir(mode=0o700, exist_ok=True)
        uid = self._uid(layout)
        self._prepare(spec, layout, uid)
        cgroups: list[str] = []
        if self.cgroups:
            plan = limits.cgroup_plan(self.cgroups, spec.bubble, cpu=spec.cpu, memory_mb=spec.memory_mb)
            cgroups = limits.apply_cgroups(plan)
        command = bwrap_command(spec, layout, python_env=self.python_env, python_base=python_base(self.python_env),
                                host_uid=uid)
        # Enter the cgroups before anything else runs, then cap processes and file sizes per user.
        place = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; shift; exec "$@"'
        # The outer bubblewrap reads its arguments from a pipe: its command line, which the bubble
        # can read in /proc/1/cmdline, names none of the host's paths.
        split = command.index("--")
        read_end, write_end = os.pipe()
        os.write(write_end, b"".join(arg.encode() + b"\0" for arg in command[1:split]))
        os.close(write_end)
        wrapper = ["sh", "-c", place, "sh", *cgroups, "--", "prlimit", f"--nproc={limits.PIDS_MAX}",
                   f"--fsize={spec.disk_mb * 1024 * 1024}", "--core=0", "--", command[0], "--args", str(read_end), *command[split:]]
        try:
            with layout.log.open("ab") as log:
                child = subprocess.Popen(wrapper, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, pass_fds=(read_end,),
                                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        finally:
            os.close(read_end)
        with self._lock:
            self._children[spec.bubble] = child
        started = _start_time(child.pid) or 0
        layout.state.write_text(state_document(spec, pid=child.pid, started=started, host_uid=uid, cgroups=cgroups,
                                               disk_mounted=self.disks))
        return Endpoint("unix", str(layout.socket))

    def status(self, bubble: str) -> SandboxStatus:
        state = self._state(bubble)
        if state is None:
            return SandboxStatus(bubble, MISSING)
        pid = state["pid"]
        with self._lock:
            child = self._children.get(bubble)
        code = child.poll() if child is not None else None
        alive = code is None and _start_time(pid) == state["started"] and Path(f"/proc/{pid}").exists()
        if alive:
            return SandboxStatus(bubble, RUNNING, endpoint=Endpoint("unix", str(self.layout(bubble).socket)),
                                 memory_bytes=limits.memory_bytes(state.get("cgroups", [])))
        return SandboxStatus(bubble, EXITED, reason=self._exit_reason(bubble, code))

    def _exit_reason(self, bubble: str, code: int | None) -> str:
        tail = ""
        try:
            lines = self.layout(bubble).log.read_text(errors="replace").strip().splitlines()
            tail = lines[-1][:300] if lines else ""
        except OSError:
            pass
        if code is not None and code < 0:
            what = f"killed by signal {signal.Signals(-code).name}"
        elif code is not None:
            what = f"exited with code {code}"
        else:
            what = "the sandbox is gone"
        return f"{what}{': ' + tail if tail else ''}"

    def _kill(self, bubble: str) -> None:
        state = self._state(bubble)
        if state is not None:
            pid = state["pid"]
            if _start_time(pid) == state["started"]:
                # The outer bubblewrap's child is init of the bubble's PID namespace: killing it
                # kills every process in the bubble.
                for child in _children(pid):
                    for grandchild in _children(child):
                        _signal(grandchild, signal.SIGKILL)
                    _signal(child, signal.SIGKILL)
                _signal(pid, signal.SIGKILL)
            limits.kill_cgroups(state.get("cgroups", []))
        with self._lock:
            child = self._children.pop(bubble, None)
        if child is not None:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                pass
        elif state is not None:
            deadline = time.monotonic() + 10
            while _start_time(state["pid"]) == state["started"] and time.monotonic() < deadline:
                time.sleep(0.02)

    def stop(self, bubble: str) -> None:
        layout = self.layout(bubble)
        self._kill(bubble)
        layout.state.unlink(missing_ok=True)
        limits.release_disk(layout.home)
        self._remove_run(layout)

    def delete(self, bubble: str) -> list[Removed]:
        """Kill, then wipe (see runtimes.wipe): every entry of the home listed, read within a
        budget of the disk's size, then the rest of the bubble's directory. The files the
        controller made (etc, the disk image, the socket directory) are listed only when left."""
        layout = self.layout(bubble)
        self._kill(bubble)
        budget, unlisted = HASH_BUDGET_WITHOUT_DISK, []
        if layout.disk.exists():
            image = layout.disk.stat()
            budget = image.st_size
            if not os.path.ismount(layout.home):
                try:
                    limits.make_disk(layout.disk, layout.home, size_mb=1, owner=0)  # mount to list what goes
                except OSError as exc:
                    log.warning("bubble %s: its disk could not be mounted to list what it holds: %s", bubble, exc)
                    why = "its disk could not be mounted: the files on it were not listed"
                    unlisted = [Removed("home", None, image.st_size, image.st_blocks * 512, "disk image",
                                        not_hashed=why)]
        removed = unlisted + wipe(layout.home, label="home", budget=budget, remove_directory=False)
        try:
            limits.release_disk(layout.home)
        except OSError as exc:  # the walk below does not enter it, and says so
            log.warning("bubble %s: its home could not be unmounted: %s", bubble, exc)
        removed += [r for r in wipe(layout.root, label="", budget=0) if r.not_removed]
        return removed + self._remove_run(layout)

    def _remove_run(self, layout: Layout) -> list[Removed]:
        """The socket directory, which the bubble could write in: what could not be removed."""
        left = [r for r in wipe(layout.run, label="run", budget=0) if r.not_removed]
        with contextlib.suppress(OSError):  # still holds other bubbles' sockets
            self.sockets.rmdir()
        return left

    def list(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
