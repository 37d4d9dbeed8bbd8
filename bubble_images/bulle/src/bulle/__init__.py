"""Inside a bubble: the project's views (read-only, under /data) and the outbox.

Each view is a directory holding Parquet files and the manifest the controller wrote when it
materialised the view (source, grant, mode, parameters, rows, schema, sha256 of each file).
`read` checks each file against its manifest hash, so a result is always computed on exactly
the data the grant delivered, and the name a researcher uses is the directory's name.

The locations come from the environment the runtime sets (BULLE_DATA, BULLE_OUTBOX), so the
same code runs in the local sandbox, in Docker and on Kubernetes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["views", "manifest", "read", "outbox", "ViewNotFound"]

MANIFEST = "manifest.json"


class ViewNotFound(LookupError):
    pass


def _data() -> Path:
    return Path(os.environ.get("BULLE_DATA", "/data"))


def outbox() -> Path:
    """Where results to export go: nothing else leaves a bubble, and only through review."""
    path = Path(os.environ.get("BULLE_OUTBOX", Path.home() / "outbox"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def views() -> dict[str, dict[str, Any]]:
    """Every view of the bubble, by name, with its manifest."""
    root = _data()
    if not root.is_dir():
        return {}
    found = {}
    for directory in sorted(root.iterdir()):
        path = directory / MANIFEST
        if path.is_file():
            found[directory.name] = json.loads(path.read_text())
    return found


def manifest(name: str) -> dict[str, Any]:
    directory = _view_dir(name)
    return json.loads((directory / MANIFEST).read_text())


def _view_dir(name: str) -> Path:
    directory = _data() / name
    if "/" in name or name.startswith(".") or not (directory / MANIFEST).is_file():
        available = ", ".join(views()) or "none"
        raise ViewNotFound(f"no view named {name!r} in this bubble (views: {available})")
    return directory


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read(name: str, *, pandas: bool = False, columns: list[str] | None = None) -> Any:
    """The view as a pyarrow Table (a pandas DataFrame with pandas=True)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    directory = _view_dir(name)
    described = json.loads((directory / MANIFEST).read_text())
    tables = []
    for entry in described.get("files", []):
        path = directory / entry["path"]
        if _sha256(path) != entry["sha256"]:
            raise ValueError(f"view {name!r}: {entry['path']} does not match its manifest (sha256)")
        tables.append(pq.read_table(path, columns=columns))
    table = pa.concat_tables(tables) if tables else pa.table({})
    return table.to_pandas() if pandas else table
