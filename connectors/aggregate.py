"""Aggregated access mode: a frequency table with margins, protected by cell suppression.

An aggregated view replaces microdata by counts (and sums and means of measures) per
combination of dimension values, with every subtotal. Small cells describe few people, so they
are hidden (primary suppression); but a hidden cell whose line still shows its total and all
its other cells is recovered by subtraction, so more cells are hidden until no line shows
exactly one hidden entry (secondary, or complementary, suppression).

Streaming: each batch is grouped on its own and the partial counts and sums are merged, so
memory follows the number of distinct cells, never the number of rows. Margins are computed from
the exact base cells afterwards (counts, sums and non-null counts are all additive). The table
does not depend on how the source is split into batches (float sums up to rounding).

Decisions:

* At most three dimensions (:data:`MAX_DIMENSIONS`): the full cube of a d-dimensional table has
  2^d layers of margins and the suppression pattern must hold along every line of each; beyond
  three the tables stop being readable and the search for a safe pattern grows fast, so more is
  refused with a ValueError. Zero dimensions give the grand total alone.
* Dimensions are published as strings; a margin shows ``"Total"`` in place of the dimension's
  value. A real value equal to ``"Total"`` would make the table ambiguous and is refused (a
  :class:`~connectors.base.DataError`, code ``reserved_value``); a null
  value is a category of its own (shown as null).
* Zero cells: a combination that never occurs in the data is absent from the table rather than
  published as a zero row. Absent cells are still counted as *known* (zero) entries of their
  lines by the suppression rule, because a reader who knows the categories can infer them; so
  protection never relies on them.
* Primary suppression: a cell is hidden when its count is below the threshold, and also when
  some measure has between 1 and threshold - 1 non-null values in it, since the sum and mean
  published together reveal that number and describe fewer people than the threshold allows.
* Secondary suppression works on counts, and measures are hidden on the same cells; as sums are
  additive along the same lines, the same pattern protects them.
* The table only says *whether* a cell is hidden, never why: telling primary from secondary
  suppression would reveal which cells are below the threshold.
* Limits: the rule "no line with exactly one hidden entry" defeats the subtraction attack, not an
  attacker solving the whole system of linear constraints, who may still bound a hidden cell
  within an interval. Checking exposure by linear programming is the output checker's job.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from connectors.base import DataError, Scan

"""Returns a fresh iterator over the source each time it is called."""

MAX_DIMENSIONS = 3
TOTAL = "Total"
_RESERVED = frozenset({"count", "suppressed"})
_COUNT = "__count"


class _Total:
    """Marks a margin in a cell key; distinct from every real value, null included."""

    def __repr__(self) -> str:
        return TOTAL


_MARGIN = _Total()
Key = tuple[Any, ...]  # one entry per dimension: str, None (null) or _MARGIN


def aggregate(
    scan: Scan, dimensions: Sequence[str], measures: Sequence[str], *, threshold: int = 10
) -> tuple[pa.Table, dict[str, Any]]:
    """The protected table (base cells and every margin) and the manifest statistics.

    Columns: the dimensions (strings, ``"Total"`` on margins), ``count``, then ``<m>_sum`` and
    ``<m>_mean`` per measure, then ``suppressed``. Hidden cells have null count and measures.
    Rows are sorted by dimension values, nulls after values and totals last.
    """
    dims, meas = list(dimensions), list(measures)
    check_request(dims, meas, threshold)
    sums_type = {m: pa.float64() for m in meas}
    merger = _Merger(dims, meas)
    records_in = 0
    for batch in scan():
        missing = [n for n in dims + meas if n not in batch.schema.names]
        if missing:
            raise ValueError(f"the scan did not return column {', '.join(repr(n) for n in missing)}")
        if records_in == 0 and batch.num_rows:
            sums_type = {m: _sum_type(m, batch.schema.field(m).type) for m in meas}
        records_in += batch.num_rows
        if batch.num_rows:
            merger.add(batch, sums_type)

    cells = _cube(merger.result(), dims, meas)
    primary = {
        key
        for key, (count, _, nonnull) in cells.items()
        if count < threshold or any(0 < n < threshold for n in nonnull)
    }
    suppressed = _complete(cells, primary, len(dims))
    table = _table(cells, suppressed, dims, meas, sums_type)
    stats: dict[str, Any] = {
        "dimensions": dims,
        "measures": meas,
        "threshold": threshold,
        "records_in": records_in,
        "cells": len(cells),
        "primary_suppressed": len(primary),
        "secondary_suppressed": len(suppressed) - len(primary),
        "zero_cells": "absent",
    }
    return table, stats


def check_request(dims: list[str], meas: list[str], threshold: int) -> None:
    """What no data could make publishable, refused before anything is read (a ValueError);
    views check requests with it, so such a request is the caller's mistake, not a failed build."""
    if len(dims) > MAX_DIMENSIONS:
        raise ValueError(
            f"at most {MAX_DIMENSIONS} dimensions can be protected by cell suppression, not {len(dims)}: "
            "ask for several smaller tables"
        )
    names = dims + meas
    internal = sorted(n for n in names if n.startswith("__"))
    if internal:
        raise ValueError(f"column {', '.join(repr(n) for n in internal)}: names starting with '__' are reserved")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"column {', '.join(repr(n) for n in duplicates)} listed twice")
    outputs = [*dims, *_RESERVED, *(f"{m}_{s}" for m in meas for s in ("sum", "mean"))]
    clashes = sorted({n for n in outputs if outputs.count(n) > 1})
    if clashes:
        raise ValueError(f"output column {', '.join(repr(n) for n in clashes)} would appear twice: rename it")
    if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 1:
        raise ValueError(f"threshold must be an integer >= 1, not {threshold!r}")


