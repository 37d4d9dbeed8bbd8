"""The airlock's quarantine: a content-addressed store outside every bubble, and the one safe way
to take files from a bubble's outbox into it.

The outbox belongs to the bubble, which may race the controller: every path is walked from an
open directory descriptor, component by component, with O_NOFOLLOW, so a symbolic link (placed
before or during the request) is refused, never followed, and the answer never depends on where
it points; only regular files are read; what is stored is what was hashed, so a later change in
the outbox cannot change what is released.

File names are the researcher's text, and they travel on into policy inputs, findings, reasons,
manifests and reviewers' screens: only plain printable UTF-8 names of at most 255 bytes are
taken (no double quote, backslash, control or invisible formatting character such as a
direction override, no undecodable byte); anything else is refused with the name shown escaped.
The apostrophe is allowed: French file names use it, and it means nothing to JSON.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import tempfile
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from controller.errors import ApiError

CHUNK = 1 << 20
MAX_NAME_BYTES = 255  # a file name (one component), as Linux file systems allow
MAX_PATH_BYTES = 4096  # a requested path, as PATH_MAX
MAX_DEPTH = 64  # folders within folders taken for one request
SHOWN_CHARS = 200
# Unicode categories that are not plain printable text: controls (C0, DEL, C1), invisible
# formatting (bidi overrides and isolates, zero-width characters, BOM), surrogates, private use,
# unassigned, line and paragraph separators.
UNPRINTABLE = {"Cc": "a control character", "Cf": "an invisible formatting character (such as a direction "
               "override)", "Cs": "an undecodable byte or a lone surrogate", "Co": "a private-use character",
               "Cn": "an unassigned character", "Zl": "a line separator", "Zp": "a paragraph separator"}
FORBIDDEN = {'"': "a double quote", "\\": "a backslash"}


@dataclass(frozen=True)
class Taken:
    """One file taken from an outbox: its path relative to the outbox, size and digest;
    `stored` is False when it was over the size limit (recorded, never copied)."""

    path: str
    size: int
    sha256: str | None
    stored: bool


def _bad(index: int | None, message: str) -> ApiError:
    """A 422 on one requested path (`index`), or on the request's paths as a whole (None: a
    companion file nobody named)."""
    field = "paths" if index is None else f"paths.{index}"
    return ApiError(422, "validation_error", f"{field}: {message}", field=field)


def _problem_of(char: str) -> str | None:
    if char in FORBIDDEN:
        return FORBIDDEN[char]
    return UNPRINTABLE.get(unicodedata.category(char))


def shown(name: str) -> str:
    """A name as it may be echoed in an error, a log or a terminal: every character that is not
    plain printable text escaped (an undecodable byte as \\xNN, others as \\uXXXX), cut short."""
    out = []
    for char in name[:SHOWN_CHARS]:
        code = ord(char)
        if char in FORBIDDEN:
            out.append("\\" + char)
        elif _problem_of(char) is None:
            out.append(char)
        elif 0xDC80 <= code <= 0xDCFF:  # how Python spells a byte that is not UTF-8 (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        else:
            out.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return "".join(out) + ("…" if len(name) > SHOWN_CHARS else "")


def name_problem(name: str) -> str | None:
    """Why one file name is not plain printable UTF-8 of at most 255 bytes, or None."""
    for char in name:
        if (problem := _problem_of(char)) is not None:
            return f"holds {problem} (U+{ord(char):04X})"
    size = len(name.encode("utf-8"))  # no surrogate is left: it would have been a problem above
    if size > MAX_NAME_BYTES:
        return f"is {size} bytes long; a file name may have {MAX_NAME_BYTES} at most"
    return None


def clean_path(raw: str, index: int | None) -> list[str]:
    """A requested path's components; refuses absolute paths, '..', empty names and names that
    are not plain printable text (see the module)."""
    if not isinstance(raw, str) or not raw.strip():
        raise _bad(index, "empty path")
    if raw.startswith("/"):
        raise _bad(index, f"'{shown(raw)}' is absolute; give a path inside the outbox")
    for part in raw.split("/"):
        if (problem := name_problem(part)) is not None:
            raise _bad(index, f"'{shown(part)}' {problem}; file names that leave the airlock must be plain "
                       "printable text: rename it")
    if len(raw.encode("utf-8")) > MAX_PATH_BYTES:
        raise _bad(index, f"the path is over {MAX_PATH_BYTES} bytes long")
    parts = [p for p in PurePosixPath(raw).parts if p not in ("", ".")]
    if raw.strip() in (".", "./"):
        return []
    if any(p == ".." for p in raw.split("/")):
        raise _bad(index, f"'{raw}' leaves the outbox ('..')")
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

    def take(self, outbox: Path, paths: list[str], *, max_bytes: int, max_files: int,
             companions: bool = False) -> tuple[list[Taken], list[str]]:
        """Copy the requested files (a folder means every file under it) into the store.
        Returns what was taken and the digests stored for the first time (so that a request
        that fails later can remove exactly those).

        `companions`: the paths were not asked for but go with what was (a table's recipe):
        one that is absent is skipped, and each must be a regular file. A link is refused
        either way, by the same walk, whatever it points to."""
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
            for position, raw in enumerate(paths):
                if companions and name_problem(raw.rsplit("/", 1)[-1]) is not None:
                    continue  # a name no file can have (too long): that companion is absent
                index = None if companions else position
                parts = clean_path(raw, index)
                for rel, fd in self._walk(root, parts, index, raw, companions):
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
        if not taken and not companions:
            raise ApiError(422, "validation_error", "paths: the folder(s) hold no file", field="paths")
        return sorted(taken.values(), key=lambda t: t.path), created

    def _walk(self, root: int, parts: list[str], index: int | None, raw: str,
              companion: bool = False) -> Iterator[tuple[str, int]]:
        fd = os.dup(root)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                except FileNotFoundError:
                    if companion:
                        return
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
            if companion and not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _bad(index, f"'{raw}' is not a regular file")
            owned, fd = fd, -1
            yield from self._files(owned, "/".join(parts), index, len(parts))
        finally:
            if fd >= 0:
                os.close(fd)

    def _files(self, fd: int, rel: str, index: int | None, depth: int) -> Iterator[tuple[str, int]]:
        """The regular files under an open descriptor (itself, or a folder's tree); takes `fd`.
        Names found are held to the same rule as names asked for; folders nest MAX_DEPTH deep
        at most (each level holds a descriptor open)."""
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            yield rel or ".", fd
            return
        if not stat.S_ISDIR(mode):
            os.close(fd)
            raise _bad(index, f"'{rel}' is not a regular file or a folder")
        try:
            if depth >= MAX_DEPTH:
                raise _bad(index, f"'{shown(rel)}' holds folders nested more than {MAX_DEPTH} deep")
            names = sorted(os.listdir(fd))
            for name in names:
                where = f"{rel}/{name}" if rel else name
                if (problem := name_problem(name)) is not None:
                    raise _bad(index, f"'{shown(where)}' {problem}; file names that leave the airlock must be "
                               "plain printable text: rename it")
                try:
                    child = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        raise _bad(index, f"'{where}' is a symbolic link; links are never followed") from None
                    raise _bad(index, f"'{where}' cannot be read: {exc.strerror}") from None
                yield from self._files(child, where, index, depth + 1)
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
