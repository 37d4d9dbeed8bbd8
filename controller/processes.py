"""Processes found again from a record after their starter died, and stopped without ever
signalling another one.

A pid alone does not name a process for long: once it exits, the kernel hands the number to
the next process started. A record therefore also keeps the kernel's start time of the process
(field 22 of /proc/<pid>/stat, clock ticks since boot, fixed for its whole life) and the
executable it runs; a process is signalled only through a pidfd opened and checked against all
three, so that it cannot be swapped for another between the check and the signal.
"""

from __future__ import annotations

import os
import select
import signal
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_DELETED = " (deleted)"  # what /proc shows for an executable replaced since (a reinstall)


def start_time(pid: int) -> int | None:
    """The kernel's start time of `pid`, or None when there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may itself hold spaces or parentheses.
    return int(stat.rsplit(")", 1)[1].split()[19])


def executable(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(_DELETED)
    except OSError:
        return None


@dataclass(frozen=True)
class ProcessRecord:
    pid: int
    started: int
    exe: str

    @classmethod
    def of(cls, pid: int, exe: str | os.PathLike[str]) -> "ProcessRecord":
        """The record of a child just started to run `exe` (it may not have exec'd it yet)."""
        started = start_time(pid)
        if started is None:
            raise ProcessLookupError(pid)
        return cls(pid, started, os.path.realpath(exe))

    @classmethod
    def load(cls, data: Any) -> "ProcessRecord | None":
        """A record read back from JSON, or None when it is not one."""
        try:
            record = cls(int(data["pid"]), int(data["started"]), str(data["exe"]))
        except (KeyError, TypeError, ValueError):
            return None
        return record if record.pid > 0 else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def matches(self) -> bool:
        """Whether the process this record names is still running (and is still that one)."""
        return start_time(self.pid) == self.started and executable(self.pid) == self.exe


def stop(record: ProcessRecord, timeout: float) -> bool:
    """Stop the process `record` names: SIGTERM (and SIGCONT, should it be stopped), then SIGKILL
    after `timeout` seconds; True once it has exited, False when the record names no running
    process (it exited, or its pid now belongs to another process, which is left alone)."""
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return False
    try:
        if not record.matches():  # checked after opening: the pidfd now pins this process
            return False
        for sig in (signal.SIGTERM, signal.SIGCONT):
            signal.pidfd_send_signal(pidfd, sig)
        if not _exited(pidfd, timeout):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
            if not _exited(pidfd, 10.0):
                raise TimeoutError(f"process {record.pid} outlived SIGKILL")
        return True
    except ProcessLookupError:  # exited meanwhile
        return True
    finally:
        os.close(pidfd)


def _exited(pidfd: int, timeout: float) -> bool:
    """A pidfd becomes readable when its process exits, child of ours or not."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout) * 1000))
