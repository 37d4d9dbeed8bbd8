"""Aggregated mode: exact counts and margins, and no suppressed cell recoverable by subtraction."""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import scan_of
from catalog.synthetic import ANNUAIRE_CSV, IPS_CSVS, generate_pupils, load_schools
from connectors.aggregate import MAX_DIMENSIONS, TOTAL, aggregate
from connectors.base import DataError




def rows_of(table: pa.Table, dims: list[str]) -> dict[tuple[Any, ...], dict[str, Any]]:
    return {tuple(r[d] for d in dims): r for r in table.to_pylist()}


def lines_of(table: pa.Table, dims: list[str]) -> list[tuple[tuple[Any, ...], list[tuple[Any, ...]]]]:
    """Every line as a reader rebuilds it from the published table alone: a margin and its cells."""
    keys = list(rows_of(table, dims))
    lines: dict[tuple[int, tuple[Any, ...]], list[tuple[Any, ...]]] = defaultdict(list)
    for key in keys:
        for i, value in enumerate(key):
            if value != TOTAL:
                lines[(i, key[:i] + (TOTAL,) + key[i + 1 :])].append(key)
    present = set(keys)
    for (_, margin), _members in lines.items():
        assert margin in present, f"line without its margin {margin}"
    return [(margin, members) for (_, margin), members in lines.items()]


def subtraction_attack(table: pa.Table, dims: list[str], value: str = "count") -> dict[tuple[Any, ...], float]:
    """What an attacker recovers by repeated 'total minus the published cells' over every line.

    Recovered values are fed back, so a cascade through several lines is tried too. Cells that
    do not appear in the table are zeros the attacker knows.
    """
    rows = rows_of(table, dims)
    known = {k: r[value] for k, r in rows.items() if not r["suppressed"]}
    recovered: dict[tuple[Any, ...], float] = {}
    progress = True
    while progress:
        progress = False
        for margin, members in lines_of(table, dims):
            entries = [*members, margin]
            unknown = [k for k in entries if k not in known]
            if len(unknown) != 1:
                continue
            (target,) = unknown
            cells = sum(known[k] for k in members if k != target)
            known[target] = known[margin] - cells if target != margin else cells
            recovered[target] = known[target]
            progress = True
    return recovered


# --- a worked example -------------------------------------------------------------------------


def example() -> pa.Table:
    counts = {("F", "A"): 20, ("F", "B"): 3, ("F", "C"): 15, ("M", "A"): 12, ("M", "B"): 25, ("M", "C"): 30}
    rows = [{"sex": s, "level": lv, "score": float(i % 7)} for (s, lv), n in counts.items() for i in range(n)]
    return pa.Table.from_pylist(rows)


def test_worked_example() -> None:
    table, stats = aggregate(scan_of(example(), 17), ["sex", "level"], ["score"], threshold=10)
    assert table.column_names == ["sex", "level", "count", "score_sum", "score_mean", "suppressed"]
    hidden = {(r["sex"], r["level"]) for r in table.to_pylist() if r["suppressed"]}
    # (F,B)=3 is primary; its row line then needs (F,C)=15, its column line (M,B)=25, and the
    # column C line, left with one hidden entry, (M,C)=30.
    assert hidden == {("F", "B"), ("F", "C"), ("M", "B"), ("M", "C")}
    assert stats == {
        "dimensions": ["sex", "level"], "measures": ["score"], "threshold": 10,
        "records_in": 105, "cells": 12, "primary_suppressed": 1, "secondary_suppressed": 3, "zero_cells": "absent",
    }
    json.dumps(stats)
    rows = rows_of(table, ["sex", "level"])
    assert rows[(TOTAL, TOTAL)]["count"] == 105
    assert rows[("F", TOTAL)]["count"] == 38 and rows[(TOTAL, "B")]["count"] == 28
    assert rows[("F", "B")]["count"] is None and rows[("F", "B")]["score_sum"] is None
    assert rows[("F", "B")]["score_mean"] is None
    assert subtraction_attack(table, ["sex", "level"]) == {}
    assert subtraction_attack(table, ["sex", "level"], "score_sum") == {}
    # Row order: values, then totals last.
    assert [k for k in rows][:4] == [("F", "A"), ("F", "B"), ("F", "C"), ("F", TOTAL)]


def test_the_attack_recovers_a_lone_hidden_cell() -> None:
    """The attack is not toothless: with primary suppression alone it finds the hidden 3."""
    table, _ = aggregate(scan_of(example()), ["sex", "level"], [], threshold=1)
    rows = table.to_pylist()
    for r in rows:
        if (r["sex"], r["level"]) == ("F", "B"):
            r["count"], r["suppressed"] = None, True
    assert subtraction_attack(pa.Table.from_pylist(rows), ["sex", "level"]) == {("F", "B"): 3}


