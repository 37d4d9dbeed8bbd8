"""Generalised mode: hints applied, identifiers dropped, k-anonymity held, two scans at most."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import scan_of
from connectors.base import DataError, Scan
from catalog.model import Column, SourceSpec
from catalog.synthetic import ANNUAIRE_CSV, IPS_CSVS, generate_pupils, load_schools
from connectors.generalise import generalise, generalised_schema

EXAMPLE = Path(__file__).resolve().parents[1] / "catalog" / "examples" / "eleves-synthetiques.yaml"




def run(scan: Scan, columns: list[Column], *, k: int, keep: list[str]) -> tuple[pa.Table, dict[str, Any]]:
    batches, stats = generalise(scan, columns, k=k, keep=keep)
    return pa.Table.from_batches(list(batches)), stats


def col(name: str, type_: str, role: str = "attribute", **hint: Any) -> Column:
    return Column.model_validate({"name": name, "type": type_, "role": role, **({"generalisation": hint} if hint else {})})


@pytest.fixture(scope="module")
def spec() -> SourceSpec:
    return SourceSpec.model_validate(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def pupils() -> pa.Table:
    return generate_pupils(20_000, seed=11, schools=load_schools(ANNUAIRE_CSV, ips_csvs=IPS_CSVS))


# --- hints ------------------------------------------------------------------------------------


def test_departement_codes() -> None:
    communes = ["35238", "2A004", "2b033", "97105", "98735", "01001", "1001", "", None, " 35238 "]
    table = pa.table({"commune": pa.array(communes, pa.string())})
    out, stats = run(scan_of(table), [col("commune", "string", to="departement")], k=1, keep=["commune"])
    assert out.column("commune").to_pylist() == ["35", "2A", "2B", "971", "987", "01", None, None, None, "35"]
    assert stats["columns"]["commune"] == {
        "role": "attribute", "applied": "departement", "type": "string", "unrecognised": 2
    }


def test_dates_to_year_and_month() -> None:
    dates = [dt.date(2012, 1, 31), dt.date(2012, 12, 1), None]
    table = pa.table({"a": pa.array(dates, pa.date32()), "b": pa.array(dates, pa.date32())})
    out, _ = run(scan_of(table), [col("a", "date", to="year"), col("b", "date", to="month")], k=1, keep=["a", "b"])
    assert out.schema == pa.schema([("a", pa.int32()), ("b", pa.string())])
    assert out.to_pydict() == {"a": [2012, 2012, None], "b": ["2012-01", "2012-12", None]}


def test_bands() -> None:
    table = pa.table({"n": pa.array([0, 4, 5, 14, -1, None], pa.int64()),
                      "x": pa.array([0.0, 4.99, 5.0, -0.5, float("nan"), None], pa.float64())})
    columns = [col("n", "int64", to="band", width=5), col("x", "float64", to="band", width=5)]
    out, stats = run(scan_of(table), columns, k=1, keep=["n", "x"])
    assert out.column("n").to_pylist() == ["0-4", "0-4", "5-9", "10-14", "-5--1", None]
    assert out.column("x").to_pylist() == ["[0,5)", "[0,5)", "[5,10)", "[-5,0)", None, None]
    assert stats["columns"]["n"]["applied"] == "band(5)"


def test_rare_categories_become_other_over_the_whole_source() -> None:
    # 'b' appears twice in each half: rare in every batch, frequent over the source.
    values = ["a"] * 6 + ["b", "b"] + ["c"] + [None] + ["b", "b"] + ["d"]
    table = pa.table({"cat": pa.array(values, pa.string())})
    out, stats = run(scan_of(table, 5), [col("cat", "string", to="rare_to_other", min_count=3)], k=1, keep=["cat"])
    assert out.column("cat").to_pylist() == ["a"] * 6 + ["b", "b", "other", None, "b", "b", "other"]
    assert stats["columns"]["cat"]["categories_merged"] == 2


def test_identifiers_never_output_and_only_keep(spec: SourceSpec, pupils: pa.Table) -> None:
    keep = ["ine", "birth_date", "sex", "commune", "grade_maths"]
    out, stats = run(scan_of(pupils, 4096), spec.schema_, k=5, keep=keep)
    assert out.column_names == ["birth_date", "sex", "commune", "grade_maths"]
    assert stats["dropped"] == ["ine"]
    assert out.schema == generalised_schema(spec.schema_, keep)
    assert out.schema.field("grade_maths").type == pa.float64()
    assert set(out.column("commune").to_pylist()) <= {"35", "22", "29", "56", "44", "53", "50"}


# --- k-anonymity ------------------------------------------------------------------------------


def test_k_anonymity_on_pupils(spec: SourceSpec, pupils: pa.Table) -> None:
    keep = ["birth_date", "sex", "uai", "commune", "absences_half_days", "disability_plan"]
    calls = 0
    inner = scan_of(pupils, [3000, 777, 5000])

    def counted() -> Iterator[pa.RecordBatch]:
        nonlocal calls
        calls += 1
        return inner()

    out, stats = run(counted, spec.schema_, k=5, keep=keep)
    assert calls == 2, "one counting pass and one output pass"
    qis = ["birth_date", "sex", "uai", "commune"]
    assert stats["quasi_identifiers"] == qis
    classes = Counter(zip(*(out.column(q).to_pylist() for q in qis), strict=True))
    assert min(classes.values()) >= 5
    assert stats["k_achieved"] == min(classes.values())
    assert stats["classes"] == len(classes)
    assert stats["records_in"] == pupils.num_rows
    assert stats["records_out"] == out.num_rows
    assert 0 < stats["suppressed_share"] < 1
    assert stats["suppressed_share"] == pytest.approx(1 - out.num_rows / pupils.num_rows)

    # Exactly the records of small classes went: recompute the classes on the whole source.
    years = [d.year for d in pupils.column("birth_date").to_pylist()]
    source = list(zip(years, pupils.column("sex").to_pylist(), pupils.column("uai").to_pylist(),
                      [c[:2] for c in pupils.column("commune").to_pylist()], strict=True))
    sizes = Counter(source)
    expected = [t for t in source if sizes[t] >= 5]
    assert list(zip(*(out.column(q).to_pylist() for q in qis), strict=True)) == expected


def test_nulls_form_a_class_and_k_one_keeps_everything() -> None:
    table = pa.table({"q": pa.array(["x", None, None, "x", "y"], pa.string())})
    columns = [col("q", "string", role="quasi_identifier")]
    out, stats = run(scan_of(table, 2), columns, k=2, keep=["q"])
    assert out.column("q").to_pylist() == ["x", None, None, "x"]
    assert stats["k_achieved"] == 2 and stats["classes"] == 2 and stats["classes_suppressed"] == 1
    out, stats = run(scan_of(table, 2), columns, k=1, keep=["q"])
    assert out.num_rows == 5 and stats["suppressed_share"] == 0.0


def test_everything_suppressed_still_yields_the_schema() -> None:
    table = pa.table({"q": pa.array(["x", "y"], pa.string()), "v": pa.array([1, 2], pa.int64())})
    columns = [col("q", "string", role="quasi_identifier"), col("v", "int64")]
    out, stats = run(scan_of(table), columns, k=3, keep=["q", "v"])
    assert out.num_rows == 0 and out.schema == pa.schema([("q", pa.string()), ("v", pa.int64())])
    assert stats["k_achieved"] is None and stats["records_out"] == 0 and stats["suppressed_share"] == 1.0
    # No quasi-identifier: the whole source is one class.
    out, stats = run(scan_of(table), columns, k=3, keep=["v"])
    assert out.num_rows == 0 and stats["classes"] == 0
    out, stats = run(scan_of(table), columns, k=2, keep=["v"])
    assert out.num_rows == 2 and stats["k_achieved"] == 2


def test_a_source_that_changes_between_passes_is_refused() -> None:
    tables = iter([pa.table({"q": ["x", "x", "y"]}), pa.table({"q": ["x", "y", "y"]})])

    def scan() -> Iterator[pa.RecordBatch]:
        return iter(next(tables).to_batches())

    batches, _ = generalise(scan, [col("q", "string", role="quasi_identifier")], k=2, keep=["q"])
    with pytest.raises(DataError, match="changed between the two passes") as changed:
        list(batches)
    assert changed.value.code == "source_changed"


def test_bad_arguments() -> None:
    columns = [col("q", "string", role="quasi_identifier"), col("id", "string", role="identifier")]
    scan = scan_of(pa.table({"q": ["x"], "id": ["1"]}))
    with pytest.raises(ValueError, match="k must be"):
        generalise(scan, columns, k=0, keep=["q"])
    with pytest.raises(ValueError, match="no declared column 'nope'"):
        generalise(scan, columns, k=1, keep=["q", "nope"])
    with pytest.raises(ValueError, match="nothing to output"):
        generalise(scan, columns, k=1, keep=["id"])
    with pytest.raises(ValueError, match="did not return column 'z'"):
        generalise(scan, [*columns, col("z", "int64")], k=1, keep=["q", "z"])


# --- properties -------------------------------------------------------------------------------

COLUMNS = [
    col("born", "date", role="quasi_identifier", to="year"),
    col("commune", "string", role="quasi_identifier", to="departement"),
    col("school", "string", role="quasi_identifier", to="rare_to_other", min_count=3),
    col("age", "int64", role="quasi_identifier", to="band", width=3),
    col("sex", "string", role="quasi_identifier"),
    col("ident", "string", role="identifier"),
    col("score", "float64"),
]
KEEP = ["ident", "born", "commune", "school", "age", "sex", "score"]


def _reference(rows: list[dict[str, Any]], k: int) -> list[tuple[Any, ...]]:
    """The generalised view computed row by row, the obvious way."""
    schools = Counter(r["school"] for r in rows if r["school"] is not None)

    def one(r: dict[str, Any]) -> tuple[Any, ...]:
        c = r["commune"]
        dep = None if c is None else (c[:3] if c[:2] in ("97", "98") else c[:2])
        s = r["school"]
        school = s if s is None or schools[s] >= 3 else "other"
        age = None if r["age"] is None else f"{r['age'] // 3 * 3}-{r['age'] // 3 * 3 + 2}"
        born = None if r["born"] is None else r["born"].year
        return (born, dep, school, age, r["sex"], r["score"])

    out = [one(r) for r in rows]
    sizes = Counter(t[:5] for t in out)
    return [t for t in out if sizes[t[:5]] >= k]


row = st.fixed_dictionaries({
    "born": st.one_of(st.none(), st.dates(dt.date(2008, 1, 1), dt.date(2011, 12, 31))),
    "commune": st.one_of(st.none(), st.sampled_from(["35238", "35001", "2A004", "97105", "97411"])),
    "school": st.one_of(st.none(), st.sampled_from(["s1", "s2", "s3", "s4"])),
    "age": st.one_of(st.none(), st.integers(0, 8)),
    "sex": st.sampled_from(["F", "M"]),
    "ident": st.text("0123456789", min_size=3, max_size=3),
    "score": st.one_of(st.none(), st.floats(0, 20, allow_nan=False)),
})
SCHEMA = pa.schema([("born", pa.date32()), ("commune", pa.string()), ("school", pa.string()), ("age", pa.int64()),
                    ("sex", pa.string()), ("ident", pa.string()), ("score", pa.float64())])


@settings(max_examples=100, deadline=None, database=None)
@given(rows=st.lists(row, max_size=60), k=st.integers(1, 4),
       split_a=st.lists(st.integers(1, 20), min_size=1, max_size=5),
       split_b=st.lists(st.integers(1, 20), min_size=1, max_size=5))
def test_property_matches_reference_whatever_the_batching(
    rows: list[dict[str, Any]], k: int, split_a: list[int], split_b: list[int]
) -> None:
    table = pa.Table.from_pylist(rows, schema=SCHEMA)
    out_a, stats_a = run(scan_of(table, split_a), COLUMNS, k=k, keep=KEEP)
    out_b, stats_b = run(scan_of(table, split_b), COLUMNS, k=k, keep=KEEP)
    assert out_a.equals(out_b) and stats_a == stats_b
    assert "ident" not in out_a.column_names
    got = list(zip(*(out_a.column(n).to_pylist() for n in out_a.column_names), strict=True))
    assert got == _reference(rows, k)
    sizes = Counter(t[:5] for t in got)
    assert all(size >= k for size in sizes.values())
    assert stats_a["k_achieved"] == (min(sizes.values()) if sizes else None)
    assert stats_a["records_out"] + stats_a["records_suppressed"] == len(rows)
