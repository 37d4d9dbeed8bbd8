"""The local runtime: one bubblewrap sandbox per bubble on this machine (sandbox.py builds the
command, limits.py the cgroups and the home's disk). Needs root: per-bubble host users,
cgroups and loop mounts are root's to make. Sandboxes outlive the controller (they are not
its children for long: their own session, no parent-death signal) and are found again from
`sandbox.json`, checked against the kernel's start time of the process so that a recycled pid
is never mistaken for a bubble; so is an open bubble's slirp4netns, which also exits by itself
when its sandbox ends.

Several sites (controller homes) may share a machine: host uids come from a machine-wide
registry (uids.py), cgroups sit under a parent of the site's own (limits.py), and each site's
sockets under a directory of its own, all named by the digest of the runtime's root.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from controller.processes import start_time as _start_time
from controller.runtimes import limits, network
from controller.runtimes.base import (EXITED, MISSING, RUNNING, Endpoint, Removed, RuntimeFailure,
                                      RuntimeUnavailable, SandboxSpec, SandboxStatus)
from controller.runtimes.sandbox import (CONFIG_DIR, DATA_DIR, TOKEN_FILE, Handshake, Layout, bwrap_command,
                                         etc_files, jupyter_config, page_config, state_document)
from controller.runtimes.uids import UID_FILE, UidConflict, UidRegistry
from controller.runtimes.wipe import wipe

log = logging.getLogger(__name__)
NETWORK_TIMEOUT = 30.0  # for the sandbox to report its pid, and for slirp4netns to configure tap0
# Enter the cgroups given before `--`, then run the rest: nothing of the sandbox (or of its
# slirp4netns) ever runs outside its limits.
PLACE = 'while [ "$1" != -- ]; do echo $$ > "$1/cgroup.procs" || exit 97; shift; done; shift; exec "$@"'
REPO = Path(__file__).resolve().parents[2]
DEFAULT_ENV = REPO / ".venv-bubble"
SOCKETS = Path("/run/bulles")  # root only; one directory per controller home, one per bubble inside
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # where the tools are looked for and run from
HASH_BUDGET_WITHOUT_DISK = 10 * 1024**3  # bytes a deletion reads when the home has no disk of its own


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
    for tool, package in (("setpriv", "util-linux"), ("prlimit", "util-linux"), ("nsenter", "util-linux"),
                          ("slirp4netns", "slirp4netns"), ("ip", "iproute2"), ("sysctl", "procps")):
        if shutil.which(tool, path=PATH) is None:
            raise RuntimeUnavailable(f"{tool} ({package}) is missing: run `apt-get install {package}` "
                                     "(./dev.sh installs it when run as root)")
    if not list(python_env.glob("lib/python3*/site-packages/jupyter_server")):
        raise RuntimeUnavailable(f"the bubble environment {python_env} has no Jupyter Server: "
                                 "`./dev.sh` builds it from bubble_images/requirements.txt")


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class LocalRuntime:
    name = "local"

    def __init__(self, root: Path, python_env: Path = DEFAULT_ENV, uids: UidRegistry | None = None) -> None:
        check_available(python_env)
        self.root = root
        self.python_env = python_env.resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o700)  # only root enters: bubbles never see each other's directories
        self.site = hashlib.sha256(str(self.root.resolve()).encode()).hexdigest()[:12]
        self.sockets = SOCKETS / self.site  # made at the first start, removed with the last bubble
        self.uids = uids or UidRegistry()
        self._children: dict[str, subprocess.Popen] = {}
        self._slirps: dict[str, subprocess.Popen] = {}
        self._lock = threading.Lock()
        self.cgroups = limits.cgroup_version()
        self.disks = limits.loop_disks_available()
        self._register_uids()

    def _register_uids(self) -> None:
        """Bubbles made before the registry existed (or while it was lost) claim their uids
        now, before any other site may be given one of them."""
        for path in sorted(self.root.glob(f"*/{UID_FILE}")):
            try:
                self.uids.claim(path.parent)
            except (UidConflict, ValueError) as exc:
                log.error("bubble %s: %s; delete one of them", path.parent.name, exc)

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
        """The bubble's own host user, kept for its whole life (its files are owned by it), and
        no other bubble's on this machine, whatever its site."""
        return self.uids.claim(layout.root)

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
        # Jupyter's configuration and data directories are root's, read-only inside. The run
        # directory is root's too, sticky and writable by all (not listable): Jupyter creates its
        # socket there and deletes its own token file, but cannot rename or replace what root
        # put there (a configuration or data directory of its making would reach the gateway).
        config = layout.run / CONFIG_DIR
        files = {config / "jupyter_server_config.py": jupyter_config(),
                 config / "labconfig" / "page_config.json": json.dumps(page_config(), indent=2)}
        for directory in (config, config / "labconfig", layout.run / DATA_DIR):
            directory.mkdir()
            os.chmod(directory, 0o755)
        for path, text in files.items():
            path.write_text(text)
            os.chmod(path, 0o644)
        token = layout.run / TOKEN_FILE
        token.write_text(spec.token)
        os.chmod(token, 0o600)
        os.chown(token, uid, uid)
        os.chmod(layout.run, 0o1733)

    def create(self, spec: SandboxSpec) -> Endpoint:
        layout = self.layout(spec.bubble)
        if self.status(spec.bubble).state == RUNNING:
            raise RuntimeFailure(f"bubble {spec.bubble} is already running")
        layout.root.mkdir(mode=0o700, exist_ok=True)
        uid = self._uid(layout)
        self._prepare(spec, layout, uid)
        cgroups: list[str] = []
        if self.cgroups:
            plan = limits.cgroup_plan(self.cgroups, self.site, spec.bubble, cpu=spec.cpu, memory_mb=spec.memory_mb)
            cgroups = limits.apply_cgroups(plan)
        # An open bubble's sandbox reports its pid on one pipe, waits on another until its network
        # is set up, and holds a third open for as long as it lives: slirp4netns's exit pipe.
        ours: list[int] = []
        theirs: list[int] = []
        handshake = None
        if spec.network == "open":
            (info_r, info_w), (block_r, block_w), (exit_r, exit_w) = os.pipe(), os.pipe(), os.pipe()
            ours, theirs = [info_r, block_w, exit_r], [info_w, block_r, exit_w]
            handshake = Handshake(info=info_w, block=block_r, sync=exit_w)
        command = bwrap_command(spec, layout, python_env=self.python_env, python_base=python_base(self.python_env),
                                host_uid=uid, handshake=handshake)
        # The outer bubblewrap reads its arguments from a pipe: its command line, which the bubble
        # can read in /proc/1/cmdline, names none of the host's paths.
        split = command.index("--")
        read_end, write_end = os.pipe()
        os.write(write_end, b"".join(arg.encode() + b"\0" for arg in command[1:split]))
        os.close(write_end)
        # Then cap processes and file sizes per user.
        wrapper = _placed(cgroups, ["prlimit", f"--nproc={limits.PIDS_MAX}", f"--fsize={spec.disk_mb * 1024 * 1024}",
                                    "--core=0", "--", command[0], "--args", str(read_end), *command[split:]])
        try:
            with layout.log.open("ab") as log:
                child = subprocess.Popen(wrapper, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, pass_fds=(read_end, *theirs), env={"PATH": PATH})
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in (read_end, *theirs):
                os.close(fd)
        with self._lock:
            self._children[spec.bubble] = child
        started = _start_time(child.pid) or 0

        def record(slirp: tuple[int, int] | None = None) -> None:
            layout.state.write_text(state_document(spec, pid=child.pid, started=started, host_uid=uid, cgroups=cgroups,
                                                   disk_mounted=self.disks, slirp=slirp))

        record()  # first, so that whatever fails from here on finds the sandbox to kill
        if ours:
            info_r, block_w, exit_r = ours
            try:
                record(self._open_network(spec.bubble, layout, info_r, exit_r, cgroups))
                os.write(block_w, b"1")
            except BaseException:
                self._kill(spec.bubble)  # before it reads the end of its pipe and goes on without a network
                raise
            finally:
                for fd in ours:
                    os.close(fd)
        return Endpoint("unix", str(layout.socket))

    def _open_network(self, bubble: str, layout: Layout, info: int, exit_fd: int, cgroups: list[str]) -> tuple[int, int]:
        """Isolate the waiting sandbox's network namespace (network.py), then attach slirp4netns
        to it, in the bubble's cgroups; its (pid, start time) once tap0 is configured."""
        if not Path("/dev/net/tun").exists():
            raise RuntimeFailure("open bubbles need /dev/net/tun (the tun kernel module) for slirp4netns")
        try:
            pid = int(json.loads(_read(info, NETWORK_TIMEOUT))["child-pid"])
        except (ValueError, KeyError, TypeError) as exc:
            raise RuntimeFailure(f"the sandbox did not report its pid: {exc}") from None
        _run(network.in_namespace(pid, ["sysctl", "-q", "-w", *network.IPV6_OFF]))
        _run(network.in_namespace(pid, ["ip", "-batch", "-"]), network.isolation_batch(_host_addresses()))
        ready_r, ready_w = os.pipe()
        try:
            try:
                with layout.network_log.open("ab") as log:
                    slirp = subprocess.Popen(_placed(cgroups, network.slirp_command(pid, exit_fd=exit_fd, ready_fd=ready_w)),
                                             stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, pass_fds=(exit_fd, ready_w), env={"PATH": PATH})
            finally:
                os.close(ready_w)
            with self._lock:
                self._slirps[bubble] = slirp
            found = (slirp.pid, _start_time(slirp.pid) or 0)
            if _read(ready_r, NETWORK_TIMEOUT, want=1) != b"1":
                tail = _last_line(layout.network_log)
                raise RuntimeFailure("slirp4netns did not configure the bubble's network"
                                     + (f": {tail}" if tail else ""))
            return found
        finally:
            os.close(ready_r)

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
        tail = _last_line(self.layout(bubble).log)
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
            slirp = state.get("slirp")  # it exits with the sandbox anyway; this one is not left to chance
            if slirp and _start_time(slirp["pid"]) == slirp["started"]:
                _signal(slirp["pid"], signal.SIGKILL)
            limits.kill_cgroups(state.get("cgroups", []))
        with self._lock:
            child = self._children.pop(bubble, None)
            slirp_child = self._slirps.pop(bubble, None)
        if slirp_child is not None:
            slirp_child.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                slirp_child.wait(10)
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


