"""The runtime interface: what the controller asks of any place bubbles run.

The controller owns the desired state (the `bubbles` table); a runtime only starts, reports,
stops and wipes sandboxes, and lists the ones it has so that a restarted controller can adopt
them or clean them up. The gateway reaches a bubble's Jupyter through an `Endpoint`: a Unix
socket for the local runtime, an address inside the cluster for Kubernetes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

Network = Literal["none", "open"]
RUNNING, EXITED, MISSING = "running", "exited", "missing"


class RuntimeFailure(Exception):
    """A runtime could not do what was asked; the message says what and how to fix it."""


class RuntimeUnavailable(RuntimeFailure):
    """The runtime cannot work on this machine (a missing tool, missing privileges)."""


@dataclass(frozen=True)
class Endpoint:
    kind: Literal["unix", "http"]
    address: str  # a socket path, or a base URL


@dataclass(frozen=True)
class SandboxSpec:
    """Everything a runtime needs to start one bubble; built from the policy's profile."""

    bubble: str
    project: str
    network: Network
    cpu: float
    memory_mb: int
    disk_mb: int
    base_url: str  # where the gateway serves it: /bubbles/<id>/
    token: str  # Jupyter's token: known to the gateway, never shown to the researcher
    views: dict[str, Path] = field(default_factory=dict)  # name under /data -> view directory


@dataclass(frozen=True)
class SandboxStatus:
    bubble: str
    state: Literal["running", "exited", "missing"]
    reason: str | None = None
    endpoint: Endpoint | None = None
    memory_bytes: int | None = None


@dataclass(frozen=True)
class Removed:
    """One entry wiped with a bubble (a file, a link, a fifo...; directories only when left
    behind): the deletion record lists them. Never fails to encode: `path` is text even for a
    name that is not UTF-8, whose exact bytes are then in `path_base64`."""

    path: str  # relative to the bubble's directory: home/...
    sha256: str | None  # None when not read; `not_hashed` says why
    bytes: int  # apparent size
    allocated: int = 0  # what the file system holds for it (st_blocks x 512): what was written
    kind: str = "file"  # file, symlink, fifo, socket, character device, block device, directory, disk image, other
    path_base64: str | None = None
    not_hashed: str | None = None
    not_removed: str | None = None  # why it is still there


class Runtime(Protocol):
    name: str

    def create(self, spec: SandboxSpec) -> Endpoint:
        """Start the sandbox (its directories kept from an earlier run are reused)."""

    def status(self, bubble: str) -> SandboxStatus: ...

    def stop(self, bubble: str) -> None:
        """Kill every process of the bubble; keep its home."""

    def delete(self, bubble: str) -> list[Removed]:
        """Kill and wipe everything the bubble had; what was removed, with hashes, and what could
        not be. Odd files never make it fail; it raises only when nothing could be wiped."""

    def list(self) -> list[str]:
        """Bubbles this runtime holds anything for (running or not)."""

    def outbox(self, bubble: str) -> Path:
        """Where the controller reads a running bubble's outbox (the airlock copies from it)."""
