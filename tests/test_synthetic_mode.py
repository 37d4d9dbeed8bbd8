"""Synthetic mode: faithful marginals and dependencies, no real record or identifier reproduced."""

from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare, poisson

from conftest import scan_of
from connectors.base import Scan
from catalog.model import Column, SourceSpec
from catalog.synthetic import ANNUAIRE_CSV, IPS_CSVS, School, generate_pupils, load_schools
from connectors.synthetic import ID_PREFIX, OTHER, RARE, reservoir_sample, synthesise

EXAMPLE = Path(__file__).resolve().parents[1] / "catalog" / "examples" / "eleves-synthetiques.yaml"
N = 20_000
QIS = ["birth_date", "sex", "uai", "commune"]




def run(scan: Scan, columns: list[Column], **kwargs: Any) -> tuple[pa.Table, dict[str, Any]]:
    batches, stats = synthesise(scan, columns, **kwargs)
    return pa.Table.from_batches(list(batches)), stats


@pytest.fixture(scope="module")
def spec() -> SourceSpec:
    return SourceSpec.model_validate(yaml.safe_load(EXAMPLE.read_text(encoding="utf-8")))


@pytest.fixture(scope="module")
def schools() -> list[School]:
    return load_schools(ANNUAIRE_CSV, ips_csvs=IPS_CSVS)


@pytest.fixture(scope="module")
def source(schools: list[School]) -> pa.Table:
    return generate_pupils(N, seed=3, schools=schools)


@pytest.fixture(scope="module")
def fitted(spec: SourceSpec, source: pa.Table) -> tuple[pa.Table, dict[str, Any]]:
    return run(scan_of(source), spec.schema_, size=N, seed=1)


def frequencies(column: pa.ChunkedArray) -> dict[Any, float]:
    counts = pc.value_counts(column).to_pylist()
    total = len(column)
    return {c["values"]: c["counts"] / total for c in counts}


def test_schema_stats_and_determinism(spec: SourceSpec, source: pa.Table, fitted: tuple[pa.Table, dict[str, Any]]) -> None:
    synthetic, stats = fitted
    assert synthetic.num_rows == N
    assert [(f.name, f.type) for f in synthetic.schema] == [(f.name, f.type) for f in source.schema]
    assert stats["size"] == N and stats["seed"] == 1
    assert stats["fitted_on_rows"] == N and stats["records_in"] == N
    # 1 dimension per categorical column, 1 per numeric one, plus 1 for each with nulls (grades).
    assert stats["copula_dimension"] == 9 + 3 + 2
    assert stats["columns"]["ine"]["kind"] == "identifier"
    assert stats["columns"]["grade_maths"]["null_rate"] == pytest.approx(
        source.column("grade_maths").null_count / N
    )
    json.dumps(stats)
    again, stats_again = run(scan_of(source, [1000, 333, 7000]), spec.schema_, size=N, seed=1)
    assert again.equals(synthetic) and stats_again == stats
    other, _ = run(scan_of(source), spec.schema_, size=N, seed=2)
    assert not other.equals(synthetic)


def test_marginals_are_close(source: pa.Table, fitted: tuple[pa.Table, dict[str, Any]]) -> None:
    synthetic, _ = fitted
    for name in ["sex", "level", "social_category", "scholarship", "disability_plan", "school_year"]:
        real, fake = frequencies(source.column(name)), frequencies(synthetic.column(name))
        assert set(fake) <= set(real)
        for value, share in real.items():
            assert fake.get(value, 0.0) == pytest.approx(share, abs=0.015), (name, value)
    for name, tolerance in [("grade_maths", 0.5), ("grade_french", 0.5), ("absences_half_days", 1.0)]:
        real_values = source.column(name).drop_null().to_numpy()
        fake_values = synthetic.column(name).drop_null().to_numpy()
        probs = [0.1, 0.25, 0.5, 0.75, 0.9]
        assert np.quantile(fake_values, probs) == pytest.approx(np.quantile(real_values, probs), abs=tolerance)
        null_real = source.column(name).null_count / N
        assert synthetic.column(name).null_count / N == pytest.approx(null_real, abs=0.015)
    # Grades keep their half-point resolution, absences stay whole.
    assert set((synthetic.column("grade_maths").drop_null().to_numpy() * 2) % 1) == {0.0}
    assert synthetic.schema.field("absences_half_days").type == pa.int64()
    years = Counter(d.year for d in source.column("birth_date").to_pylist())
    fake_years = Counter(d.year for d in synthetic.column("birth_date").to_pylist())
    for year, count in years.items():
        assert fake_years[year] / N == pytest.approx(count / N, abs=0.02), year


def _grades_correlation(table: pa.Table) -> float:
    both = table.filter(pc.and_(pc.is_valid(table["grade_maths"]), pc.is_valid(table["grade_french"])))
    return float(np.corrcoef(both["grade_maths"].to_numpy(), both["grade_french"].to_numpy())[0, 1])