def test_zero_cells_are_absent_and_dimensions_are_strings() -> None:
    data = pa.table({"year": pa.array([2010] * 12 + [2011] * 12, pa.int64()),
                     "flag": pa.array([True] * 12 + [False] * 12),
                     "v": pa.array(range(24), pa.int64())})
    table, stats = aggregate(scan_of(data, 5), ["year", "flag"], ["v"], threshold=10)
    keys = set(rows_of(table, ["year", "flag"]))
    assert ("2010", "false") not in keys and ("2011", "true") not in keys
    assert keys == {("2010", "true"), ("2010", TOTAL), ("2011", "false"), ("2011", TOTAL),
                    (TOTAL, "true"), (TOTAL, "false"), (TOTAL, TOTAL)}
    assert table.schema.field("year").type == pa.string()
    assert table.schema.field("v_sum").type == pa.int64()
    assert stats["primary_suppressed"] == 0 and not any(table.column("suppressed").to_pylist())


def test_measures_mean_over_non_null_values_and_few_values_are_hidden() -> None:
    values = [1.0, 2.0, None, 3.0] * 5 + [None] * 17 + [4.0, 5.0, 6.0]  # group b: 3 values over 20 rows
    data = pa.table({"g": ["a"] * 20 + ["b"] * 20, "x": pa.array(values, pa.float64())})
    table, stats = aggregate(scan_of(data, 7), ["g"], ["x"], threshold=10)
    rows = rows_of(table, ["g"])
    # b has 20 records but only 3 values: its sum and mean would describe 3 people, so it goes,
    # and a too, or the total would give b away.
    assert rows[("b",)]["suppressed"] and rows[("a",)]["suppressed"]
    assert rows[(TOTAL,)]["count"] == 40 and rows[(TOTAL,)]["x_sum"] == 45.0
    assert rows[(TOTAL,)]["x_mean"] == pytest.approx(45.0 / 18)
    assert stats["primary_suppressed"] == 1 and stats["secondary_suppressed"] == 1
    table, _ = aggregate(scan_of(data, 7), ["g"], ["x"], threshold=3)
    rows = rows_of(table, ["g"])
    assert rows[("a",)]["count"] == 20 and rows[("a",)]["x_sum"] == 30.0 and rows[("a",)]["x_mean"] == 2.0
    assert rows[("b",)]["x_mean"] == 5.0


def test_nulls_are_a_category_and_single_cell_lines_hide_their_margin() -> None:
    data = pa.table({"a": pa.array(["x"] * 4 + [None] * 30, pa.string()), "b": ["u"] * 4 + ["v"] * 30})
    table, _ = aggregate(scan_of(data), ["a", "b"], [], threshold=5)
    rows = rows_of(table, ["a", "b"])
    assert set(rows) == {("x", "u"), ("x", TOTAL), (None, "v"), (None, TOTAL), (TOTAL, "u"), (TOTAL, "v"),
                         (TOTAL, TOTAL)}
    # ("x","u")=4 is alone on its lines, so its margins (4 as well) go with it; then 34 - 30 on the
    # bottom line would give it away, so the null category's 30 goes too, down to the grand total.
    assert [k for k, r in rows.items() if not r["suppressed"]] == [(TOTAL, TOTAL)]
    assert rows[(TOTAL, TOTAL)]["count"] == 34
    assert subtraction_attack(table, ["a", "b"]) == {}


def test_grand_total_alone_and_empty_source() -> None:
    data = pa.table({"x": pa.array([1, 2, None], pa.int64())})
    table, stats = aggregate(scan_of(data), [], ["x"], threshold=2)
    assert table.to_pylist() == [{"count": 3, "x_sum": 3, "x_mean": 1.5, "suppressed": False}]
    table, stats = aggregate(scan_of(data.slice(0, 0)), ["x"], [], threshold=2)
    assert table.num_rows == 0 and stats["cells"] == 0 and stats["records_in"] == 0


def test_refusals() -> None:
    data = pa.table({"a": ["x"], "b": ["y"], "c": ["z"], "d": ["w"], "s": ["text"], "t": [TOTAL], "count": [1]})
    with pytest.raises(ValueError, match=f"at most {MAX_DIMENSIONS} dimensions"):
        aggregate(scan_of(data), ["a", "b", "c", "d"], [])
    with pytest.raises(DataError, match="'Total'") as reserved:  # the data's doing, not the request's
        aggregate(scan_of(data), ["a", "t"], [])
    assert reserved.value.code == "reserved_value"
    with pytest.raises(ValueError, match="not a number"):
        aggregate(scan_of(data), ["a"], ["s"])
    with pytest.raises(ValueError, match="threshold"):
        aggregate(scan_of(data), ["a"], [], threshold=0)
    with pytest.raises(ValueError, match="'count'"):
        aggregate(scan_of(data), ["count"], [])
    with pytest.raises(ValueError, match="listed twice"):
        aggregate(scan_of(data), ["a", "a"], [])
    with pytest.raises(ValueError, match="did not return column 'zz'"):
        aggregate(scan_of(data), ["a"], ["zz"])


