"""The synthetic pupils generator keeps the promises the demo and the catalog entry make."""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from catalog.synthetic import (
    ANNUAIRE_CSV,
    COLLEGE_LEVELS,
    INE_MARKER,
    IPS_CSVS,
    LEVEL_AGE,
    LEVELS,
    MATERNELLE_LEVELS,
    PUPIL_SCHEMA,
    SOCIAL_CATEGORIES,
    School,
    build_demo_pupils,
    generate_pupils,
    ine_check_letter,
    load_schools,
    write_pupils_parquet,
)

N = 20_000


@pytest.fixture(scope="module")
def schools() -> list[School]:
    return load_schools(ANNUAIRE_CSV, ips_csvs=IPS_CSVS)


@pytest.fixture(scope="module")
def pupils(schools: list[School]) -> pa.Table:
    return generate_pupils(N, seed=7, schools=schools)


@pytest.fixture(scope="module")
def annuaire_rows() -> list[dict[str, str]]:
    with open(ANNUAIRE_CSV, encoding="utf-8-sig", newline="") as handle:
        return list(csv.DictReader(handle, delimiter=";"))


def test_row_count_and_schema(pupils: pa.Table, schools: list[School]) -> None:
    assert pupils.num_rows == N
    assert pupils.schema.equals(PUPIL_SCHEMA)
    assert generate_pupils(0, schools=schools).num_rows == 0
    assert generate_pupils(1, schools=schools).num_rows == 1


def test_same_seed_same_table_and_bytes(schools: list[School], tmp_path: Path) -> None:
    first = generate_pupils(3000, seed=11, schools=schools)
    second = generate_pupils(3000, seed=11, schools=list(reversed(schools)))
    assert first.equals(second, check_metadata=True)
    write_pupils_parquet(first, tmp_path / "a.parquet")
    write_pupils_parquet(second, tmp_path / "b.parquet")
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()


def test_other_seed_other_data(schools: list[School]) -> None:
    first = generate_pupils(3000, seed=11, schools=schools)
    other = generate_pupils(3000, seed=12, schools=schools)
    for name in ("ine", "birth_date", "uai", "grade_maths", "absences_half_days"):
        assert not first[name].equals(other[name]), name


def test_ine_format_unique_and_marked(pupils: pa.Table) -> None:
    ines = pupils["ine"].to_pylist()
    assert len(set(ines)) == len(ines)
    for ine in ines:
        assert re.fullmatch(r"\d{10}[A-Z]", ine), ine
        assert ine.startswith(INE_MARKER)
        assert ine[10] == ine_check_letter(ine[:10])
    assert pupils.schema.metadata[b"bulles.synthetic"] == b"true"


def test_schools_are_real_and_communes_match(
    pupils: pa.Table, schools: list[School], annuaire_rows: list[dict[str, str]]
) -> None:
    published = {(r["Identifiant_de_l_etablissement"], r["Code_commune"]) for r in annuaire_rows}
    kinds = {r["Identifiant_de_l_etablissement"]: r["Type_etablissement"] for r in annuaire_rows}
    pairs = set(zip(pupils["uai"].to_pylist(), pupils["commune"].to_pylist(), strict=True))
    assert pairs <= published
    assert len({uai for uai, _ in pairs}) > len(schools) // 2  # pupils spread over most schools
    assert all(kinds[uai] in ("Ecole", "Collège") for uai, _ in pairs)
    assert all(re.fullmatch(r"\d{5}|2[AB]\d{3}", commune) for _, commune in pairs)


def test_loaded_schools_are_open_ecoles_and_colleges(
    schools: list[School], annuaire_rows: list[dict[str, str]]
) -> None:
    closed = {r["Identifiant_de_l_etablissement"] for r in annuaire_rows if r["etat"] != "OUVERT"}
    uais = [s.uai for s in schools]
    assert len(uais) == len(set(uais))
    assert not closed & set(uais)
    assert {s.kind for s in schools} == {"ecole", "college"}
    assert any(s.ips is not None for s in schools)
    assert all(s.departement == "035" for s in schools)  # leading zero kept


