"""Generalised access mode: coarsen quasi-identifiers, then enforce k-anonymity by suppression.

A generalised view is still microdata, one row per person, so the risk it carries is
re-identification by linkage: someone who knows a pupil's birth year, sex and school finds the
row. Coarsening each column along its catalog hint makes equivalence classes larger; any record
whose class is still smaller than ``k`` is then suppressed, so every published combination of
quasi-identifiers is shared by at least ``k`` published records.

The source is streamed from a warehouse and is never held whole. Two scans suffice:

1. counting: rare-category counts for ``rare_to_other`` columns and equivalence-class counts,
   in the same pass (classes are keyed on the *raw* value of a quasi-identifier whose hint is
   ``rare_to_other``, then folded once the rare categories are known);
2. output: each batch is generalised again and only the records of classes of size >= k kept.

Memory grows with the number of distinct classes and categories, never with the number of rows.
All statistics are known after the first scan, so they are returned together with the (lazy)
output iterator; the second scan only runs as the caller consumes it, and it fails loudly if
the source no longer matches what the first scan counted (a changed source could otherwise
break the k guarantee).

Decisions:

* k-anonymity is computed on the quasi-identifiers that are *output* (declared
  ``quasi_identifier`` and listed in ``keep``): a quasi-identifier that is not published cannot
  be used for linkage, and counting it would suppress records for nothing.
* identifier columns are never output, even when listed in ``keep``; ``stats["dropped"]`` says so.
* a null is a value like any other when forming classes (two records with an unknown commune
  share a class).
* commune codes that are not INSEE codes (5 characters: 2 digits, or 2A/2B, then 3 digits) map to
  null rather than to a guessed département, and are counted in the column's stats.
* integer bands read ``"10-14"`` (both ends included); float bands read ``"[10,15)"``, because a
  float band has no last value.
* output types: ``year`` int32; ``month``, ``departement``, ``band`` and ``rare_to_other`` string;
  every other column keeps its declared catalog type.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from catalog.model import Column, GeneralisationHint
from catalog.vocab import ColumnRole, ColumnType, Generalisation
from connectors.base import ARROW_TYPES, DataError, Scan

"""Returns a fresh iterator over the source each time it is called (one call per pass)."""

OTHER = "other"
_COUNT = "__count"
_ROW = "__row"
_INSEE_COMMUNE = r"^(?:[0-9]{2}|2[AB])[0-9]{3}$"
_OVERSEAS = ("97", "98")


@dataclass(frozen=True)
class _Output:
    column: Column
    hint: GeneralisationHint | None
    type: pa.DataType

    @property
    def name(self) -> str:
        return self.column.name

    @property
    def applied(self) -> str:
        hint = self.hint
        if hint is None:
            return "none"
        if hint.to is Generalisation.band:
            return f"band({hint.width})"
        if hint.to is Generalisation.rare_to_other:
            return f"rare_to_other({hint.min_count})"
        return str(hint.to)


def generalised_schema(columns: Sequence[Column], keep: Sequence[str]) -> pa.Schema:
    """The schema of a generalised view, so a writer can open its file before any row arrives."""
    return pa.schema([pa.field(o.name, o.type) for o in _plan(columns, keep)[0]])


def generalise(
    scan: Scan, columns: Sequence[Column], *, k: int, keep: Sequence[str]
) -> tuple[Iterator[pa.RecordBatch], dict[str, Any]]:
    """Generalised, k-anonymous batches of the ``keep`` columns, and the manifest statistics.

    The first scan runs now (statistics need it); the second runs as the iterator is consumed.
    The iterator yields at least one batch (empty when every record is suppressed) so that a
    writer always learns the schema.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, not {k!r}")
    outputs, dropped = _plan(columns, keep)
    qis = [o for o in outputs if o.column.role is ColumnRole.quasi_identifier]
    rare = [o for o in outputs if o.hint is not None and o.hint.to is Generalisation.rare_to_other]
    departements = {o.name for o in outputs if o.hint is not None and o.hint.to is Generalisation.departement}
    needed = [o.name for o in outputs]

    # Pass 1: rare-category counts and class counts (rare quasi-identifiers still raw).
    rare_counts: dict[str, dict[str | None, int]] = {o.name: {} for o in rare}
    unrecognised: dict[str, int] = {}
    classes = _ClassCounter([o.name for o in qis])
    records_in = 0
    for batch in scan():
        batch = _select(batch, needed)
        records_in += batch.num_rows
        for o in rare:
            counts = pc.value_counts(batch.column(o.name).cast(pa.string()))
            tally = rare_counts[o.name]
            values, numbers = counts.field("values").to_pylist(), counts.field("counts").to_pylist()
            for value, count in zip(values, numbers, strict=True):
                tally[value] = tally.get(value, 0) + count
        keys: list[pa.Array] = []
        for o in outputs:
            if o.column.role is not ColumnRole.quasi_identifier and o.name not in departements:
                continue
            value, bad = _generalise_column(o, batch.column(o.name), frequent=None)
            if o.name in departements:
                unrecognised[o.name] = unrecognised.get(o.name, 0) + bad
            if o.column.role is ColumnRole.quasi_identifier:
                keys.append(value)
        classes.add(keys, batch.num_rows)

    frequent: dict[str, pa.Array] = {
        name: pa.array(sorted(v for v, c in tally.items() if v is not None and c >= _min_count(outputs, name)),
                       pa.string())
        for name, tally in rare_counts.items()
    }
    class_table = classes.result({o.name: frequent[o.name] for o in qis if o.name in frequent})
    sizes = np.asarray(class_table.column(_COUNT).to_numpy(zero_copy_only=False), dtype=np.int64)
    published = sizes >= k
    records_out = int(sizes[published].sum())
    allowed = class_table.filter(pa.array(published)).drop_columns([_COUNT])

    column_stats: dict[str, dict[str, Any]] = {}
    for o in outputs:
        entry: dict[str, Any] = {"role": str(o.column.role), "applied": o.applied, "type": str(o.type)}
        if o.name in rare_counts:
            kept = set(frequent[o.name].to_pylist())
            entry["categories_merged"] = sum(1 for v in rare_counts[o.name] if v is not None and v not in kept)
        if o.hint is not None and o.hint.to is Generalisation.departement:
            entry["unrecognised"] = unrecognised.get(o.name, 0)
        column_stats[o.name] = entry
    stats: dict[str, Any] = {
        "k_requested": k,
        "k_achieved": int(sizes[published].min()) if published.any() else None,
        "records_in": records_in,
        "records_out": records_out,
        "records_suppressed": records_in - records_out,
        "suppressed_share": (records_in - records_out) / records_in if records_in else 0.0,
        "classes": int(published.sum()),
        "classes_suppressed": int((~published).sum()),
        "quasi_identifiers": [o.name for o in qis],
        "dropped": dropped,
        "columns": column_stats,
    }
    schema = pa.schema([pa.field(o.name, o.type) for o in outputs])
    return _apply(scan, outputs, qis, frequent, allowed, schema, records_in, records_out), stats


