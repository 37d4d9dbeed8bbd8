"""Synthetic access mode: rows drawn from a model of the source, none of them a real person's.

The model is deliberately simple and auditable: one marginal distribution per column and a
Gaussian copula for the dependencies between columns. It keeps what analyses and code
development need (category frequencies, distributions, correlations such as the social
gradient of grades) and leaves out what identifies people:

* the model is fitted on a bounded uniform sample of the source (a reservoir drawn in one
  pass), so memory never grows with the number of rows and the model cannot memorise more
  than ``sample_rows`` records;
* categories seen fewer than :data:`RARE` times in the sample are merged into ``"other"``, so
  a rare real value (a small school, an unusual commune) is never reproduced;
* numeric columns are drawn from their empirical quantile function, linearly interpolated on a
  fixed grid of quantiles and clamped to the :data:`RARE`-th smallest and largest sample
  values, so an extreme real value (the pupil with 150 half-days of absence) is never output;
  a numeric column with fewer than ``2 * RARE`` values in the sample is not modelled at all and
  comes out null;
* identifier columns are not modelled: each synthetic row gets a fresh random opaque id,
  ``"syn-"`` and 16 hex digits, so code written against the synthetic view runs unchanged on the
  real one while no id can be linked to anything (the column is a string whatever its declared
  type); identifiers are not even read from the source.

Copula: each column is mapped to normal scores (``norm.ppf`` of mid-ranks; a category maps to
the middle of its probability interval). Categories need an order for a Gaussian copula to carry
their dependencies; they are ordered by the mean, within each category, of the first principal
component of the numeric columns' scores, so an ordinal effect like the social gradient of
grades survives. Numeric nulls get their own latent dimension (null or not), so that nulls
keep their links to other columns (grades are null in maternelle); the correlation of value
dimensions is computed on pairwise complete rows and repaired to the nearest valid correlation
matrix by eigenvalue clipping. Categorical nulls are a category like any other.

Determinism: the same source, ``seed``, ``size`` and ``sample_rows`` give the same rows, however
the source is split into batches (reservoir keys come from one random stream, in row order).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from scipy.stats import norm

from catalog.model import Column
from catalog.vocab import ColumnRole, ColumnType
from connectors.base import ARROW_TYPES, BATCH_ROWS, Scan

"""Returns a fresh iterator over the source each time it is called."""

RARE = 5
"""A category, or an extreme numeric value, must be backed by at least this many sample rows."""
OTHER = "other"
ID_PREFIX = "syn-"
_GRID = 1001  # quantiles kept per numeric column
_STEPS = (1.0, 0.5, 0.25, 0.2, 0.1, 0.05, 0.01)  # resolutions recognised in float columns
_MIN_PAIRS = 10  # fewer complete pairs than this: the two dimensions are taken as independent


def synthesise(
    scan: Scan, columns: Sequence[Column], *, size: int, seed: int, sample_rows: int = 100_000
) -> tuple[Iterator[pa.RecordBatch], dict[str, Any]]:
    """``size`` synthetic rows with the declared columns and types, and the manifest statistics.

    Fitting (one pass over the source) runs now; rows are drawn as the iterator is consumed, in
    batches of at most ``BATCH_ROWS``. At least one batch is yielded, so the schema is known.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be an integer >= 0, not {size!r}")
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 1:
        raise ValueError(f"sample_rows must be an integer >= 1, not {sample_rows!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, not {seed!r}")
    names = [c.name for c in columns]
    if len(set(names)) != len(names):
        raise ValueError("columns: duplicate column names")
    if not columns:
        raise ValueError("columns: nothing to synthesise")
    modelled = [c for c in columns if c.role is not ColumnRole.identifier]
    sampling, drawing = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    sample, records_in = reservoir_sample(scan, modelled, sample_rows, sampling)
    model = _fit(sample, modelled)
    stats: dict[str, Any] = {
        "size": size,
        "seed": seed,
        "sample_rows": sample_rows,
        "records_in": records_in,
        "fitted_on_rows": sample.num_rows,
        "copula_dimension": model.dimension,
        "rare_threshold": RARE,
        "columns": {
            c.name: {"kind": "identifier", "generated": "fresh random ids"}
            if c.role is ColumnRole.identifier
            else model.marginals[c.name].describe()
            for c in columns
        },
    }
    return _draw(model, columns, size, drawing), stats


