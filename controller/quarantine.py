"""The airlock's quarantine: a content-addressed store outside every bubble, and the one safe way
to take files from a bubble's outbox into it.

The outbox belongs to the bubble, which may race the controller: every path is walked from an
open directory descriptor, component by component, with O_NOFOLLOW, so a symbolic link (placed
before or during the request) is refused, never followed; only regular files are read; what is
stored is what was hashed, so a later change in the outbox cannot change what is released.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from controller.errors import ApiError

CHUNK = 1 << 20


@dataclass(frozen=True)
class Taken:
    """One file taken from an outbox: its path relative to the outbox, size and digest;
    `stored` is False when it was over the size limit (recorded, never copied)."""

    path: str
    size: int
    sha256: str | None
    stored: bool


def _bad(index: int, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"paths.{index}: {message}", field=f"paths.{index}")


def clean_path(raw: str, index: int) -> list[str]:
    """A requested path's components; refuses absolute paths, '..', empty and odd names."""
    if not isinstance(raw, str) or not raw.strip():
        raise _bad(index, "empty path")
    if "\x00" in raw or "\\" in raw:
        raise _bad(index, f"'{raw[:200]}' holds a NUL or a backslash")
    if raw.startswith("/"):
        raise _bad(index, f"'{raw[:200]}' is absolute; give a path inside the outbox")
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if raw.strip() in (".", "./"):
        return []
    if any(p == ".." for p in raw.split("/")):
        raise _bad(index, f"'{raw[:200]}' leaves the outbox ('..')")
    if not parts:
        raise _bad(index, "empty path")
    return parts


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class Quarantine:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        (root / "tmp").mkdir(exist_ok=True, mode=0o700)

    def path(self, sha256: str) -> Path:
        if not _is_sha256(sha256):
            raise ValueError(f"not a sha256: {sha256[:80]!r}")
        return self.root / sha256[:2] / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).exists()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def _store(self, fd: int, limit: int) -> tuple[int, str | None, bool]:
        """Copy an open file in, hashing as it goes; (size, sha256, newly stored)."""
        size = os.fstat(fd).st_size
        if size > limit:
            return size, None, False
        digest = hashlib.sha256()
        with tempfile.NamedTemporaryFile(dir=self.root / "tmp", delete=False) as out:
            copied = 0
            while chunk := os.read(fd, CHUNK):
                copied += len(chunk)
                if copied > limit:  # grew while we read it
                    out.close()
                    os.unlink(out.name)
                    return copied, None, False
                digest.update(chunk)
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        target = self.path(sha)
        target.parent.mkdir(exist_ok=True, mode=0o700)
        os.chmod(out.name, 0o400)
        new = not target.exists()
        if new:
            os.replace(out.name, target)
        else:
            os.unlink(out.name)
        return copied, sha, new

    def take(self, outbox: Path, paths: list[str], *, max_bytes: int, max_files: int) -> tuple[list[Taken], list[str]]:
        """Copy the requested files (a folder means every file under it) into the store.
        Returns what was taken and the digests stored for the first time (so that a request
        that fails later can remove exactly those)."""
        if not paths:
            raise ApiError(422, "validation_error", "paths: give at least one file or folder of the outbox",
                           field="paths")
        taken: dict[str, Taken] = {}
        created: list[str] = []
        try:
            root = os.open(outbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            raise ApiError(409, "outbox_unavailable", f"the bubble's outbox cannot be read: {exc.strerror}") from None
        try:
            for index, raw in enumerate(paths):
                parts = clean_path(raw, index)
                for rel, fd in self._walk(root, parts, index, raw):
                    try:
                        if rel in taken:
                            continue
                        if len(taken) >= max_files:
                            raise _bad(index, f"more than {max_files} files in one request")
                        size, sha, new = self._store(fd, max_bytes)
                        if new and sha:
                            created.append(sha)
                        taken[rel] = Taken(rel, size, sha, sha is not None)
                    finally:
                        os.close(fd)
        except BaseException:
            self.forget(created)
            raise
        finally:
            os.close(root)
        if not taken:
            raise ApiError(422, "validation_error", "paths: the folder(s) hold no file", field="paths")
        return sorted(taken.values(), key=lambda t: t.path), created

    def _walk(self, root: int, parts: list[str], index: int, raw: str) -> Iterator[tuple[str, int]]:
        fd = os.dup(root)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    raise _bad(index, f"'{raw}' is not in the outbox") from None
                except OSError as exc:
                    if exc.errno == errno.ELOOP:  # ELOOP: a symbolic link
                        raise _bad(index, f"'{'/'.join(parts[:i + 1])}' is a symbolic link; links are never "
                                   "followed") from None
                    raise _bad(index, f"'{raw}' cannot be read: {exc.strerror}") from None
                os.close(fd)
                fd = nxt
                mode = os.fstat(fd).st_mode
                if i < len(parts) - 1 and not stat.S_ISDIR(mode):
                    raise _bad(index, f"'{'/'.join(parts[:i + 1])}' is not a folder")
            owned, fd = fd, -1
            yield from self._files(owned, "/".join(parts), index)
        finally:
            if fd >= 0:
                os.close(fd)

    def _files(self, fd: int, rel: str, index: int) -> Iterator[tuple[str, int]]:
        """The regular files under an open descriptor (itself, or a folder's tree); takes `fd`."""
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            yield rel or ".", fd
            return
        if not stat.S_ISDIR(mode):
            os.close(fd)
            raise _bad(index, f"'{rel}' is not a regular file or a folder")
        try:
            names = sorted(os.listdir(fd))
            for name in names:
                try:
                    child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    where = f"{rel}/{name}" if rel else name
                    if exc.errno == errno.ELOOP:
                        raise _bad(index, f"'{where}' is a symbolic link; links are never followed") from None
                    raise _bad(index, f"'{where}' cannot be read: {exc.strerror}") from None
                yield from self._files(child, f"{rel}/{name}" if rel else name, index)
        finally:
            os.close(fd)

    def digests(self) -> Iterator[str]:
        """The copies stored (anything else found in the store is not ours to remove)."""
        for shard in self.root.iterdir():
            if shard.name != "tmp" and shard.is_dir():
                yield from (entry.name for entry in shard.iterdir() if _is_sha256(entry.name))

    def size(self, sha256: str) -> int:
        try:
            return self.path(sha256).stat().st_size
        except FileNotFoundError:
            return 0

    def clear_unfinished(self) -> None:
        """Copies a crash left half-made (only ever called with no copy under way)."""
        for leftover in (self.root / "tmp").iterdir():
            leftover.unlink(missing_ok=True)

    def forget(self, digests: list[str]) -> None:
        for sha in digests:
            try:
                self.path(sha).unlink()
            except FileNotFoundError:
                pass
