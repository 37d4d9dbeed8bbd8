"""Automated disclosure checks on the files a bubble asks to export.

Each check returns findings — {file, check, severity, message, parameters, cells|lines, count} —
that the `bulles.export` policy turns into release, review or refusal. The checks are pure
functions of bytes, the project's needles (identifier values and pseudonyms) and the rules, so a
check can be re-run on the quarantined copy and give the same findings.

The table rules and defaults are ACRO's (threshold 10, NK dominance n=2 k=0.9, p-ratio 0.1,
zeros disclosive, negative contributions to review), computed the same way so that both agree
cell by cell (tests/test_acro.py). Dominance needs the contributions behind each cell, which a
published CSV no longer holds: a magnitude table is checked only when it comes with a recipe
(`bulle.table` writes one) that the controller recomputes from the view it was made from;
otherwise it goes to a reviewer.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

PASS, REVIEW, FAIL = "pass", "review", "fail"
TEXT_TYPES = {"csv", "txt", "md", "json", "html", "svg", "log"}
RECIPE_SUFFIX = ".bulle.json"
RECIPE_FORMAT = "bulle-table/1"
AGGREGATES = ("count", "sum", "mean")
MAX_CELLS = 2_000_000  # a recomputed table larger than this goes to review rather than memory

# Magic numbers of containers: never unpacked, always named as such.
_ARCHIVES = (
    (0, b"PK\x03\x04", "zip"), (0, b"PK\x05\x06", "zip"), (0, b"\x1f\x8b", "gzip"), (0, b"BZh", "bzip2"),
    (0, b"\xfd7zXZ\x00", "xz"), (0, b"7z\xbc\xaf\x27\x1c", "7z"), (0, b"Rar!\x1a\x07", "rar"),
    (0, b"\x28\xb5\x2f\xfd", "zstd"), (257, b"ustar", "tar"),
)
_IMAGES = {"png": (b"\x89PNG\r\n\x1a\n",), "jpg": (b"\xff\xd8\xff",), "jpeg": (b"\xff\xd8\xff",)}
_TOKEN = re.compile(r"[0-9A-Za-z]+")


@dataclass(frozen=True)
class Rules:
    """Parameters of every rule; each finding names the ones it applied."""

    threshold: int = 10
    nk_n: int = 2
    nk_k: float = 0.9
    p_ratio: float = 0.1
    zeros_disclosive: bool = True
    max_rows: int = 5000
    min_identifier_chars: int = 6
    max_listed: int = 100

    @classmethod
    def from_reference(cls, exports: Mapping[str, Any]) -> "Rules":
        """The `sdc` block of policies/data/exports.json: the policy and the checks share one source."""
        values = dict(exports.get("sdc") or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"exports.json sdc: unknown rule parameter(s) {', '.join(unknown)}")
        return cls(**values)

    def table(self) -> dict[str, Any]:
        return {"threshold": self.threshold, "nk_n": self.nk_n, "nk_k": self.nk_k, "p_ratio": self.p_ratio,
                "zeros_disclosive": self.zeros_disclosive}


@dataclass(frozen=True)
class Needles:
    """What must never leave: identifier values of the project's personal sources, the project's
    pseudonyms of them, and the names of the columns that held them. The Arrow lookup sets are
    built once, when the needles are."""

    identifiers: frozenset[str] = frozenset()
    pseudonyms: frozenset[str] = frozenset()
    key_columns: Mapping[str, str] = field(default_factory=dict)  # column name -> source

    def __post_init__(self) -> None:
        wanted = self.identifiers | self.pseudonyms
        object.__setattr__(self, "_all", wanted)
        # an integer cell can only hold a needle made of digits alone (no leading zero, fits int64)
        numbers = [int(v) for v in wanted if v.isascii() and v.isdigit() and (v == "0" or v[0] != "0")
                   and int(v) < 2**63]
        object.__setattr__(self, "text_set", pa.array(list(wanted), type=pa.string()))
        object.__setattr__(self, "int_set", pa.array(numbers, type=pa.int64()))

    def all(self) -> frozenset[str]:
        return self._all

    def kind(self, value: str) -> str:
        return "pseudonym" if value in self.pseudonyms else "identifier"


def finding(file: str, check: str, severity: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"file": file, "check": check, "severity": severity, "message": message, **extra}


def _listed(items: Sequence[Any], rules: Rules) -> list[Any]:
    """The first cells or lines only: a finding counts them all and lists a readable few."""
    return list(items[: rules.max_listed])


# ------------------------------------------------------------------ content type


def sniff(data: bytes, declared: str) -> tuple[str, str] | None:
    """(check, message) when the content is not what the name declares; None when it is."""
    for offset, magic, kind in _ARCHIVES:
        if data[offset:offset + len(magic)] == magic:
            return "archive", (f"a {kind} archive: archives are refused unless the policy allows them, "
                               "and never unpacked by the airlock")
    if declared in _IMAGES:
        if not data.startswith(_IMAGES[declared]):
            return "content_type", f"declared {declared} but the content is not a {declared} image"
        return None
    if declared in TEXT_TYPES:
        if b"\x00" in data:
            return "content_type", f"declared {declared} but the content is binary (NUL bytes)"
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            return "content_type", f"declared {declared} but the content is not UTF-8 text (byte {exc.start})"
    return None


def text_of(data: bytes) -> str:
    return data.decode("utf-8-sig")


# ------------------------------------------------------------------ identifiers in text


def identifiers_in_text(file: str, text: str, needles: Needles, rules: Rules) -> list[dict[str, Any]]:
    """Every token of the text looked up among the needles; lines are reported, values never."""
    wanted = needles.all()
    if not wanted:
        return []
    hits: dict[str, list[int]] = {}
    line, position = 1, 0
    for match in _TOKEN.finditer(text):
        token = match.group()
        if len(token) >= rules.min_identifier_chars and token in wanted:
            line += text.count("\n", position, match.start())
            position = match.start()
            hits.setdefault(needles.kind(token), []).append(line)
    return [finding(file, "identifiers", FAIL, f"{len(lines)} {kind}(s) of the project's personal data found "
                    f"in the text", lines=_listed(lines, rules), count=len(lines))
            for kind, lines in sorted(hits.items())]


# ------------------------------------------------------------------ CSV tables


class MalformedTable(ValueError):
    pass


def delimiter_of(text: str) -> str:
    header = text.split("\n", 1)[0]
    counts = {d: header.count(d) for d in (",", ";", "\t", "|")}
    best = max(counts, key=lambda d: counts[d])
    return best if counts[best] else ","


def read_table(data: bytes) -> pa.Table:
    """A CSV as typed Arrow columns (pyarrow's inference: integers, floats, text), read from the
    bytes without copying them (sniff has already checked they are UTF-8)."""
    body = data[3:] if data.startswith(b"\xef\xbb\xbf") else data
    if not body.strip():
        raise MalformedTable("the table is empty")
    end = body.find(b"\n")
    delimiter = delimiter_of(body[: end if end >= 0 else len(body)].decode("utf-8", "replace"))
    try:
        return pacsv.read_csv(pa.BufferReader(memoryview(body)),
                              parse_options=pacsv.ParseOptions(delimiter=delimiter),
                              read_options=pacsv.ReadOptions(block_size=1 << 24))
    except pa.ArrowInvalid as exc:
        raise MalformedTable(str(exc).split("\n", 1)[0]) from None


def _numeric(column: pa.ChunkedArray) -> bool:
    return pa.types.is_integer(column.type) or pa.types.is_floating(column.type)


def _as_text(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return column
    return pc.cast(column, pa.string())


def _hits_in_text(values: pa.Array, value_set: pa.Array) -> np.ndarray:
    """Positions of the values that are a needle or hold one as a word."""
    whole = pc.indices_nonzero(pc.fill_null(pc.is_in(values, value_set=value_set), False)).to_numpy()
    words = pc.split_pattern_regex(values, r"[^0-9A-Za-z]+")
    inside = pc.indices_nonzero(pc.fill_null(pc.is_in(pc.list_flatten(words), value_set=value_set), False))
    return np.union1d(whole, pc.take(pc.list_parent_indices(words), inside).to_numpy()).astype(np.int64)


def _kind_of(text: str, needles: Needles) -> str:
    kinds = {needles.kind(t) for t in [text, *_TOKEN.findall(text)] if t in needles.pseudonyms or t in needles.identifiers}
    return "pseudonym" if kinds == {"pseudonym"} else "identifier"


def identifiers_in_table(file: str, table: pa.Table, needles: Needles, rules: Rules) -> list[dict[str, Any]]:
    """Whole cells and the words inside text cells, column by column, each distinct value looked
    up once (Arrow dictionary encoding); integer columns only against digit-only needles."""
    if not (needles.identifiers or needles.pseudonyms) or table.num_rows == 0:
        return []
    cells: dict[str, list[list[Any]]] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if pa.types.is_integer(column.type):
            if len(needles.int_set) == 0:
                continue
            rows = pc.indices_nonzero(pc.fill_null(pc.is_in(pc.abs(column), value_set=needles.int_set), False))
            for row in rows.to_numpy():
                cells.setdefault("identifier", []).append([int(row) + 1, name])
            continue
        encoded = pc.dictionary_encode(_as_text(column))
        hits = _hits_in_text(encoded.dictionary, needles.text_set)
        if not len(hits):
            continue
        kinds = {int(i): _kind_of(encoded.dictionary[int(i)].as_py(), needles) for i in hits}
        indices = encoded.indices.to_numpy(zero_copy_only=False)
        rows = np.flatnonzero(np.isin(indices, hits))
        for row in rows:
            cells.setdefault(kinds[int(indices[row])], []).append([int(row) + 1, name])
    return [finding(file, "identifiers", FAIL, f"{len(hits)} cell(s) hold {kind}s of the project's personal data",
                    cells=_listed(hits, rules), count=len(hits))
            for kind, hits in sorted(cells.items())]


def row_level(file: str, table: pa.Table, needles: Needles, rules: Rules) -> list[dict[str, Any]]:
    """Rows that describe individuals: a key column of a personal source, or too many rows."""
    found = []
    keys = [(name, needles.key_columns[name.strip().lower()]) for name in table.column_names
            if name.strip().lower() in needles.key_columns]
    if keys:
        names = ", ".join(f"'{name}' (source '{source}')" for name, source in keys)
        found.append(finding(file, "row_level", FAIL, f"the table has key column(s) of a personal source: {names}; "
                             "its rows describe individuals", columns=[k for k, _ in keys]))
    if table.num_rows > rules.max_rows:
        found.append(finding(file, "row_level", REVIEW, f"{table.num_rows} rows, over {rules.max_rows}: a table this "
                             "long may map one row to one person", parameters={"max_rows": rules.max_rows},
                             rows=table.num_rows))
    return found


def frequency_checks(file: str, table: pa.Table, rules: Rules) -> list[dict[str, Any]]:
    """A CSV whose numeric cells are all non-negative integers is read as a table of counts:
    threshold and zeros per cell. Any other numbers are magnitudes, which need their
    contributions (a recipe) to be checked."""
    values = [n for n in table.column_names if _numeric(table.column(n))]
    if not values:
        return [finding(file, "sdc", PASS, "no numeric cell: not a table of counts or magnitudes")]
    counts = True
    for name in values:
        column = table.column(name).drop_null()
        if len(column) == 0:
            continue
        as_float = pc.cast(column, pa.float64()).to_numpy()
        if (as_float < 0).any() or not np.all(np.floor(as_float) == as_float):
            counts = False
            break
    if not counts:
        return [finding(file, "magnitude_unverified", REVIEW, "a table of magnitudes without a recipe: dominance "
                        "(NK, p-ratio) cannot be checked from the published cells; write it with bulle.table() "
                        "or have a reviewer look", columns=values)]
    small, zeros = [], []
    for name in values:
        cells = pc.cast(table.column(name), pa.float64()).to_numpy(zero_copy_only=False)
        for row in np.flatnonzero(cells < rules.threshold):
            (zeros if cells[row] == 0 else small).append([int(row) + 1, name])
    return _table_findings(file, small, zeros, [], [], [], rules, cells_checked=table.num_rows * len(values),
                           magnitudes=False)


def _table_findings(file: str, small: list, zeros: list, nk: list, pratio: list, negative: list, rules: Rules,
                    *, cells_checked: int, magnitudes: bool) -> list[dict[str, Any]]:
    out = []
    params = rules.table()
    for check, cells, severity, text in (
        ("threshold", small, FAIL, f"cell(s) count fewer than {rules.threshold} contributors"),
        ("zeros", zeros, FAIL if rules.zeros_disclosive else PASS, "zero cell(s): zeros are disclosive under the rules"),
        ("dominance_nk", nk, FAIL, f"cell(s) where the {rules.nk_n} largest contributors make ≥ {rules.nk_k:.0%} "
                                   "of the total"),
        ("p_ratio", pratio, FAIL, f"cell(s) where the rest of the total is under {rules.p_ratio:.0%} of the largest "
                                  "contributor"),
        ("negative", negative, REVIEW, "cell(s) with negative contributions: dominance is undefined"),
    ):
        if cells:
            out.append(finding(file, check, severity, f"{len(cells)} {text}", parameters=params,
                               cells=_listed(cells, rules), count=len(cells)))
    if not out:
        out.append(finding(file, "sdc", PASS, f"{cells_checked} cell(s) checked: threshold, zeros"
                           + (", dominance, p-ratio" if magnitudes else ""), parameters=params))
    return out


# ------------------------------------------------------------------ tables recomputed from microdata


@dataclass
class CellStats:
    """Per cell of the full product of the dimensions' levels (row-major, levels sorted)."""

    dimensions: list[str]
    levels: list[list[Any]]
    count: np.ndarray
    total: np.ndarray
    top1: np.ndarray
    top2: np.ndarray
    negatives: np.ndarray
    contributions: np.ndarray | None = None  # non-missing values per cell (None for a count table)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(levels) for levels in self.levels)

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            n = self.count if self.contributions is None else self.contributions
            return np.where(n > 0, self.total / np.maximum(n, 1), np.nan)

    def key(self, flat_index: int) -> tuple[Any, ...]:
        return tuple(lv[i] for lv, i in zip(self.levels, np.unravel_index(flat_index, self.shape)))


def cell_stats(micro: pa.Table, dimensions: Sequence[str], values: str | None) -> CellStats:
    """Count, sum, the two largest contributions and the negatives of every cell. Rows with a
    missing dimension are left out (as pandas' crosstab does); missing values count as rows but
    contribute nothing."""
    keep = micro.select(list(dimensions) + ([values] if values else []))
    for i, name in enumerate(keep.column_names):  # categoricals (e.g. Stata value labels) as plain values
        if pa.types.is_dictionary(keep.schema.field(name).type):
            keep = keep.set_column(i, name, pc.cast(keep.column(name), keep.schema.field(name).type.value_type))
    for name in dimensions:
        keep = keep.filter(pc.is_valid(keep.column(name)))
    levels, codes = [], []
    for name in dimensions:
        column = keep.column(name).combine_chunks()
        uniques = pc.unique(column)
        ordered = pc.take(uniques, pc.sort_indices(uniques))
        levels.append(ordered.to_pylist())
        codes.append(pc.index_in(column, value_set=ordered).to_numpy(zero_copy_only=False).astype(np.int64))
    shape = tuple(len(lv) for lv in levels)
    size = int(np.prod(shape)) if shape else 1
    if size > MAX_CELLS:
        raise MalformedTable(f"the table would have {size} cells, over {MAX_CELLS}")
    flat = np.ravel_multi_index(codes, shape) if codes else np.zeros(keep.num_rows, dtype=np.int64)
    count = np.bincount(flat, minlength=size).astype(np.int64)
    zeros = np.zeros(size)
    if values is None:
        return CellStats(list(dimensions), levels, count, zeros, zeros.copy(), zeros.copy(), np.zeros(size, np.int64))
    v = pc.cast(keep.column(values), pa.float64()).to_numpy(zero_copy_only=False)
    present = ~np.isnan(v)
    flat_v, v = flat[present], v[present]
    total = np.bincount(flat_v, weights=v, minlength=size)
    negatives = np.bincount(flat_v, weights=(v < 0).astype(float), minlength=size).astype(np.int64)
    order = np.lexsort((-v, flat_v))  # by cell, then largest first
    cells_sorted, v_sorted = flat_v[order], v[order]
    first = np.ones(len(cells_sorted), dtype=bool)
    first[1:] = cells_sorted[1:] != cells_sorted[:-1]
    second = np.zeros(len(cells_sorted), dtype=bool)
    second[1:] = first[:-1] & ~first[1:]
    top1, top2 = np.zeros(size), np.zeros(size)
    top1[cells_sorted[first]] = v_sorted[first]
    top2[cells_sorted[second]] = v_sorted[second]
    return CellStats(list(dimensions), levels, count, total, top1, top2, negatives,
                     np.bincount(flat_v, minlength=size).astype(np.int64))


def table_masks(stats: CellStats, rules: Rules, magnitudes: bool) -> dict[str, np.ndarray]:
    """ACRO's masks (True = disclosive) over the cells, in the stats' order."""
    masks = {"threshold": stats.count < rules.threshold}
    masks["zeros"] = (stats.count == 0) if rules.zeros_disclosive else np.zeros(stats.count.shape, bool)
    if magnitudes:
        top_n = stats.top1 + (stats.top2 if rules.nk_n >= 2 else 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            masks["dominance_nk"] = np.nan_to_num(top_n / stats.total, nan=0.0, posinf=0.0, neginf=0.0) >= rules.nk_k
            rest = stats.total - stats.top1 - stats.top2
            ratio = np.where(stats.top1 == 0, rest, rest / np.where(stats.top1 == 0, 1, stats.top1))
            if stats.contributions is not None:  # no value in the cell: ACRO's max is NaN, p passes
                ratio = np.where(stats.contributions == 0, np.nan, ratio)
        masks["p_ratio"] = np.nan_to_num(ratio, nan=1.0) < rules.p_ratio
        masks["negative"] = stats.negatives > 0
    return masks


@dataclass(frozen=True)
class Recipe:
    """How a table was made from a view (written by `bulle.table` next to the CSV)."""

    view: str
    dimensions: list[str]
    values: str | None
    aggfunc: str
    column: str

    @classmethod
    def parse(cls, data: bytes) -> "Recipe":
        try:
            raw = json.loads(data)
        except ValueError as exc:
            raise MalformedTable(f"recipe is not JSON: {exc}") from None
        if not isinstance(raw, dict) or raw.get("format") != RECIPE_FORMAT:
            raise MalformedTable(f"recipe: 'format' must be '{RECIPE_FORMAT}'")
        dims, aggfunc, values = raw.get("dimensions"), raw.get("aggfunc"), raw.get("values")
        if not isinstance(dims, list) or not dims or not all(isinstance(d, str) and d for d in dims):
            raise MalformedTable("recipe: 'dimensions' must be a non-empty list of column names")
        if aggfunc not in AGGREGATES:
            raise MalformedTable(f"recipe: 'aggfunc' must be one of {', '.join(AGGREGATES)}")
        if (values is None) != (aggfunc == "count") or (values is not None and not isinstance(values, str)):
            raise MalformedTable("recipe: 'values' names a column for sum and mean, and is null for count")
        if not isinstance(raw.get("view"), str) or not isinstance(raw.get("column"), str):
            raise MalformedTable("recipe: 'view' and 'column' must be strings")
        return cls(raw["view"], dims, values, aggfunc, raw["column"])


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def recipe_checks(file: str, table: pa.Table, recipe: Recipe, micro: pa.Table, rules: Rules) -> list[dict[str, Any]]:
    """Recompute the table from the view; check its cells with every rule; any published cell that
    the recomputation does not give (edited, rounded, from other data) sends it to review."""
    missing = [c for c in [*recipe.dimensions, recipe.column] if c not in table.column_names]
    if missing:
        return [finding(file, "table_mismatch", REVIEW, f"the table lacks the recipe's column(s) {', '.join(missing)}")]
    absent = [c for c in [*recipe.dimensions, *([recipe.values] if recipe.values else [])] if c not in micro.column_names]
    if absent:
        return [finding(file, "table_mismatch", REVIEW, f"view '{recipe.view}' has no column(s) {', '.join(absent)}")]
    stats = cell_stats(micro, recipe.dimensions, recipe.values)
    expected = stats.count.astype(float) if recipe.aggfunc == "count" else (
        stats.total if recipe.aggfunc == "sum" else stats.mean())
    index = {tuple(_label(v) for v in stats.key(i)): i for i in range(len(stats.count))}
    keys = [[_label(v) for v in table.column(d).to_pylist()] for d in recipe.dimensions]
    published = pc.cast(table.column(recipe.column), pa.float64()).to_numpy(zero_copy_only=False)
    positions, mismatched = [], []
    for row, key in enumerate(zip(*keys)):
        at = index.get(tuple(key))
        want = expected[at] if at is not None else None
        got = published[row]
        same = want is not None and ((math.isnan(want) and math.isnan(got)) or
                                     (not math.isnan(want) and math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-9)) or
                                     (recipe.aggfunc == "sum" and stats.count[at] == 0 and math.isnan(got)))
        if not same:
            mismatched.append([row + 1, recipe.column])
        positions.append(at)
    if mismatched:
        return [finding(file, "table_mismatch", REVIEW, f"{len(mismatched)} cell(s) differ from the table recomputed "
                        f"from view '{recipe.view}': the rules cannot vouch for it", cells=_listed(mismatched, rules),
                        count=len(mismatched))]
    masks = table_masks(stats, rules, magnitudes=recipe.aggfunc != "count")
    flagged = {name: [] for name in ("threshold", "zeros", "dominance_nk", "p_ratio", "negative")}
    for row, at in enumerate(positions):
        for name, mask in masks.items():
            if mask[at] and not (name == "threshold" and stats.count[at] == 0):
                flagged[name].append([row + 1, recipe.column])
    negative = flagged["negative"]
    if negative:  # as ACRO: with negative contributions, dominance is for a reviewer
        flagged["dominance_nk"], flagged["p_ratio"] = [], []
    found = _table_findings(file, flagged["threshold"], flagged["zeros"], flagged["dominance_nk"], flagged["p_ratio"],
                            negative, rules, cells_checked=len(positions), magnitudes=recipe.aggfunc != "count")
    for item in found:
        item["recipe"] = asdict(recipe)
    return found


# ------------------------------------------------------------------ ACRO evidence


def acro_results(data: bytes) -> dict[str, Any] | None:
    """ACRO's results.json, when the file is one (None otherwise)."""
    try:
        raw = json.loads(data)
    except ValueError:
        return None
    if isinstance(raw, dict) and isinstance(raw.get("results"), dict) and (
            "version" in raw or (isinstance(raw.get("tool"), dict) and raw["tool"].get("name") == "ACRO")):
        return raw
    return None


def acro_findings(results_path: str, results: Mapping[str, Any], files: Mapping[str, str],
                  checksums: Mapping[str, str]) -> list[dict[str, Any]]:
    """ACRO's statuses, taken as evidence: fail and review count, pass never overrides our checks.

    `files` maps each requested path to its sha256, `checksums` each ACRO checksum file's path to its
    content. ACRO names outputs relative to its results folder."""
    folder = results_path.rsplit("/", 1)[0] + "/" if "/" in results_path else ""
    out = []
    for uid, output in sorted(results["results"].items()):
        if not isinstance(output, dict):
            out.append(finding(results_path, "acro", REVIEW, f"ACRO output '{uid}' is malformed"))
            continue
        status = str(output.get("status", "")).lower()
        severity = {"pass": PASS, "fail": FAIL, "review": REVIEW}.get(status, REVIEW)
        summary = str(output.get("summary", ""))[:500]
        for entry in output.get("files") or []:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                continue
            path = folder + name
            exception = output.get("exception") or ""
            out.append(finding(path, "acro", severity, f"ACRO output '{uid}' ({output.get('type')}): {status}"
                               + (f" — {summary}" if summary else "") + (f"; exception asked: {exception}"
                                                                         if exception else ""),
                               acro={"uid": uid, "status": status, "sdc": entry.get("sdc")}))
            if path not in files:
                out.append(finding(results_path, "acro", REVIEW, f"ACRO lists '{name}', which is not in the request"))
                continue
            recorded = checksums.get(f"{folder}checksums/{name}.txt")
            if recorded is None:
                out.append(finding(path, "acro_checksum", REVIEW, f"no ACRO checksum for '{name}'"))
            elif recorded.strip() != files[path]:
                out.append(finding(path, "acro_checksum", FAIL, f"'{name}' changed after ACRO checked it: its "
                                   "sha256 differs from ACRO's checksum"))
    return out


# ------------------------------------------------------------------ one file


def file_type(path: str) -> str:
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[-1].lower() if "." in name.lstrip(".") else ""


def check_file(path: str, data: bytes, needles: Needles, rules: Rules, *, recipe: Recipe | None = None,
               micro: pa.Table | None = None, statistical: bool = True) -> list[dict[str, Any]]:
    """Every check that applies to one file; at least one finding, so the policy knows it ran.
    `statistical` is False when the bubble holds only open data: nothing to protect in a table."""
    declared = file_type(path)
    wrong = sniff(data, declared)
    if wrong:
        return [finding(path, wrong[0], FAIL, wrong[1])]
    if declared not in TEXT_TYPES:
        return [finding(path, "content_type", PASS, f"a {declared or 'typeless'} file: not text, only a reviewer "
                        "can read it")]
    if declared != "csv":
        return identifiers_in_text(path, text_of(data), needles, rules) or [
            finding(path, "identifiers", PASS, "no identifier or pseudonym of the project's personal data")]
    try:
        table = read_table(data)
    except MalformedTable as exc:
        return [finding(path, "malformed", FAIL, f"not a readable CSV table: {exc}")]
    found = identifiers_in_table(path, table, needles, rules) + row_level(path, table, needles, rules)
    if not statistical:
        found.append(finding(path, "sdc", PASS, "the bubble holds only open data: disclosure rules do not apply"))
    elif recipe is not None and micro is not None:
        try:
            found += recipe_checks(path, table, recipe, micro, rules)
        except MalformedTable as exc:
            found.append(finding(path, "table_mismatch", REVIEW, str(exc)))
    else:
        found += frequency_checks(path, table, rules)
    return found


def summary(findings: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    counts = {PASS: 0, REVIEW: 0, FAIL: 0}
    for f in findings:
        counts[f.get("severity", REVIEW)] = counts.get(f.get("severity", REVIEW), 0) + 1
    return counts


def parse_checksum(data: bytes) -> str:
    return data.decode("ascii", "replace").strip().split()[0] if data.strip() else ""