def reservoir_sample(
    scan: Scan, columns: Sequence[Column], sample_rows: int, rng: np.random.Generator
) -> tuple[pa.Table, int]:
    """A uniform sample without replacement of at most ``sample_rows`` rows, and the rows seen.

    Bottom-k sampling: every row gets a uniform key and the rows with the smallest keys are
    kept; once the reservoir is full, a batch only contributes the rows whose key beats the
    largest kept one. Memory: the reservoir plus one batch.
    """
    names = [c.name for c in columns]
    schema = pa.schema([pa.field(c.name, ARROW_TYPES[c.type]) for c in columns])
    kept = schema.empty_table()
    keys = np.empty(0)
    seen = 0
    for batch in scan():
        missing = [n for n in names if n not in batch.schema.names]
        if missing:
            raise ValueError(f"the scan did not return column {', '.join(repr(n) for n in missing)}")
        n = batch.num_rows
        seen += n
        if n == 0:
            continue
        batch_keys = rng.random(n)
        if kept.num_rows >= sample_rows:
            better = batch_keys < keys.max()
            if not better.any():
                continue
            batch = batch.filter(pa.array(better))
            batch_keys = batch_keys[better]
        arrays = [batch.column(name).cast(schema.field(name).type) for name in names]
        kept = pa.concat_tables([kept, pa.Table.from_arrays(arrays, schema=schema)])
        keys = np.concatenate([keys, batch_keys])
        if kept.num_rows > sample_rows:
            chosen = np.sort(np.argpartition(keys, sample_rows - 1)[:sample_rows])
            kept, keys = kept.take(pa.array(chosen)), keys[chosen]
        kept = kept.combine_chunks()
    order = np.argsort(keys, kind="stable")
    return kept.take(pa.array(order)), seen


# --- marginals ---------------------------------------------------------------------------------


@dataclass
class _Categorical:
    name: str
    type: pa.DataType
    values: list[Any]  # in latent order; None is the null category
    probs: np.ndarray
    merged: int = 0

    @property
    def dims(self) -> int:
        return 1

    def describe(self) -> dict[str, Any]:
        null = self.values.index(None) if None in self.values else None
        return {
            "kind": "categorical",
            "categories": sum(1 for v in self.values if v is not None),
            "merged_to_other": self.merged,
            "null_rate": float(self.probs[null]) if null is not None else 0.0,
        }

    def scores(self, column: pa.Array) -> np.ndarray:
        cum = np.concatenate([[0.0], np.cumsum(self.probs)])
        middle = norm.ppf(np.clip((cum[:-1] + cum[1:]) / 2, 1e-12, 1 - 1e-12))
        index = {v: i for i, v in enumerate(self.values)}
        # Values merged away as rare are found under "other".
        codes = np.array([index.get(v, index.get(OTHER, 0)) for v in column.to_pylist()], dtype=np.int64)
        return middle[codes]

    def draw(self, u: np.ndarray) -> pa.Array:
        cum = np.cumsum(self.probs)
        codes = np.minimum(np.searchsorted(cum, u, side="right"), len(self.values) - 1)
        dictionary = pa.array(self.values, self.type)
        return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), dictionary).dictionary_decode()