def _plan(columns: Sequence[Column], keep: Sequence[str]) -> tuple[list[_Output], list[str]]:
    by_name = {c.name: c for c in columns}
    if len(by_name) != len(columns):
        raise ValueError("columns: duplicate column names")
    if len(set(keep)) != len(keep):
        raise ValueError("keep: a column is listed twice")
    unknown = [name for name in keep if name not in by_name]
    if unknown:
        raise ValueError(f"keep: no declared column {', '.join(repr(n) for n in unknown)}")
    outputs: list[_Output] = []
    dropped: list[str] = []
    for name in keep:
        column = by_name[name]
        if column.role is ColumnRole.identifier:
            dropped.append(name)
            continue
        hint = column.generalisation
        outputs.append(_Output(column, hint, _output_type(column, hint)))
    if not outputs:
        raise ValueError("keep: nothing to output once identifier columns are dropped")
    return outputs, dropped


def _output_type(column: Column, hint: GeneralisationHint | None) -> pa.DataType:
    if hint is None:
        return ARROW_TYPES[column.type]
    if hint.to is Generalisation.year:
        return pa.int32()
    return pa.string()


def _min_count(outputs: Sequence[_Output], name: str) -> int:
    hint = next(o.hint for o in outputs if o.name == name)
    assert hint is not None and hint.min_count is not None
    return hint.min_count