def _sum_type(name: str, type_: pa.DataType) -> pa.DataType:
    if pa.types.is_integer(type_) or pa.types.is_boolean(type_):
        return pa.int64()
    if pa.types.is_floating(type_) or pa.types.is_decimal(type_):
        return pa.float64()
    raise ValueError(f"measure '{name}' is {type_}, not a number or a boolean")


class _Merger:
    """Partial group-bys merged as batches come; memory follows the number of distinct cells."""

    def __init__(self, dims: list[str], meas: list[str]) -> None:
        self.dims, self.meas = dims, meas
        # A constant key stands in when there is no dimension (one cell: the grand total).
        self.keys = dims or ["__all"]
        self.value_names = [_COUNT] + [f"{m}{part}" for m in meas for part in ("__sum", "__n")]
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.merged: pa.Table | None = None

    def add(self, batch: pa.RecordBatch, sums_type: dict[str, pa.DataType]) -> None:
        columns: dict[str, pa.Array] = {}
        for d in self.dims:
            columns[d] = batch.column(d).cast(pa.string())
        if not self.dims:
            columns["__all"] = pa.array([0] * batch.num_rows, pa.int8())
        for m in self.meas:
            values = batch.column(m)
            if pa.types.is_floating(values.type):
                values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
            try:
                columns[m] = values.cast(sums_type[m])
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                raise ValueError(f"measure '{m}' changed type between batches: {exc}") from None
        aggregations: list[tuple[Any, str]] = [([], "count_all")]
        for m in self.meas:
            aggregations += [(m, "sum"), (m, "count")]
        partial = pa.table(columns).group_by(self.keys, use_threads=False).aggregate(aggregations)
        partial = partial.select([*self.keys, "count_all", *[f"{m}_{a}" for m in self.meas for a in ("sum", "count")]])
        self.pending.append(partial.rename_columns([*self.keys, *self.value_names]))
        self.pending_rows += partial.num_rows
        if self.pending_rows > max(65_536, 2 * (self.merged.num_rows if self.merged is not None else 0)):
            self._compact()

    def _compact(self) -> None:
        parts = ([self.merged] if self.merged is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        if not parts:
            return
        summed = pa.concat_tables(parts).group_by(self.keys, use_threads=False).aggregate(
            [(name, "sum") for name in self.value_names]
        )
        self.merged = summed.select([*self.keys, *[f"{n}_sum" for n in self.value_names]]).rename_columns(
            [*self.keys, *self.value_names]
        )

    def result(self) -> list[tuple[Key, int, list[float | int], list[int]]]:
        self._compact()
        if self.merged is None:
            return []
        data = self.merged.to_pydict()
        keys = list(zip(*(data[d] for d in self.dims), strict=True)) if self.dims else [()] * self.merged.num_rows
        rows = []
        for i, key in enumerate(keys):
            if TOTAL in key:
                name = self.dims[key.index(TOTAL)]
                raise DataError("reserved_value",
                                f"dimension '{name}' has a value '{TOTAL}', which margins use: recode it first")
            sums = [data[f"{m}__sum"][i] or 0 for m in self.meas]
            nonnull = [data[f"{m}__n"][i] or 0 for m in self.meas]
            rows.append((key, data[_COUNT][i], sums, nonnull))
        return rows


def _cube(
    base: list[tuple[Key, int, list[float | int], list[int]]], dims: list[str], meas: list[str]
) -> dict[Key, tuple[int, list[float | int], list[int]]]:
    """Base cells plus every margin, in the published order."""
    d = len(dims)
    cells: dict[Key, list[Any]] = {}
    for key, count, sums, nonnull in base:
        for kept in itertools.product((True, False), repeat=d):
            margin = tuple(v if keep else _MARGIN for v, keep in zip(key, kept, strict=True))
            cell = cells.get(margin)
            if cell is None:
                cells[margin] = [count, list(sums), list(nonnull)]
            else:
                cell[0] += count
                for j in range(len(meas)):
                    cell[1][j] += sums[j]
                    cell[2][j] += nonnull[j]
    ordered = sorted(cells, key=_order)
    return {key: (cells[key][0], cells[key][1], cells[key][2]) for key in ordered}


def _order(key: Key) -> tuple[tuple[int, str], ...]:
    return tuple((2, "") if v is _MARGIN else (1, "") if v is None else (0, v) for v in key)


def _lines(cells: dict[Key, Any], d: int) -> list[tuple[Key, list[Key]]]:
    """Every line: a margin along one dimension and the cells that add up to it."""
    members: dict[tuple[int, Key], list[Key]] = {}
    for key in cells:
        for i in range(d):
            if key[i] is not _MARGIN:
                margin = key[:i] + (_MARGIN,) + key[i + 1 :]
                members.setdefault((i, margin), []).append(key)
    return [(margin, keys) for (_, margin), keys in members.items()]


def _complete(cells: dict[Key, tuple[int, list[Any], list[int]]], primary: set[Key], d: int) -> set[Key]:
    """Primary suppressions plus complementary ones, until no line has exactly one hidden entry.

    When a line has a single hidden entry, the smallest visible cell of the line is hidden too
    (ties broken by the published order); the margin only when the line has no other cell. Hiding
    only ever adds, so the loop ends.
    """
    suppressed = set(primary)
    rank = {key: i for i, key in enumerate(cells)}
    lines = _lines(cells, d)
    changed = True
    while changed:
        changed = False
        for margin, keys in lines:
            hidden = sum(1 for k in keys if k in suppressed) + (margin in suppressed)
            if hidden != 1:
                continue
            visible = [k for k in keys if k not in suppressed]
            if visible:
                suppressed.add(min(visible, key=lambda k: (cells[k][0], rank[k])))
            else:
                suppressed.add(margin)
            changed = True
    return suppressed


def _table(
    cells: dict[Key, tuple[int, list[Any], list[int]]],
    suppressed: set[Key],
    dims: list[str],
    meas: list[str],
    sums_type: dict[str, pa.DataType],
) -> pa.Table:
    columns: dict[str, pa.Array] = {}
    keys = list(cells)
    for i, d in enumerate(dims):
        columns[d] = pa.array([TOTAL if k[i] is _MARGIN else k[i] for k in keys], pa.string())
    hidden = [k in suppressed for k in keys]
    columns["count"] = pa.array([None if h else cells[k][0] for k, h in zip(keys, hidden, strict=True)], pa.int64())
    for j, m in enumerate(meas):
        sums, means = [], []
        for k, h in zip(keys, hidden, strict=True):
            _, total, nonnull = cells[k]
            sums.append(None if h else total[j])
            means.append(None if h or nonnull[j] == 0 else total[j] / nonnull[j])
        columns[f"{m}_sum"] = pa.array(sums, sums_type[m])
        columns[f"{m}_mean"] = pa.array(means, pa.float64())
    columns["suppressed"] = pa.array(hidden, pa.bool_())
    return pa.table(columns)