@dataclass
class _Numeric:
    name: str
    type: pa.DataType
    kind: str  # "numeric" or "date"
    null_rate: float
    grid: np.ndarray = field(default_factory=lambda: np.empty(0))  # quantiles at linspace(0, 1)
    low: float = 0.0
    high: float = 0.0
    step: float | None = None  # values are rounded to a multiple of this (1 for integers)

    @property
    def modelled(self) -> bool:
        return self.grid.size > 0

    @property
    def has_null_dim(self) -> bool:
        return self.modelled and 0.0 < self.null_rate < 1.0

    @property
    def dims(self) -> int:
        return (1 if self.modelled else 0) + (1 if self.has_null_dim else 0)

    def describe(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"kind": self.kind, "null_rate": self.null_rate if self.modelled else 1.0}
        if not self.modelled:
            entry["not_modelled"] = f"fewer than {2 * RARE} values in the sample: output null"
        elif self.step is not None and self.kind == "numeric":
            entry["resolution"] = self.step
        return entry

    def draw(self, u_value: np.ndarray | None, u_null: np.ndarray | None, n: int) -> pa.Array:
        if not self.modelled or u_value is None:
            return pa.nulls(n, self.type)
        probs = np.linspace(0.0, 1.0, self.grid.size)
        values = np.clip(np.interp(u_value, probs, self.grid), self.low, self.high)
        if self.step is not None:
            values = np.round(values / self.step) * self.step
            values = np.clip(values, self.low, self.high)
        mask = u_null < self.null_rate if u_null is not None else None
        if pa.types.is_floating(self.type):
            return pa.array(values, self.type, mask=mask)
        integers = np.round(values).astype(np.int64)
        if pa.types.is_date32(self.type):
            return pa.array(integers.astype(np.int32), pa.int32(), mask=mask).cast(self.type)
        return pa.array(integers, pa.int64(), mask=mask).cast(self.type)


def _as_float(column: pa.Array) -> np.ndarray:
    """Values as float64, NaN for nulls: dates as day ordinals, timestamps as their integer ticks."""
    if pa.types.is_date32(column.type):
        column = column.cast(pa.int32())
    elif pa.types.is_timestamp(column.type):
        column = column.cast(pa.int64())
    values = np.array(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=float)  # a writable copy
    values[~np.isfinite(values)] = np.nan
    return values


def _fit_numeric(column: Column, data: pa.Array) -> _Numeric:
    kind = "date" if column.type in (ColumnType.date, ColumnType.timestamp) else "numeric"
    type_ = ARROW_TYPES[column.type]
    numbers = _as_float(data)
    values = np.sort(numbers[np.isfinite(numbers)])
    n = len(data)
    null_rate = 1.0 - len(values) / n if n else 1.0
    if len(values) < 2 * RARE:
        return _Numeric(column.name, type_, kind, null_rate)
    grid = np.quantile(values, np.linspace(0.0, 1.0, _GRID))
    step: float | None = 1.0 if column.type is not ColumnType.float64 else None
    if step is None:
        for candidate in _STEPS:
            if np.allclose(values / candidate, np.round(values / candidate), rtol=0, atol=1e-9):
                step = candidate
                break
    low, high = float(values[RARE - 1]), float(values[-RARE])
    return _Numeric(column.name, type_, kind, float(null_rate), grid, low, high, step)


def _value_scores(marginal: _Numeric, data: pa.Array) -> tuple[np.ndarray, np.ndarray | None]:
    """Normal scores of the values (NaN where null) and of the null indicator (nulls at the bottom)."""
    numbers = _as_float(data)
    present = np.isfinite(numbers)
    scores = np.full(len(data), np.nan)
    if present.any():
        scores[present] = norm.ppf((_average_ranks(numbers[present]) - 0.5) / present.sum())
    null_scores = None
    if marginal.has_null_dim:
        p = float((~present).mean())
        null_scores = np.where(present, norm.ppf(p + (1 - p) / 2), norm.ppf(p / 2))
    return scores, null_scores


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank, so the result does not depend on row order."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    starts = np.concatenate([[True], sorted_values[1:] != sorted_values[:-1]])
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    last = np.concatenate([first[1:], [len(values)]]) - 1
    mean_rank = (first + last) / 2.0 + 1.0
    ranks = np.empty(len(values))
    ranks[order] = mean_rank[group]
    return ranks