def _mean_maths(table: pa.Table, category: str) -> float:
    return float(pc.mean(table.filter(pc.equal(table["social_category"], category))["grade_maths"]).as_py())


def test_dependencies_are_kept(source: pa.Table, fitted: tuple[pa.Table, dict[str, Any]]) -> None:
    synthetic, _ = fitted
    real, fake = _grades_correlation(source), _grades_correlation(synthetic)
    assert real > 0.5
    assert fake == pytest.approx(real, abs=0.1)
    # The social gradient of grades survives (categories are ordered by the data, not by name).
    gap_real = _mean_maths(source, "tres_favorisee") - _mean_maths(source, "defavorisee")
    gap_fake = _mean_maths(synthetic, "tres_favorisee") - _mean_maths(synthetic, "defavorisee")
    assert gap_real > 2 and gap_fake > 0.7 * gap_real
    # Older pupils sit in higher levels.
    for table in (source, synthetic):
        sixth = table.filter(pc.equal(table["level"], "6e"))["birth_date"]
        cp = table.filter(pc.equal(table["level"], "CP"))["birth_date"]
        assert np.median(sixth.cast(pa.int32()).to_numpy()) < np.median(cp.cast(pa.int32()).to_numpy()) - 3 * 300


def _matches(rows: pa.Table, reference: pa.Table) -> int:
    """Rows of `rows` equal to some row of `reference` on every quasi-identifier."""
    known = set(zip(*(reference.column(c).to_pylist() for c in QIS), strict=True))
    return sum(t in known for t in zip(*(rows.column(c).to_pylist() for c in QIS), strict=True))