def test_pupils_by_school_level_and_sex() -> None:
    pupils = generate_pupils(20_000, seed=5, schools=load_schools(ANNUAIRE_CSV, ips_csvs=IPS_CSVS))
    dims = ["uai", "level", "sex"]
    table, stats = aggregate(scan_of(pupils, 4096), dims, ["grade_maths", "absences_half_days"], threshold=10)
    published = [c for c in table.column("count").to_pylist() if c is not None]
    assert min(published) >= 10
    assert stats["primary_suppressed"] > 0 and stats["secondary_suppressed"] > 0
    assert stats["cells"] == table.num_rows
    assert sum(table.column("suppressed").to_pylist()) == stats["primary_suppressed"] + stats["secondary_suppressed"]
    rows = rows_of(table, dims)
    for margin, members in lines_of(table, dims):
        assert sum(rows[k]["suppressed"] for k in [*members, margin]) != 1
    assert subtraction_attack(table, dims) == {}
    assert subtraction_attack(table, dims, "absences_half_days_sum") == {}
    assert rows[(TOTAL, TOTAL, TOTAL)]["count"] == 20_000


# --- properties -------------------------------------------------------------------------------

ALPHABETS = [["a", "b", "c", None], ["u", "v"], ["p", "q", "r"]]


@st.composite
def datasets(draw: st.DrawFn) -> tuple[list[str], list[dict[str, Any]]]:
    d = draw(st.integers(1, 3))
    dims = ["d0", "d1", "d2"][:d]
    weights = st.integers(0, 5)
    row = st.fixed_dictionaries(
        {name: st.sampled_from(ALPHABETS[i]) for i, name in enumerate(dims)}
        | {"m": st.one_of(st.none(), st.integers(-50, 50))}
    )
    rows = draw(st.lists(row, max_size=120))
    # Skew the data so that some cells are large and others small.
    heavy = draw(st.lists(row, max_size=3))
    rows += [r for r in heavy for _ in range(draw(weights) * 4)]
    return dims, rows


@settings(max_examples=150, deadline=None, database=None)
@given(data=datasets(), threshold=st.integers(1, 12),
       split_a=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       split_b=st.lists(st.integers(1, 40), min_size=1, max_size=4))
def test_property_protected_and_exact(
    data: tuple[list[str], list[dict[str, Any]]], threshold: int, split_a: list[int], split_b: list[int]
) -> None:
    dims, rows = data
    schema = pa.schema([*[(d, pa.string()) for d in dims], ("m", pa.int64())])
    source = pa.Table.from_pylist(rows, schema=schema)
    table, stats = aggregate(scan_of(source, split_a), dims, ["m"], threshold=threshold)
    again, stats_again = aggregate(scan_of(source, split_b), dims, ["m"], threshold=threshold)
    assert table.equals(again) and stats == stats_again, "the batching must not matter"

    # Direct counts, sums and non-null counts of every cell and margin.
    true_count: Counter[tuple[Any, ...]] = Counter()
    true_sum: Counter[tuple[Any, ...]] = Counter()
    true_n: Counter[tuple[Any, ...]] = Counter()
    base: Counter[tuple[Any, ...]] = Counter()
    for r in rows:
        key = tuple(r[d] for d in dims)
        base[key] += 1
        for mask in range(2 ** len(dims)):
            k = tuple(TOTAL if mask >> i & 1 else v for i, v in enumerate(key))
            true_count[k] += 1
            if r["m"] is not None:
                true_sum[k] += r["m"]
                true_n[k] += 1

    published = rows_of(table, dims)
    assert set(published) == set(true_count), "every occurring cell and margin, and nothing else"
    assert stats["cells"] == len(published)
    hidden = 0
    for key, r in published.items():
        if r["suppressed"]:
            hidden += 1
            assert r["count"] is None and r["m_sum"] is None and r["m_mean"] is None
            continue
        assert r["count"] == true_count[key] >= threshold
        assert r["m_sum"] == true_sum[key]
        assert not 0 < true_n[key] < threshold
        if true_n[key]:
            assert math.isclose(r["m_mean"], true_sum[key] / true_n[key])
        else:
            assert r["m_mean"] is None
        if TOTAL in key:  # a margin is the sum of the true cells below it
            below = sum(n for k, n in base.items()
                        if all(m == TOTAL or m == v for m, v in zip(key, k, strict=True)))
            assert r["count"] == below
        else:
            assert r["count"] == base[key]
    assert hidden == stats["primary_suppressed"] + stats["secondary_suppressed"]
    for margin, members in lines_of(table, dims):
        assert sum(published[k]["suppressed"] for k in [*members, margin]) != 1
    assert subtraction_attack(table, dims) == {}
    assert subtraction_attack(table, dims, "m_sum") == {}