def _fit_categorical(column: Column, data: pa.Array, score: np.ndarray | None) -> _Categorical:
    type_ = ARROW_TYPES[column.type]
    labels = data.to_pylist()
    counts: dict[Any, int] = {}
    for v in labels:
        counts[v] = counts.get(v, 0) + 1
    merged = 0
    if column.type is not ColumnType.boolean:  # two values carry no rare-value risk
        rare = [v for v, c in counts.items() if v is not None and v != OTHER and c < RARE]
        if rare:
            merged = len(rare)
            extra = sum(counts.pop(v) for v in rare)
            counts[OTHER] = counts.get(OTHER, 0) + extra
            rare_set = set(rare)
            labels = [OTHER if v in rare_set else v for v in labels]
    values = sorted(counts, key=lambda v: (v is None, str(v)))
    if score is not None and len(values) > 1:
        sums: dict[Any, float] = {v: 0.0 for v in values}
        for v, s in zip(labels, score.tolist(), strict=True):
            sums[v] += s
        values = sorted(values, key=lambda v: (sums[v] / counts[v], v is None, str(v)))
    total = sum(counts.values())
    probs = np.array([counts[v] / total for v in values]) if total else np.array([1.0])
    if not values:
        values = [None]
    return _Categorical(column.name, type_, values, probs, merged)


# --- the copula --------------------------------------------------------------------------------


@dataclass
class _Model:
    marginals: dict[str, _Categorical | _Numeric]
    slots: dict[str, tuple[int | None, int | None]]  # column -> (value dim, null dim)
    cholesky: np.ndarray

    @property
    def dimension(self) -> int:
        return int(self.cholesky.shape[0])


def _fit(sample: pa.Table, columns: Sequence[Column]) -> _Model:
    numeric = [c for c in columns if c.type not in (ColumnType.string, ColumnType.boolean)]
    marginals: dict[str, _Categorical | _Numeric] = {}
    value_scores: dict[str, np.ndarray] = {}
    null_scores: dict[str, np.ndarray] = {}
    for c in numeric:
        m = _fit_numeric(c, sample.column(c.name).combine_chunks())
        marginals[c.name] = m
        if m.modelled:
            value_scores[c.name], maybe_null = _value_scores(m, sample.column(c.name).combine_chunks())
            if maybe_null is not None:
                null_scores[c.name] = maybe_null

    axis = _principal_axis(list(value_scores.values()), sample.num_rows)
    for c in columns:
        if c.name not in marginals:
            marginals[c.name] = _fit_categorical(c, sample.column(c.name).combine_chunks(), axis)

    latent: list[np.ndarray] = []
    slots: dict[str, tuple[int | None, int | None]] = {}
    for c in columns:
        m = marginals[c.name]
        if isinstance(m, _Categorical):
            slots[c.name] = (len(latent), None)
            latent.append(m.scores(sample.column(c.name).combine_chunks()))
            continue
        value_dim = null_dim = None
        if c.name in value_scores:
            value_dim = len(latent)
            latent.append(value_scores[c.name])
        if c.name in null_scores:
            null_dim = len(latent)
            latent.append(null_scores[c.name])
        slots[c.name] = (value_dim, null_dim)
    correlation = _nearest_correlation(_pairwise_correlation(np.column_stack(latent) if latent else np.empty((0, 0))))
    cholesky = np.linalg.cholesky(correlation) if latent else np.empty((0, 0))
    return _Model(marginals, slots, cholesky)


def _principal_axis(scores: list[np.ndarray], rows: int) -> np.ndarray | None:
    """Each row's position on the first principal component of the numeric scores (nulls at 0)."""
    if not scores or rows == 0:
        return None
    matrix = np.column_stack(scores)
    if matrix.shape[1] == 1:
        return np.nan_to_num(matrix[:, 0])
    correlation = _nearest_correlation(_pairwise_correlation(matrix))
    _, vectors = np.linalg.eigh(correlation)
    leading = vectors[:, -1]
    leading = leading * np.sign(leading[np.argmax(np.abs(leading))])  # a fixed sign, for determinism
    return np.nan_to_num(matrix) @ leading