def _select(batch: pa.RecordBatch, names: Sequence[str]) -> pa.RecordBatch:
    missing = [n for n in names if n not in batch.schema.names]
    if missing:
        raise ValueError(f"the scan did not return column {', '.join(repr(n) for n in missing)}")
    return batch.select(list(names))


def _generalise_column(o: _Output, values: pa.Array, frequent: pa.Array | None) -> tuple[pa.Array, int]:
    """The column as published, and how many values could not be generalised (nulled).

    With ``frequent=None`` a ``rare_to_other`` column is returned raw: the first pass does not
    know yet which categories are rare.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    hint = o.hint
    if hint is None:
        return values.cast(o.type), 0
    if hint.to is Generalisation.year:
        return pc.year(values).cast(pa.int32()), 0
    if hint.to is Generalisation.month:
        return pc.strftime(values, format="%Y-%m"), 0
    if hint.to is Generalisation.departement:
        return _departement(values.cast(pa.string()))
    if hint.to is Generalisation.band:
        assert hint.width is not None
        return _band(values, hint.width, integer=o.column.type is ColumnType.int64), 0
    strings = values.cast(pa.string())
    if frequent is None:
        return strings, 0
    keep = pc.or_(pc.is_in(strings, value_set=frequent), pc.is_null(strings))
    return pc.if_else(keep, strings, pa.scalar(OTHER, pa.string())), 0


def _departement(communes: pa.Array) -> tuple[pa.Array, int]:
    codes = pc.utf8_upper(pc.utf8_trim_whitespace(communes))
    valid = pc.match_substring_regex(codes, _INSEE_COMMUNE)
    overseas = pc.or_(pc.starts_with(codes, _OVERSEAS[0]), pc.starts_with(codes, _OVERSEAS[1]))
    departement = pc.if_else(
        overseas, pc.utf8_slice_codeunits(codes, 0, 3), pc.utf8_slice_codeunits(codes, 0, 2)
    )
    result = pc.if_else(valid, departement, pa.scalar(None, pa.string()))
    bad = int(pc.sum(pc.and_(pc.is_valid(communes), pc.invert(pc.fill_null(valid, False)))).as_py() or 0)
    return result, bad


def _band(values: pa.Array, width: int, *, integer: bool) -> pa.Array:
    """Labels of floor(value / width) * width, built once per distinct band, not per row."""
    if pa.types.is_floating(values.type):
        values = pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    mask = np.asarray(pc.is_null(values).to_numpy(zero_copy_only=False), dtype=bool)
    if integer:
        raw = np.asarray(pc.fill_null(values.cast(pa.int64()), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
        low = np.floor_divide(raw, width) * width
    else:
        raw_f = np.asarray(pc.fill_null(values.cast(pa.float64()), 0.0).to_numpy(zero_copy_only=False), dtype=float)
        low = (np.floor(raw_f / width) * width).astype(np.int64)
    starts, index = np.unique(low, return_inverse=True)
    if integer:
        labels = [f"{s}-{s + width - 1}" for s in starts.tolist()]
    else:
        labels = [f"[{s},{s + width})" for s in starts.tolist()]
    dictionary = pa.array(labels, pa.string())
    indices = pa.array(index.astype(np.int32), pa.int32(), mask=mask)
    return pa.DictionaryArray.from_arrays(indices, dictionary).dictionary_decode()


def _key(values: pa.Array) -> pa.Array:
    """A null-free string key: '=' + value, or '' for null, so that nulls form a class of their own.

    Arrow joins never match nulls, hence the encoding.
    """
    strings = values.cast(pa.string())
    return pc.fill_null(pc.binary_join_element_wise(pa.scalar("="), strings, ""), "")


class _ClassCounter:
    """Equivalence-class sizes, merged batch after batch; memory follows the number of classes."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)
        self.total = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.merged: pa.Table | None = None

    def add(self, keys: Sequence[pa.Array], rows: int) -> None:
        self.total += rows
        if not self.names or rows == 0:
            return
        table = pa.table({name: _key(v) for name, v in zip(self.names, keys, strict=True)})
        partial = table.group_by(self.names, use_threads=False).aggregate([([], "count_all")])
        self.pending.append(partial.rename_columns([*self.names, _COUNT]))
        self.pending_rows += partial.num_rows
        merged_rows = self.merged.num_rows if self.merged is not None else 0
        if self.pending_rows > max(65_536, 2 * merged_rows):
            self._compact()

    def _compact(self) -> None:
        parts = ([self.merged] if self.merged is not None else []) + self.pending
        self.pending, self.pending_rows = [], 0
        if parts:
            self.merged = _sum_counts(pa.concat_tables(parts), self.names)

    def result(self, frequent: dict[str, pa.Array]) -> pa.Table:
        """Class sizes once rare categories fold into 'other' (keys in the `_key` encoding)."""
        if not self.names:
            return pa.table({_COUNT: pa.array([self.total] if self.total else [], pa.int64())})
        self._compact()
        if self.merged is None:
            return pa.table({**{n: pa.array([], pa.string()) for n in self.names}, _COUNT: pa.array([], pa.int64())})
        table = self.merged
        if frequent:
            for name, values in frequent.items():
                raw = table.column(name).combine_chunks()
                frequent_keys = _key(values)
                fold = pc.or_(pc.is_in(raw, value_set=frequent_keys), pc.equal(raw, ""))
                folded = pc.if_else(fold, raw, pa.scalar("=" + OTHER, pa.string()))
                table = table.set_column(table.schema.get_field_index(name), name, folded)
            table = _sum_counts(table, self.names)
        return table


