"""Resource limits of a local bubble: cgroup v2 where the machine delegates it, cgroup v1
otherwise (as root), and a disk of its own for the home (an ext4 image on a loop device), so
that one bubble filling its disk or memory hurts only itself.

Per-bubble host users also give an RLIMIT_NPROC that counts only that bubble's processes.

Each site has its own parent cgroup, `bulles-<site>` (the digest of its runtime root), with its
bubbles' cgroups inside: two sites on one machine never share a parent, so one site's runtime
never creates, kills in or removes another's cgroups. The parent goes with the site's last
bubble (the kernel refuses to remove a cgroup that still has children), so a machine that ran
many sites keeps no empty ones.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PIDS_MAX = 512


@dataclass(frozen=True)
class CgroupPlan:
    """Files to write, per cgroup directory; pure, so the numbers are tested as data."""

    version: int
    writes: dict[str, dict[str, str]]  # cgroup directory -> {file: value}


def cgroup_version(root: Path = CGROUP_ROOT) -> int | None:
    """2 when the unified hierarchy has the memory, pids and cpu controllers; 1 when the v1
    memory, pids and cpu hierarchies are mounted; None when neither can be used."""
    controllers = root / "cgroup.controllers"
    if controllers.exists() and {"memory", "pids", "cpu"} <= set(controllers.read_text().split()):
        return 2
    if all((root / name / "cgroup.procs").exists() for name in ("memory", "pids", "cpu")):
        return 1
    return None


def site_group(site: str) -> str:
    """The parent cgroup of one site's bubbles."""
    return f"bulles-{site}"


def cgroup_plan(version: int, site: str, bubble: str, *, cpu: float, memory_mb: int,
                root: Path = CGROUP_ROOT) -> CgroupPlan:
    group = site_group(site)
    memory = str(memory_mb * 1024 * 1024)
    period = 100_000
    quota = str(max(1000, int(cpu * period)))
    if version == 2:
        return CgroupPlan(2, {str(root / group / bubble): {
            "memory.max": memory, "memory.swap.max": "0", "pids.max": str(PIDS_MAX), "cpu.max": f"{quota} {period}"}})
    return CgroupPlan(1, {
        str(root / "memory" / group / bubble): {"memory.limit_in_bytes": memory},
        str(root / "pids" / group / bubble): {"pids.max": str(PIDS_MAX)},
        str(root / "cpu" / group / bubble): {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": quota},
    })


def apply_cgroups(plan: CgroupPlan, attempts: int = 3) -> list[str]:
    """Create the cgroups and set their limits; the directories, for placing the sandbox. The
    site's parent goes with its last bubble (kill_cgroups): one removed between our steps is
    made again, whole, by the next attempt."""
    for attempt in range(attempts):
        try:
            return _apply_cgroups(plan)
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise
    raise AssertionError("unreachable")


def _apply_cgroups(plan: CgroupPlan) -> list[str]:
    if plan.version == 2:
        wanted = " ".join(f"+{c}" for c in ("memory", "pids", "cpu"))
        for directory in plan.writes:
            parent = Path(directory).parent  # the site's: its own parent enables the controllers
            parent.mkdir(exist_ok=True)
            for level in (parent.parent, parent):
                (level / "cgroup.subtree_control").write_text(wanted)
    for directory, files in plan.writes.items():
        Path(directory).mkdir(parents=True, exist_ok=True)
        for name, value in files.items():
            (Path(directory) / name).write_text(value)
    return list(plan.writes)


def memory_bytes(cgroups: list[str]) -> int | None:
    for directory in cgroups:
        for name in ("memory.current", "memory.usage_in_bytes"):
            path = Path(directory) / name
            if path.exists():
                return int(path.read_text())
    return None


def cgroup_pids(cgroups: list[str]) -> set[int]:
    found: set[int] = set()
    for directory in cgroups:
        path = Path(directory) / "cgroup.procs"
        if path.exists():
            found |= {int(p) for p in path.read_text().split()}
    return found


def kill_cgroups(cgroups: list[str], timeout: float = 5.0) -> None:
    """Kill everything in the bubble's cgroups (including what escaped its process tree), then
    remove them."""
    deadline = time.monotonic() + timeout
    while True:
        pids = cgroup_pids(cgroups)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.02)
    for directory in cgroups:
        for empty in (Path(directory), Path(directory).parent):  # the site's parent too, once it is empty
            try:
                os.rmdir(empty)
            except OSError:  # still in use (another bubble of the site), or gone already
                break


# ------------------------------------------------------------------ the home's own disk

def loop_disks_available() -> bool:
    return os.geteuid() == 0 and Path("/dev/loop-control").exists() and _which("mkfs.ext4") and _which("mount")


def _which(name: str) -> bool:
    from shutil import which

    return which(name) is not None


def make_disk(image: Path, mountpoint: Path, *, size_mb: int, owner: int) -> None:
    """A sparse ext4 image of the profile's size, owned by the bubble's user, mounted on its
    home (nosuid, nodev). Kept across stops; removed with the bubble."""
    if not image.exists():
        with image.open("wb") as handle:
            handle.truncate(size_mb * 1024 * 1024)
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", "-E", f"root_owner={owner}:{owner},lazy_itable_init=1",
              str(image)])
    mountpoint.mkdir(exist_ok=True)
    if not os.path.ismount(mountpoint):
        _run(["mount", "-o", "loop,nosuid,nodev", str(image), str(mountpoint)])


def release_disk(mountpoint: Path) -> None:
    if os.path.ismount(mountpoint):
        _run(["umount", "--lazy", str(mountpoint)])


def _run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        raise OSError(f"{' '.join(command[:2])}: {result.stderr.strip() or result.returncode}")
