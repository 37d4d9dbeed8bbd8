"""Host users of bubbles, allocated machine-wide: no two bubbles of any site on this machine
ever run as, or own files as, the same host uid.

Each site's local runtime has its own root (its home's `bubbles/`), but uids are the machine's.
The registry is one directory, /var/lib/bulles/uids, holding a file per uid in use that names
the bubble directory owning it; allocations take an exclusive `flock` on the directory's lock
file, so concurrent starts in one controller, in two sites or in a CLI beside a server never
pick the same uid. Each bubble also keeps its uid in its own directory (`uid`), so that it
keeps the same one for its whole life, across stops and controller restarts.

Why a registry and not a block of uids per site derived from its path: blocks collide (two
paths hashing to the same block) unless checked against each other, which needs this registry
anyway, and they cap how many bubbles one site may have.

It lives under /var/lib, not /run, because it must survive a reboot: a stopped bubble's home
(its disk image, with files owned by its uid) survives it too. A uid is free again once nothing
the bubble owned is left: its directory is gone (deletion removes it last, after the home) and
no process runs as that uid. That is checked when an allocation meets the entry, so a deletion
needs no step of its own and a crash in the middle of one never frees a uid too early.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from controller.runtimes.base import RuntimeFailure

log = logging.getLogger(__name__)
REGISTRY = Path("/var/lib/bulles/uids")
UID_BASE = 200_000
UID_RANGE = 50_000
UID_FILE = "uid"  # in each bubble's directory


class UidsExhausted(RuntimeFailure):
    """Every uid of the range belongs to a bubble that still has something on this machine."""


class UidConflict(RuntimeFailure):
    """A bubble's recorded uid is registered to another bubble that still exists."""


def _processes_of(uid: int) -> bool:
    """Whether any process runs with this uid (real, effective, saved or file-system)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            for line in status.read_text().splitlines():
                if line.startswith("Uid:"):
                    if str(uid) in line.split()[1:]:
                        return True
                    break
        except OSError:
            continue  # the process ended while we looked
    return False


class UidRegistry:
    def __init__(self, directory: Path = REGISTRY, base: int = UID_BASE, size: int = UID_RANGE) -> None:
        self.directory = directory
        self.base, self.size = base, size

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _holder(self, uid: int) -> Path | None:
        """The bubble directory the registry names for this uid, if it still holds it."""
        try:
            owner = Path((self.directory / str(uid)).read_text().strip())
        except OSError:
            return None
        try:
            held = (owner / UID_FILE).read_text().strip() == str(uid)
        except OSError:
            held = owner.exists()  # a directory without its uid file: half made or half removed
        return owner if held else None

    def _free(self, uid: int) -> bool:
        """No bubble directory holds it and no process runs as it (a bubble of a site that has
        not registered its uids yet, or anything else on the machine that uses the uid)."""
        return self._holder(uid) is None and not _processes_of(uid)

    def _register(self, uid: int, owner: Path) -> None:
        staging = self.directory / f".{uid}"
        staging.write_text(f"{owner}\n")
        os.replace(staging, self.directory / str(uid))

    def claim(self, bubble_root: Path) -> int:
        """The uid of the bubble whose directory is `bubble_root`: its own if it has one
        (registered again if the registry lost it), else the lowest free uid, recorded in the
        registry first and then in the bubble's directory."""
        owner = bubble_root.resolve()
        path = bubble_root / UID_FILE
        with self._locked():
            if path.exists():
                uid = int(path.read_text())
                holder = self._holder(uid)
                if holder is None:
                    self._register(uid, owner)
                elif holder != owner:
                    # no paths in the message: it may end up in a bubble's reason, shown to its researchers
                    log.error("uid %s of %s is also held by %s", uid, owner, holder)
                    raise UidConflict(f"uid {uid} of bubble {owner.name} is also held by another bubble on this machine")
                return uid
            for uid in range(self.base, self.base + self.size):
                if self._free(uid):
                    self._register(uid, owner)
                    staging = bubble_root / f".{UID_FILE}"
                    staging.write_text(str(uid))
                    os.replace(staging, path)
                    return uid
        raise UidsExhausted(f"all {self.size} bubble uids from {self.base} are in use on this machine")
