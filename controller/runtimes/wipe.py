"""Wiping a bubble's files: whatever a researcher made is removed and listed, however odd.

A home is the researcher's to shape: directories thousands deep, names that are not UTF-8,
fifos, sockets, devices, links to host files, files with far more holes than data. The walk is
iterative (an explicit stack, no recursion: `shutil.rmtree` and `Path.rglob` recurse and give
up past Python's recursion limit), holds one directory open at a time (it climbs back through
`..`, checked against the device and inode it left, so depth costs neither descriptors nor path
length), never follows a link and never enters another file system. What it cannot read is
listed unhashed with the reason, what it cannot remove is listed as left; no entry stops the
rest.

Reading is bounded, counted in bytes read: a regular file is hashed only when its holes (its
apparent size beyond its allocated blocks) stay under SPARSE_SLACK, since a file's allocated
bytes are what its owner wrote and its apparent size is only what they declared with truncate,
and only while the bytes read for this wipe stay within its budget (the bubble's disk size: no
home can hold more written data). Anything else is listed with its size, allocated bytes and no
sha256.
"""

from __future__ import annotations

import base64
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from controller.digests import bounded_sha256
from controller.runtimes.base import Removed

SPARSE_SLACK = 1 << 20  # holes a hashed file may have, in bytes
_DIRECTORY = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # a fifo swapped in never blocks
_KINDS = ((stat.S_ISREG, "file"), (stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
          (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device"))


def kind_of(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "other")


def recorded_path(parts: tuple[bytes, ...]) -> tuple[str, str | None]:
    """A path as a record shows it: its text when it is UTF-8; otherwise a readable form (each
    undecodable byte as \\xNN) and, since that form is ambiguous, its exact bytes in base64."""
    raw = b"/".join(parts)
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError:
        return raw.decode("utf-8", "backslashreplace"), base64.b64encode(raw).decode("ascii")


def _left(parts: tuple[bytes, ...], kind: str, why: str) -> Removed:
    path, exact = recorded_path(parts)
    return Removed(path, None, 0, kind=kind, path_base64=exact, not_hashed=why, not_removed=why)


@dataclass
class _Frame:
    """A directory being emptied: its entries not yet handled (popped from the end, so in order)."""

    name: str
    parts: tuple[bytes, ...]
    identity: tuple[int, int]
    pending: list[tuple[str, os.stat_result]]
    fd: int | None


def _listing(fd: int) -> list[tuple[str, os.stat_result]]:
    found = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                found.append((entry.name, entry.stat(follow_symlinks=False)))
            except FileNotFoundError:  # gone since it was listed: nothing to remove
                continue
    return sorted(found, key=lambda item: os.fsencode(item[0]), reverse=True)


def _enter(parent: int, name: str, info: os.stat_result, parts: tuple[bytes, ...]) -> _Frame | Removed:
    try:
        fd = os.open(name, _DIRECTORY, dir_fd=parent)
    except OSError as exc:
        return _left(parts, "directory", f"could not be opened: {exc.strerror}")
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino):
            os.close(fd)
            return _left(parts, "directory", "replaced during the wipe: not entered")
        return _Frame(name, parts, (opened.st_dev, opened.st_ino), _listing(fd), fd)
    except OSError as exc:
        os.close(fd)
        return _left(parts, "directory", f"could not be listed: {exc.strerror}")


def _climb(fd: int, identity: tuple[int, int]) -> int | None:
    """The parent directory again, through `..`; None if it is not the one the walk came from."""
    try:
        parent = os.open("..", _DIRECTORY, dir_fd=fd)
    except OSError:
        return None
    found = os.fstat(parent)
    if (found.st_dev, found.st_ino) != identity:
        os.close(parent)
        return None
    return parent


class _Reader:
    """Hashes regular files within the wipe's budget of bytes read."""

    def __init__(self, budget: int) -> None:
        self.left = budget

    def sha256(self, directory: int, name: str, info: os.stat_result) -> tuple[str | None, str | None]:
        """(sha256, None), or (None, why it was not read)."""
        allocated = info.st_blocks * 512
        if info.st_size - allocated > SPARSE_SLACK:
            return None, f"sparse: {info.st_size} bytes of which {allocated} allocated; not read"
        if info.st_size > self.left:
            return None, "beyond the deletion's hashing budget; not read"
        try:
            fd = os.open(name, _FILE, dir_fd=directory)
        except OSError as exc:
            return None, f"unreadable: {exc.strerror}"
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino) or not stat.S_ISREG(opened.st_mode):
                return None, "replaced during the wipe; not read"
            self.left -= info.st_size
            with open(fd, "rb", buffering=0, closefd=False) as handle:
                digest = bounded_sha256(handle, info.st_size)
            after = os.fstat(fd)
        except OSError as exc:
            return None, f"unreadable: {exc.strerror}"
        finally:
            os.close(fd)
        if digest is None or (after.st_size, after.st_mtime_ns) != (info.st_size, info.st_mtime_ns):
            return None, "changed while it was read"
        return digest, None


def _remove(directory: int, name: str, info: os.stat_result, parts: tuple[bytes, ...], reader: _Reader) -> Removed:
    """One entry that is not a directory to walk: read if it is a regular file, then unlinked."""
    kind = kind_of(info.st_mode)
    path, exact = recorded_path(parts)
    allocated = info.st_blocks * 512
    if kind == "directory":  # a mount point: never entered, never emptied
        why = "on another file system: not entered"
        return Removed(path, None, info.st_size, allocated, kind, exact, why, why)
    digest, not_hashed = reader.sha256(directory, name, info) if kind == "file" else (
        None, "a symbolic link: not followed" if kind == "symlink" else f"a {kind}: only regular files are read")
    not_removed = None
    try:
        os.unlink(name, dir_fd=directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        not_removed = f"could not be removed: {exc.strerror}"
    return Removed(path, digest, info.st_size, allocated, kind, exact, not_hashed, not_removed)


def wipe(directory: Path, *, label: str, budget: int, remove_directory: bool = True) -> list[Removed]:
    """Remove everything under `directory` (and the directory itself unless told not to, as for
    a mount point): every entry that is not a directory, then every directory left behind, in
    the walk's order. `label` prefixes the paths recorded; `budget` bounds the bytes read."""
    base = (os.fsencode(label),) if label else ()
    try:
        top = os.open(directory, _DIRECTORY)
    except FileNotFoundError:
        return []
    except OSError as exc:
        return [_left(base or (b".",), "directory", f"could not be opened: {exc.strerror}")]
    reader = _Reader(budget)
    records: list[Removed] = []
    found = os.fstat(top)
    try:
        stack = [_Frame("", base, (found.st_dev, found.st_ino), _listing(top), top)]
    except OSError as exc:
        os.close(top)
        return [_left(base or (b".",), "directory", f"could not be listed: {exc.strerror}")]
    try:
        while stack:
            frame = stack[-1]
            if frame.pending:
                name, info = frame.pending.pop()
                parts = frame.parts + (os.fsencode(name),)
                if stat.S_ISDIR(info.st_mode) and info.st_dev == found.st_dev:
                    child = _enter(frame.fd, name, info, parts)
                    if isinstance(child, Removed):
                        records.append(child)
                    else:
                        os.close(frame.fd)
                        frame.fd = None
                        stack.append(child)
                else:
                    records.append(_remove(frame.fd, name, info, parts, reader))
                continue
            stack.pop()
            if not stack:
                os.close(frame.fd)
                break
            parent = stack[-1]
            parent.fd = _climb(frame.fd, parent.identity)
            if parent.fd is None:
                records.append(_left(parent.parts or (b".",), "directory", "moved during the wipe: not finished"))
                stack.append(frame)  # closed below, with whatever else is open
                break
            os.close(frame.fd)
            frame.fd = None
            try:
                os.rmdir(frame.name, dir_fd=parent.fd)
            except OSError as exc:
                records.append(_left(frame.parts, "directory", f"could not be removed: {exc.strerror}"))
    finally:
        for frame in stack:
            if frame.fd is not None:
                os.close(frame.fd)
    if remove_directory:
        try:
            os.rmdir(directory)
        except FileNotFoundError:
            pass
        except OSError as exc:
            records.append(_left(base or (b".",), "directory", f"could not be removed: {exc.strerror}"))
    return records