def _sum_counts(table: pa.Table, names: Sequence[str]) -> pa.Table:
    summed = table.group_by(list(names), use_threads=False).aggregate([(_COUNT, "sum")])
    return summed.rename_columns([*names, _COUNT])


def _apply(
    scan: Scan,
    outputs: Sequence[_Output],
    qis: Sequence[_Output],
    frequent: dict[str, pa.Array],
    allowed: pa.Table,
    schema: pa.Schema,
    records_in: int,
    records_out: int,
) -> Iterator[pa.RecordBatch]:
    needed = [o.name for o in outputs]
    seen = out = 0
    for batch in scan():
        batch = _select(batch, needed)
        seen += batch.num_rows
        if batch.num_rows == 0:
            continue
        arrays = [_generalise_column(o, batch.column(o.name), frequent.get(o.name))[0] for o in outputs]
        result = pa.RecordBatch.from_arrays(arrays, schema=schema)
        if qis:
            keys = pa.table(
                {o.name: _key(result.column(o.name)) for o in qis}
                | {_ROW: pa.array(np.arange(batch.num_rows, dtype=np.int64))}
            )
            matched = keys.join(allowed, keys=[o.name for o in qis], join_type="inner", use_threads=False)
            rows = np.sort(np.asarray(matched.column(_ROW).to_numpy(), dtype=np.int64))
            result = result.take(pa.array(rows))
        elif records_out == 0:
            continue
        if result.num_rows:
            out += result.num_rows
            yield result
    if seen != records_in or out != records_out:
        raise DataError(
            "source_changed",
            f"the source changed between the two passes ({records_in} then {seen} records, "
            f"{records_out} expected out, {out} produced): the view is not k-anonymous, discard it"
        )
    if out == 0:
        yield pa.RecordBatch.from_pylist([], schema=schema)
