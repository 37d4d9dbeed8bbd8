"""File digests, in one place: views' manifests, deletion records and release manifests all name
files by the same sha256, computed the same way (and without pulling in Arrow)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import BinaryIO

CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def bounded_sha256(handle: BinaryIO, limit: int) -> str | None:
    """The sha256 of what an unbuffered `handle` holds, reading at most `limit` + 1 bytes; None
    when it holds more than `limit`. `hashlib.file_digest` reads to the end, whatever the end is:
    a deletion must read no more than its budget, even from a file that grows as it is read."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(CHUNK))
    total = 0
    while True:
        read = handle.readinto(buffer[:min(CHUNK, limit - total + 1)])
        if not read:
            return digest.hexdigest()
        total += read
        if total > limit:
            return None
        digest.update(buffer[:read])