def _pairwise_correlation(z: np.ndarray) -> np.ndarray:
    """Pearson correlations on the rows where both dimensions are known (0 when undefined)."""
    d = z.shape[1]
    if d == 0:
        return np.empty((0, 0))
    present = np.isfinite(z).astype(float)
    filled = np.where(present > 0, z, 0.0)
    n = present.T @ present
    sum_x = filled.T @ present  # [i, j]: sum of dim i over rows where j is known too
    sum_xx = (filled**2).T @ present
    sum_xy = filled.T @ filled
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_i = sum_x / n
        mean_j = mean_i.T
        cov = sum_xy / n - mean_i * mean_j
        var_i = sum_xx / n - mean_i**2
        var_j = var_i.T
        corr = cov / np.sqrt(var_i * var_j)
    corr[~np.isfinite(corr) | (n < _MIN_PAIRS) | (var_i <= 1e-12) | (var_j <= 1e-12)] = 0.0
    corr = np.clip((corr + corr.T) / 2, -1.0, 1.0)
    np.fill_diagonal(corr, 1.0)
    return corr


def _nearest_correlation(corr: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """A positive-definite correlation matrix close to ``corr`` (eigenvalues clipped, rescaled)."""
    if corr.size == 0:
        return corr
    values, vectors = np.linalg.eigh(corr)
    repaired = (vectors * np.maximum(values, floor)) @ vectors.T
    scale = np.sqrt(np.diag(repaired))
    repaired = repaired / np.outer(scale, scale)
    return (repaired + repaired.T) / 2


# --- drawing -----------------------------------------------------------------------------------


def _draw(model: _Model, columns: Sequence[Column], size: int, rng: np.random.Generator) -> Iterator[pa.RecordBatch]:
    schema = pa.schema([pa.field(c.name, _output_type(c, model)) for c in columns])
    done = 0
    while done < size or done == 0:
        n = min(BATCH_ROWS, size - done)
        z = rng.standard_normal((n, model.dimension)) @ model.cholesky.T if model.dimension else np.empty((n, 0))
        u = norm.cdf(z)
        arrays: list[pa.Array] = []
        for c in columns:
            if c.role is ColumnRole.identifier:
                arrays.append(_fresh_ids(rng, n))
                continue
            m = model.marginals[c.name]
            value_dim, null_dim = model.slots[c.name]
            if isinstance(m, _Categorical):
                arrays.append(m.draw(u[:, value_dim]) if value_dim is not None else pa.nulls(n, m.type))
            else:
                arrays.append(m.draw(
                    u[:, value_dim] if value_dim is not None else None,
                    u[:, null_dim] if null_dim is not None else None,
                    n,
                ))
        yield pa.RecordBatch.from_arrays(arrays, schema=schema)
        done += n
        if size == 0:
            break


def _output_type(column: Column, model: _Model) -> pa.DataType:
    if column.role is ColumnRole.identifier:
        return pa.string()
    return model.marginals[column.name].type


def _fresh_ids(rng: np.random.Generator, n: int) -> pa.Array:
    """n opaque ids 'syn-' + 16 hex digits, built as bytes without a per-row Python loop."""
    width = len(ID_PREFIX) + 16
    digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    raw = np.frombuffer(rng.bytes(8 * n), dtype=np.uint8).reshape(n, 8)
    chars = np.empty((n, width), dtype=np.uint8)
    chars[:, : len(ID_PREFIX)] = np.frombuffer(ID_PREFIX.encode("ascii"), dtype=np.uint8)
    chars[:, len(ID_PREFIX) :: 2] = digits[raw >> 4]
    chars[:, len(ID_PREFIX) + 1 :: 2] = digits[raw & 0x0F]
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))