def test_levels_fit_schools_and_ages_fit_levels(pupils: pa.Table, schools: list[School]) -> None:
    by_uai = {s.uai: s for s in schools}
    rows = pupils.select(["uai", "level", "birth_date", "school_year"]).to_pylist()
    ages: dict[str, set[int]] = {}
    for row in rows:
        school = by_uai[row["uai"]]
        assert (row["level"] in COLLEGE_LEVELS) == (school.kind == "college")
        lo, hi = school.level_range()
        assert row["level"] in LEVELS[lo:hi]
        start_year = int(row["school_year"][:4])
        age = start_year - row["birth_date"].year  # age reached in the calendar year of the rentrée
        assert age - LEVEL_AGE[row["level"]] in (0, 1)
        if row["level"] in MATERNELLE_LEVELS:
            assert age == LEVEL_AGE[row["level"]]
        ages.setdefault("college" if school.kind == "college" else "ecole", set()).add(age)
    assert min(ages["ecole"]) >= 3 and max(ages["ecole"]) <= 11
    assert min(ages["college"]) >= 11 and max(ages["college"]) <= 15
    assert set(pupils["school_year"].to_pylist()) == {"2022-2023"}
    assert set(pupils["level"].to_pylist()) == set(LEVELS)


def test_grades_on_half_point_scale_and_null_in_maternelle(pupils: pa.Table) -> None:
    maternelle = pc.is_in(pupils["level"], value_set=pa.array(sorted(MATERNELLE_LEVELS))).to_numpy(
        zero_copy_only=False
    )
    for name in ("grade_french", "grade_maths"):
        column = pupils[name]
        valid = pc.is_valid(column).to_numpy(zero_copy_only=False)
        assert (valid == ~maternelle).all(), name
        grades = column.drop_null().to_numpy()
        assert not np.isnan(grades).any()
        assert grades.min() >= 0.0 and grades.max() <= 20.0
        assert (grades * 2 == np.round(grades * 2)).all()
    both = pupils.filter(pc.is_valid(pupils["grade_maths"]))
    correlation = np.corrcoef(both["grade_maths"].to_numpy(), both["grade_french"].to_numpy())[0, 1]
    assert correlation > 0.3


def test_social_gradient(pupils: pa.Table) -> None:
    means = {
        row["social_category"]: row
        for row in pupils.group_by("social_category")
        .aggregate([("grade_maths", "mean"), ("grade_french", "mean"), ("absences_half_days", "mean")])
        .to_pylist()
    }
    assert set(means) == set(SOCIAL_CATEGORIES)
    top, bottom = means["tres_favorisee"], means["defavorisee"]
    assert top["grade_maths_mean"] > bottom["grade_maths_mean"]
    assert top["grade_french_mean"] > bottom["grade_french_mean"]
    assert top["absences_half_days_mean"] < bottom["absences_half_days_mean"]


def test_social_mix_follows_published_ips(pupils: pa.Table, schools: list[School]) -> None:
    ips = {s.uai: s.ips for s in schools if s.ips is not None}
    median = float(np.median(list(ips.values())))
    favoured = {"high": [0, 0], "low": [0, 0]}
    for uai, category in zip(pupils["uai"].to_pylist(), pupils["social_category"].to_pylist(), strict=True):
        if uai in ips:
            bucket = favoured["high" if ips[uai] > median else "low"]
            bucket[0] += category == "tres_favorisee"
            bucket[1] += 1
    assert favoured["high"][0] / favoured["high"][1] > favoured["low"][0] / favoured["low"][1]


