"""File digests, in one place: views' manifests, deletion records and release manifests all name
files by the same sha256, computed the same way (and without pulling in Arrow)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()
