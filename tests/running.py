"""`bulles` commands run as real processes, as a user runs them: their output read line by line
with bounded waits, stopped (or killed) by the test that started them."""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx


class Bulles:
    """One `python -m controller.cli ARGS` process, its stdout and stderr merged and collected."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env={**os.environ, "BULLES_HOME": "", **(env or {})})
        self.lines: list[str] = []
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line)
        self._queue.put(None)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120) -> re.Match[str]:
        """The first line from now on matching `pattern`; fails on exit or after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no line matching {pattern!r} within {timeout:g} s:\n{self.output}") from None
            if line is None:
                self._queue.put(None)
                raise AssertionError(f"exited ({self.proc.wait()}) before a line matching {pattern!r}:\n{self.output}")
            self.lines.append(line)
            found = re.search(pattern, line)
            if found:
                return found

    def finish(self, timeout: float = 120) -> int:
        """Wait for a command that ends by itself; its exit code, its whole output collected."""
        code = self.proc.wait(timeout)
        while (line := self._queue.get(timeout=10)) is not None:
            self.lines.append(line)
        self._queue.put(None)
        return code

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM, as a service manager stops it; SIGKILL if it does not stop in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(30)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} was not ready within {timeout:g} s")


def weed_processes(home: Path) -> list[int]:
    """Every SeaweedFS process working in `home`, found from /proc whoever started it."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline and cmdline[0].endswith(b"weed") and any(str(home).encode() in arg for arg in cmdline):
                found.append(int(entry.name))
    return found


def wait_gone(pids: list[int], timeout: float = 60) -> list[int]:
    """The pids still alive after up to `timeout` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