def test_no_real_record_copied(
    source: pa.Table, schools: list[School], fitted: tuple[pa.Table, dict[str, Any]]
) -> None:
    synthetic, _ = fitted
    observed = _matches(synthetic, source)
    # What chance explains: how often the same synthetic rows hit real records the model never
    # saw (fresh pupils from the same population), and how often rows whose quasi-identifiers were
    # drawn independently of each other (shuffled columns) hit the training records.
    holdouts = [generate_pupils(N, seed=100 + i, schools=schools) for i in range(3)]
    unseen = float(np.mean([_matches(synthetic, h) for h in holdouts]))
    rng = np.random.default_rng(0)
    shuffled = [
        pa.table({c: synthetic.column(c).take(pa.array(rng.permutation(N))) for c in QIS}) for _ in range(3)
    ]
    independent = float(np.mean([_matches(s, source) for s in shuffled]))
    expected = max(unseen, independent, 1.0)
    limit = poisson.ppf(0.999, expected)
    assert observed <= limit, (observed, unseen, independent)
    # The test has teeth: copying 2 % of the real records would be caught.
    copied = pa.concat_tables([synthetic.slice(0, N - N // 50).select(QIS), source.slice(0, N // 50).select(QIS)],
                              promote_options="permissive")
    assert _matches(copied, source) > limit


def test_identifiers_rare_values_and_extremes_not_reproduced(
    source: pa.Table, fitted: tuple[pa.Table, dict[str, Any]]
) -> None:
    synthetic, stats = fitted
    ids = synthetic.column("ine").to_pylist()
    assert len(set(ids)) == N
    assert all(i.startswith(ID_PREFIX) and len(i) == len(ID_PREFIX) + 16 for i in ids)
    assert not set(ids) & set(source.column("ine").to_pylist())
    for name in ["uai", "commune"]:
        real = Counter(source.column(name).to_pylist())
        fake = set(synthetic.column(name).to_pylist())
        assert all(v == OTHER or real[v] >= RARE for v in fake), name
        assert OTHER in fake and stats["columns"][name]["merged_to_other"] > 0
    absences = np.sort(source.column("absences_half_days").to_numpy())
    assert synthetic.column("absences_half_days").to_numpy().max() <= absences[-RARE]
    assert synthetic.column("absences_half_days").to_numpy().min() >= absences[RARE - 1]


def test_sample_size_bound_on_a_large_source(schools: list[School]) -> None:
    """200,000 rows streamed, 10,000 kept: memory follows the reservoir, not the source."""
    parts, rows = 20, 10_000
    part_bytes = generate_pupils(rows, seed=0, schools=schools).nbytes
    peak = [0]
    base = pa.total_allocated_bytes()

    def scan() -> Iterator[pa.RecordBatch]:
        for i in range(parts):
            table = generate_pupils(rows, seed=i, schools=schools)
            table = table.append_column("part", pa.array(np.full(rows, i, dtype=np.int64)))
            for batch in table.to_batches(max_chunksize=2500):
                yield batch
                peak[0] = max(peak[0], pa.total_allocated_bytes() - base)
            del table

    columns = [Column(name="part", type="int64"), Column(name="grade_maths", type="float64"),
               Column(name="level", type="string"), Column(name="uai", type="string")]
    sample, seen = reservoir_sample(scan, columns, 10_000, np.random.default_rng(5))
    assert seen == parts * rows and sample.num_rows == 10_000
    assert peak[0] < 4 * part_bytes < parts * part_bytes / 3, (peak[0], part_bytes)
    # Uniform: each part contributes about a twentieth of the sample.
    per_part = np.bincount(sample.column("part").to_numpy(), minlength=parts)
    assert chisquare(per_part).pvalue > 1e-4
    _, stats = synthesise(scan, columns, size=10, seed=0, sample_rows=10_000)
    assert stats["fitted_on_rows"] == 10_000 and stats["records_in"] == 200_000


def test_small_and_degenerate_sources() -> None:
    columns = [Column(name="id", type="int64", role="identifier"), Column(name="x", type="float64"),
               Column(name="c", type="string"), Column(name="d", type="date"), Column(name="b", type="boolean")]
    table = pa.table({"id": pa.array([1, 2, 3], pa.int64()), "x": [1.0, 2.0, 3.0], "c": ["a", "a", "b"],
                      "d": pa.array([dt.date(2010, 1, 1)] * 3, pa.date32()), "b": [True, False, None]})
    out, stats = run(scan_of(table), columns, size=50, seed=0)
    assert out.schema == pa.schema([("id", pa.string()), ("x", pa.float64()), ("c", pa.string()),
                                    ("d", pa.date32()), ("b", pa.bool_())])
    # Three values are too few to draw numbers from without echoing them; two categories seen
    # under five times become 'other'; booleans keep their values, null included.
    assert out.column("x").null_count == 50 and out.column("d").null_count == 50
    assert set(out.column("c").to_pylist()) == {OTHER}
    assert set(out.column("b").to_pylist()) <= {True, False, None}
    assert stats["columns"]["x"]["not_modelled"]
    empty, stats = run(scan_of(table.slice(0, 0)), columns, size=3, seed=0)
    assert empty.num_rows == 3 and stats["fitted_on_rows"] == 0
    none, _ = run(scan_of(table), columns, size=0, seed=0)
    assert none.num_rows == 0 and none.schema == out.schema


def test_bad_arguments() -> None:
    columns = [Column(name="x", type="float64")]
    scan = scan_of(pa.table({"x": [1.0]}))
    for kwargs, message in [({"size": -1, "seed": 0}, "size"), ({"size": 1, "seed": -1}, "seed"),
                            ({"size": 1, "seed": 0, "sample_rows": 0}, "sample_rows")]:
        with pytest.raises(ValueError, match=message):
            synthesise(scan, columns, **kwargs)
    with pytest.raises(ValueError, match="did not return column 'y'"):
        synthesise(scan, [*columns, Column(name="y", type="string")], size=1, seed=0)


# --- properties -------------------------------------------------------------------------------

COLUMNS = [Column(name="ident", type="string", role="identifier"), Column(name="cat", type="string"),
           Column(name="n", type="int64"), Column(name="x", type="float64"), Column(name="flag", type="boolean")]
SCHEMA = pa.schema([("ident", pa.string()), ("cat", pa.string()), ("n", pa.int64()), ("x", pa.float64()),
                    ("flag", pa.bool_())])
row = st.fixed_dictionaries({
    "ident": st.text("abcdef0123456789", min_size=6, max_size=6),
    "cat": st.one_of(st.none(), st.sampled_from(["p", "q", "r", "s", "t"])),
    "n": st.one_of(st.none(), st.integers(-100, 100)),
    "x": st.one_of(st.none(), st.floats(-1e3, 1e3, allow_nan=False)),
    "flag": st.one_of(st.none(), st.booleans()),
})


@settings(max_examples=60, deadline=None, database=None)
@given(rows=st.lists(row, max_size=80), sample_rows=st.integers(1, 100), seed=st.integers(0, 2**32),
       split_a=st.lists(st.integers(1, 30), min_size=1, max_size=4),
       split_b=st.lists(st.integers(1, 30), min_size=1, max_size=4))
def test_property_batching_does_not_matter(
    rows: list[dict[str, Any]], sample_rows: int, seed: int, split_a: list[int], split_b: list[int]
) -> None:
    source = pa.Table.from_pylist(rows, schema=SCHEMA)
    out_a, stats_a = run(scan_of(source, split_a), COLUMNS, size=60, seed=seed, sample_rows=sample_rows)
    out_b, stats_b = run(scan_of(source, split_b), COLUMNS, size=60, seed=seed, sample_rows=sample_rows)
    assert out_a.equals(out_b) and stats_a == stats_b
    assert out_a.schema == SCHEMA and out_a.num_rows == 60
    assert stats_a["fitted_on_rows"] == min(sample_rows, len(rows))
    assert not set(out_a.column("ident").to_pylist()) & {r["ident"] for r in rows}
    seen = Counter(r["cat"] for r in rows)
    assert all(v is None or v == OTHER or seen[v] >= RARE for v in out_a.column("cat").to_pylist())
    for name in ("n", "x"):
        values = sorted(r[name] for r in rows if r[name] is not None)
        drawn = out_a.column(name).drop_null().to_pylist()
        if drawn:
            assert values[RARE - 1] <= min(drawn) and max(drawn) <= values[-RARE]
