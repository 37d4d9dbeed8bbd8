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

__all__ = ["views", "manifest", "read", "outbox", "table", "ViewNotFound"]

MANIFEST = "manifest.json"
RECIPE_SUFFIX = ".bulle.json"
RECIPE_FORMAT = "bulle-table/1"


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
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


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


def table(view: str, dimensions: list[str], values: str | None = None, aggfunc: str = "count",
          name: str | None = None) -> Any:
    """A table of counts (or sums, or means of `values`) by `dimensions`, computed from one view,
    written to the outbox as CSV with its recipe beside it.

    The airlock recomputes such a table from the same view and so can check what a published
    table hides: how many people are behind each cell and whether one or two of them dominate
    it (NK, p-ratio). Every combination of the dimensions' levels is a row, empty ones included
    (count 0), as disclosure control expects. Returns the table as a pandas DataFrame."""
    if aggfunc not in ("count", "sum", "mean"):
        raise ValueError(f"aggfunc must be count, sum or mean, not {aggfunc!r}")
    if (values is None) != (aggfunc == "count"):
        raise ValueError("give `values` for sum and mean, and none for count")
    if not dimensions:
        raise ValueError("give at least one dimension")
    import pandas as pd

    frame = read(view, pandas=True, columns=list(dimensions) + ([values] if values else []))
    frame = frame.dropna(subset=list(dimensions))
    grouped = frame.groupby(list(dimensions), dropna=True, observed=True)
    column = "count" if aggfunc == "count" else f"{aggfunc}_{values}"
    if aggfunc == "count":
        result = grouped.size()
    else:
        result = getattr(grouped[values], aggfunc)()
    levels = [sorted(frame[d].unique()) for d in dimensions]
    if len(dimensions) == 1:
        index = pd.Index(levels[0], name=dimensions[0])
    else:
        index = pd.MultiIndex.from_product(levels, names=list(dimensions))
    result = result.reindex(index, fill_value=0 if aggfunc != "mean" else None)
    out = result.rename(column).reset_index()
    file_name = name or f"{view}_{'_'.join(dimensions)}_{column}.csv"
    if not file_name.endswith(".csv") or "/" in file_name:
        raise ValueError(f"name must be a file name ending in .csv, not {file_name!r}")
    target = outbox() / file_name
    out.to_csv(target, index=False)
    recipe = {"format": RECIPE_FORMAT, "view": view, "dimensions": list(dimensions), "values": values,
              "aggfunc": aggfunc, "column": column}
    (outbox() / (file_name + RECIPE_SUFFIX)).write_text(json.dumps(recipe, indent=2))
    return out