def _placed(cgroups: list[str], argv: list[str]) -> list[str]:
    return ["sh", "-c", PLACE, "sh", *cgroups, "--", *argv]


def _read(fd: int, timeout: float, *, want: int | None = None) -> bytes:
    """What a pipe gives until its writer closes it (or `want` bytes came); a RuntimeFailure
    past the timeout, so that a sandbox that never reports cannot hold a start for ever."""
    data = b""
    deadline = time.monotonic() + timeout
    while want is None or len(data) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise RuntimeFailure(f"the bubble's network was not ready within {timeout:g} s")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data


def _run(argv: list[str], stdin: str | None = None) -> str:
    """A host tool's output; a RuntimeFailure naming the tool and its complaint."""
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=NETWORK_TIMEOUT,
                              env={"PATH": PATH})
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"{argv[0]} did not finish within {NETWORK_TIMEOUT:g} s") from None
    if done.returncode != 0:
        tool = argv[argv.index("--") + 1] if "--" in argv else argv[0]
        raise RuntimeFailure(f"setting up the bubble's network: {tool}: {done.stderr.strip()[:300]}")
    return done.stdout


def _host_addresses() -> list[str]:
    """The host's own IPv4 addresses, now: an open bubble gets no route to any of them."""
    links = json.loads(_run(["ip", "-j", "-4", "address", "show"]) or "[]")
    return [a["local"] for link in links for a in link.get("addr_info", []) if "local" in a]


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