def test_absences_overdispersed_and_non_negative(pupils: pa.Table) -> None:
    absences = pupils["absences_half_days"].to_numpy()
    assert absences.min() >= 0
    assert absences.var() > 2 * absences.mean()  # a Poisson count would have var == mean


def test_scholarship_collège_only_and_disability_rare(pupils: pa.Table) -> None:
    college = pc.is_in(pupils["level"], value_set=pa.array(sorted(COLLEGE_LEVELS))).to_numpy(zero_copy_only=False)
    scholarship = pupils["scholarship"].to_numpy(zero_copy_only=False)
    assert not scholarship[~college].any()
    assert scholarship[college].any()
    categories = np.array(pupils["social_category"].to_pylist())
    rate = {c: scholarship[college & (categories == c)].mean() for c in SOCIAL_CATEGORIES}
    assert rate["defavorisee"] > rate["moyenne"] > rate["tres_favorisee"]
    disability = pupils["disability_plan"].to_numpy(zero_copy_only=False).mean()
    assert 0.015 < disability < 0.05
    assert set(pupils["sex"].to_pylist()) == {"F", "M"}


def test_no_names_or_free_text(pupils: pa.Table) -> None:
    forbidden = re.compile(r"name|nom|prenom|address|adresse|comment|text|email|mail|phone|telephone")
    assert not [c for c in pupils.column_names if forbidden.search(c)]
    vocabularies = {
        "sex": {"F", "M"},
        "level": set(LEVELS),
        "social_category": set(SOCIAL_CATEGORIES),
    }
    patterns = {
        "ine": r"99\d{8}[A-Z]",
        "uai": r"\d{7}[A-Z]",
        "commune": r"\d{5}|2[AB]\d{3}",
        "school_year": r"\d{4}-\d{4}",
    }
    string_columns = [f.name for f in pupils.schema if pa.types.is_string(f.type)]
    assert set(string_columns) == set(vocabularies) | set(patterns)
    for name in string_columns:
        values = set(pupils[name].to_pylist())
        if name in vocabularies:
            assert values <= vocabularies[name], name
        else:
            assert all(re.fullmatch(patterns[name], v) for v in values), name


def test_bad_arguments_are_refused(schools: list[School]) -> None:
    with pytest.raises(ValueError, match="n must be"):
        generate_pupils(-1, schools=schools)
    with pytest.raises(ValueError, match="at least one school"):
        generate_pupils(10, schools=[])
    with pytest.raises(ValueError, match="listed twice"):
        generate_pupils(10, schools=[schools[0], schools[0]])
    with pytest.raises(ValueError, match="school_year"):
        generate_pupils(10, schools=schools, school_year="2022-2024")


def test_atomic_write_leaves_only_the_parquet(pupils: pa.Table, tmp_path: Path) -> None:
    target = tmp_path / "pupils.parquet"
    target.write_bytes(b"previous content")
    assert write_pupils_parquet(pupils, target) == target
    assert [p.name for p in tmp_path.iterdir()] == ["pupils.parquet"]
    assert pq.read_table(target).equals(pupils)


def test_failed_write_keeps_previous_file(tmp_path: Path) -> None:
    target = tmp_path / "pupils.parquet"
    target.write_bytes(b"previous content")
    with pytest.raises(Exception):
        write_pupils_parquet("not a table", target)  # type: ignore[arg-type]
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["pupils.parquet"]


def test_build_demo_pupils(tmp_path: Path) -> None:
    path = build_demo_pupils(tmp_path / "warehouse", n=500)
    assert path == tmp_path / "warehouse" / "pupils.parquet"
    table = pq.read_table(path)
    assert table.num_rows == 500
    assert table.schema.metadata[b"bulles.seed"] == b"2022"
    again = build_demo_pupils(tmp_path / "again", n=500)
    assert again.read_bytes() == path.read_bytes()
    assert max(table["birth_date"].to_pylist()) < dt.date(2020, 1, 1)  # PS pupils of 2022 are born in 2019
