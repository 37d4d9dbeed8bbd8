"""Synthetic personal pupil data for the demo site.

The demo needs a personal source to exercise the continuum (pseudonymised, generalised,
aggregated, synthetic views), the policies and the export checks, yet nothing shipped or
generated may describe a real pupil. So every pupil here is drawn from a seeded random
generator; only the *schools* are real, taken from the published annuaire, so that joins with
the open datasets (IPS, effectifs, annuaire) work in a bubble exactly as they would on real data.

Guarantees that callers and tests rely on:

* pure and deterministic: the same ``(n, seed, schools, school_year)`` gives an identical
  table (and, written with :func:`write_pupils_parquet`, identical Parquet bytes with the same
  pyarrow); the order in which schools are given does not matter;
* no names, addresses or free text about persons: every string column is either a code taken
  from the annuaire or a value of a small closed vocabulary;
* identifiers (``ine``) have the INE shape — 10 digits then a letter — and are synthetic by
  construction: they all start with :data:`INE_MARKER` ("99"), and the letter is a mod-23 check
  letter of this module's own making (:func:`ine_check_letter`), not the official key, so a
  generated INE is recognisable and checkable without ever being a real pupil's;
* ages agree with levels (see :data:`LEVEL_AGE`), grades are null in maternelle, and pupils
  from more favoured social categories get better grades on average (the social gradient every
  real DEPP series shows, which demo analyses are expected to find again).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

OPENDATA_DIR = Path(__file__).parent / "demo" / "opendata"
ANNUAIRE_CSV = OPENDATA_DIR / "fr-en-annuaire-education.csv"
IPS_CSVS = (OPENDATA_DIR / "fr-en-ips-colleges-ap2022.csv", OPENDATA_DIR / "fr-en-ips_ecoles.csv")
PUPILS_FILE = "pupils.parquet"

INE_MARKER = "99"
"""Every generated INE starts with these digits, so a synthetic pupil is recognisable on sight."""
_INE_LETTERS = "ABCDEFGHJKLMNPRSTUVWXYZ"  # 23 letters: no I, O or Q, easily misread as digits
_INE_BODY_DIGITS = 10 - len(INE_MARKER)

LEVELS: tuple[str, ...] = ("PS", "MS", "GS", "CP", "CE1", "CE2", "CM1", "CM2", "6e", "5e", "4e", "3e")
MATERNELLE_LEVELS = frozenset(LEVELS[:3])
COLLEGE_LEVELS = frozenset(LEVELS[8:])
LEVEL_AGE: Mapping[str, int] = {level: 3 + index for index, level in enumerate(LEVELS)}
"""Age reached during the calendar year of the rentrée by a pupil who is neither ahead nor behind.

A pupil one year behind ("en retard") is one year older; maternelle pupils are never behind, so
ages stay within 3–11 in école and 11–15 in collège.
"""

SOCIAL_CATEGORIES: tuple[str, ...] = ("defavorisee", "moyenne", "favorisee", "tres_favorisee")
"""DEPP's grouping of the PCS of the pupil's reference parent, from least to most favoured."""
SEXES: tuple[str, ...] = ("F", "M")

PUPIL_SCHEMA = pa.schema(
    [
        pa.field("ine", pa.string(), nullable=False),
        pa.field("birth_date", pa.date32(), nullable=False),
        pa.field("sex", pa.string(), nullable=False),
        pa.field("uai", pa.string(), nullable=False),
        pa.field("commune", pa.string(), nullable=False),
        pa.field("level", pa.string(), nullable=False),
        pa.field("school_year", pa.string(), nullable=False),
        pa.field("social_category", pa.string(), nullable=False),
        pa.field("scholarship", pa.bool_(), nullable=False),
        pa.field("disability_plan", pa.bool_(), nullable=False),
        pa.field("absences_half_days", pa.int64(), nullable=False),
        pa.field("grade_french", pa.float64()),
        pa.field("grade_maths", pa.float64()),
    ]
)

# --- Model parameters. Orders of magnitude follow published DEPP figures; they are not fitted
# to any individual data, and only the direction of each effect is promised to tests.

# Ordered-logit thresholds on the pupil's latent social position: with a school effect of 0
# they give 36 % défavorisée, 28 % moyenne, 13 % favorisée, 23 % très favorisée.
_SOCIAL_THRESHOLDS = np.log(np.array([0.36, 0.64, 0.77]) / (1 - np.array([0.36, 0.64, 0.77])))
_IPS_CENTRE, _IPS_SCALE = 103.0, 14.0  # national mean IPS of schools, and how steeply it moves the mix
_SCHOOL_SHIFT_EP = {"REP+": -1.5, "REP": -0.9}
_SCHOOL_SHIFT_PRIVATE = 0.7
_BEHIND = np.array([0.12, 0.07, 0.04, 0.025])  # one year behind, by social category
_SCHOLARSHIP = np.array([0.50, 0.20, 0.06, 0.02])  # collège only
_DISABILITY_SEX = np.array([0.021, 0.038])  # F, M: plans are more frequent among boys
_DISABILITY_SOCIAL = np.array([1.2, 1.0, 0.85, 0.8])
_ABSENCE_MEAN = np.array([11.0, 7.5, 6.0, 5.0])  # half-days a year
_ABSENCE_COLLEGE, _ABSENCE_DISABILITY = 1.3, 1.3
_ABSENCE_SHAPE = 1.2  # negative binomial shape: variance = mu + mu^2 / shape
_GRADE_MEAN_MATHS = np.array([9.6, 11.0, 12.0, 13.2])
_GRADE_MEAN_FRENCH = np.array([9.9, 11.2, 12.2, 13.4])
_GRADE_SD, _GRADE_RHO, _SCHOOL_GRADE_SD = 3.0, 0.6, 0.7
_GRADE_BEHIND, _GRADE_DISABILITY, _GRADE_FRENCH_GIRLS = -1.2, -1.5, 0.6


@dataclass(frozen=True, slots=True)
class School:
    """What the generator needs to know about a real école or collège (all of it public)."""

    uai: str
    kind: str  # "ecole" or "college"
    commune: str  # INSEE code
    departement: str
    statut: str | None = None  # "public" or "prive"
    education_prioritaire: str | None = None  # "REP", "REP+" or None
    maternelle: bool = False
    elementaire: bool = False
    pupils: int | None = None  # Nombre_d_eleves, the weight of the school in the draw
    ips: float | None = None  # published indice de position sociale, when known

    def level_range(self) -> tuple[int, int]:
        """Half-open range of indices into LEVELS that the school teaches."""
        if self.kind == "college":
            return 8, 12
        if self.maternelle and not self.elementaire:
            return 0, 3
        if self.elementaire and not self.maternelle:
            return 3, 8
        return 0, 8  # primaire, or flags missing: assume every primary level


def load_schools(annuaire_csv: Path, *, ips_csvs: Sequence[Path] = ()) -> list[School]:
    """Open écoles and collèges of the annuaire, optionally with their published IPS.

    Multi-line establishments (same UAI on several rows) keep their first row, so each UAI maps
    to exactly one commune. Every code is read as a string: UAI, commune and département codes
    carry leading zeros (and Corsican communes letters).
    """
    wanted = [
        "Identifiant_de_l_etablissement",
        "Type_etablissement",
        "Statut_public_prive",
        "Code_commune",
        "Code_departement",
        "Ecole_maternelle",
        "Ecole_elementaire",
        "Appartenance_Education_Prioritaire",
        "Nombre_d_eleves",
        "etat",
    ]
    table = _read_csv(annuaire_csv, wanted, {"Nombre_d_eleves": pa.int64()})
    ips = _load_ips(ips_csvs)
    kinds = {"Ecole": "ecole", "Collège": "college"}
    statuts = {"Public": "public", "Privé": "prive"}
    schools: list[School] = []
    seen: set[str] = set()
    for row in table.to_pylist():
        uai = row["Identifiant_de_l_etablissement"]
        kind = kinds.get(row["Type_etablissement"] or "")
        if kind is None or row["etat"] != "OUVERT" or not uai or uai in seen:
            continue
        seen.add(uai)
        schools.append(
            School(
                uai=uai,
                kind=kind,
                commune=row["Code_commune"],
                departement=row["Code_departement"],
                statut=statuts.get(row["Statut_public_prive"] or ""),
                education_prioritaire=row["Appartenance_Education_Prioritaire"] or None,
                maternelle=row["Ecole_maternelle"] == "1",
                elementaire=row["Ecole_elementaire"] == "1",
                pupils=row["Nombre_d_eleves"],
                ips=ips.get(uai),
            )
        )
    return schools


def _load_ips(paths: Sequence[Path]) -> dict[str, float]:
    """UAI → IPS from DEPP's IPS files; a later file wins, so pass the most recent last."""
    ips: dict[str, float] = {}
    for path in paths:
        table = _read_csv(Path(path), ["UAI", "IPS"], {"IPS": pa.float64()})
        for uai, value in zip(table["UAI"].to_pylist(), table["IPS"].to_pylist(), strict=True):
            if uai and value is not None:
                ips[uai] = value
    return ips


def _read_csv(path: Path, columns: list[str], typed: Mapping[str, pa.DataType]) -> pa.Table:
    column_types = {name: typed.get(name, pa.string()) for name in columns}
    return pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=";"),
        convert_options=pacsv.ConvertOptions(
            column_types=column_types, include_columns=columns, strings_can_be_null=True
        ),
    )


def ine_check_letter(digits: str) -> str:
    """This generator's check letter for 10 INE digits (value mod 23)."""
    if not re.fullmatch(r"\d{10}", digits):
        raise ValueError(f"an INE body is 10 digits, not {digits!r}")
    return _INE_LETTERS[int(digits) % len(_INE_LETTERS)]


def generate_pupils(
    n: int, *, seed: int = 0, schools: Sequence[School], school_year: str = "2022-2023"
) -> pa.Table:
    """`n` synthetic pupils enrolled in `schools` during `school_year`, one row each.

    Schools are drawn in proportion to their published head count, levels uniformly among the
    levels a school teaches. The social mix of a school follows its IPS when known, otherwise
    its education-prioritaire membership and sector.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    if n > 10**_INE_BODY_DIGITS:
        raise ValueError(f"at most {10**_INE_BODY_DIGITS} distinct synthetic INEs exist, asked for {n}")
    start_year = _start_year(school_year)
    ordered = _checked_schools(schools)

    rng = np.random.default_rng(seed)
    weights = _school_weights(ordered)
    shift = np.array([_social_shift(s) for s in ordered])
    lo, hi = np.array([s.level_range() for s in ordered], dtype=np.int64).reshape(-1, 2).T
    is_college_school = np.array([s.kind == "college" for s in ordered])
    school_grade_effect = rng.normal(0.0, _SCHOOL_GRADE_SD, size=len(ordered))

    school = rng.choice(len(ordered), size=n, p=weights)
    level = lo[school] + np.floor(rng.random(n) * (hi[school] - lo[school])).astype(np.int64)
    maternelle = level < 3
    college = is_college_school[school]

    social = np.searchsorted(_SOCIAL_THRESHOLDS, shift[school] + rng.logistic(size=n))
    sex = (rng.random(n) < 0.51).astype(np.int64)  # 1 = M: slightly more boys, as at birth

    behind = (rng.random(n) < _BEHIND[social]) & ~maternelle
    birth_year = start_year - (3 + level) - behind
    birth_date = _random_day_in_year(rng, birth_year)

    scholarship = college & (rng.random(n) < _SCHOLARSHIP[social])
    disability = rng.random(n) < _DISABILITY_SEX[sex] * _DISABILITY_SOCIAL[social]

    mean_absences = _ABSENCE_MEAN[social] * np.where(college, _ABSENCE_COLLEGE, 1.0)
    mean_absences = mean_absences * np.where(disability, _ABSENCE_DISABILITY, 1.0)
    absences = rng.negative_binomial(_ABSENCE_SHAPE, _ABSENCE_SHAPE / (_ABSENCE_SHAPE + mean_absences))

    common = rng.standard_normal(n)
    own_french, own_maths = rng.standard_normal(n), rng.standard_normal(n)
    adjustment = (
        school_grade_effect[school] + _GRADE_BEHIND * behind + _GRADE_DISABILITY * disability
    )
    shared = np.sqrt(_GRADE_RHO) * common
    unique = np.sqrt(1.0 - _GRADE_RHO)
    french = _GRADE_MEAN_FRENCH[social] + adjustment + _GRADE_FRENCH_GIRLS * (sex == 0)
    french = french + _GRADE_SD * (shared + unique * own_french)
    maths = _GRADE_MEAN_MATHS[social] + adjustment + _GRADE_SD * (shared + unique * own_maths)

    ines = _ines(rng, n)

    columns: list[pa.Array] = [
        ines,
        pa.array(birth_date, type=pa.date32()),
        _labels(sex, SEXES),
        _labels(school, [s.uai for s in ordered]),
        _labels(school, [s.commune for s in ordered]),
        _labels(level, LEVELS),
        _labels(np.zeros(n, dtype=np.int64), [school_year]),
        _labels(social, SOCIAL_CATEGORIES),
        pa.array(scholarship, type=pa.bool_()),
        pa.array(disability, type=pa.bool_()),
        pa.array(absences.astype(np.int64), type=pa.int64()),
        pa.array(_grade(french), type=pa.float64(), mask=maternelle),
        pa.array(_grade(maths), type=pa.float64(), mask=maternelle),
    ]
    metadata = {
        "bulles.synthetic": "true",
        "bulles.generator": "catalog.synthetic.generate_pupils",
        "bulles.seed": str(seed),
        "bulles.ine_marker": INE_MARKER,
    }
    return pa.Table.from_arrays(columns, schema=PUPIL_SCHEMA.with_metadata(metadata))


def _start_year(school_year: str) -> int:
    match = re.fullmatch(r"(\d{4})-(\d{4})", school_year)
    if not match or int(match[2]) != int(match[1]) + 1:
        raise ValueError(f"school_year must look like '2022-2023', not {school_year!r}")
    return int(match[1])


def _checked_schools(schools: Sequence[School]) -> list[School]:
    """Schools in UAI order, so that the result does not depend on how the caller listed them."""
    if not schools:
        raise ValueError("at least one school is needed")
    ordered = sorted(schools, key=lambda s: s.uai)
    for previous, current in zip(ordered, ordered[1:]):
        if previous.uai == current.uai:
            raise ValueError(f"school {current.uai} is listed twice")
    for s in ordered:
        if s.kind not in ("ecole", "college"):
            raise ValueError(f"school {s.uai}: kind must be 'ecole' or 'college', not {s.kind!r}")
    return ordered


def _school_weights(schools: Sequence[School]) -> np.ndarray:
    """Head counts, with a missing one replaced by the median of schools of the same kind."""
    counts = np.array([s.pupils if s.pupils and s.pupils > 0 else np.nan for s in schools], dtype=float)
    kinds = np.array([s.kind for s in schools])
    for kind in ("ecole", "college"):
        same = kinds == kind
        known = counts[same & ~np.isnan(counts)]
        counts[same & np.isnan(counts)] = np.median(known) if known.size else 100.0
    return counts / counts.sum()


def _social_shift(school: School) -> float:
    if school.ips is not None:
        return (school.ips - _IPS_CENTRE) / _IPS_SCALE
    shift = _SCHOOL_SHIFT_EP.get(school.education_prioritaire or "", 0.0)
    return shift + (_SCHOOL_SHIFT_PRIVATE if school.statut == "prive" else 0.0)


def _random_day_in_year(rng: np.random.Generator, years: np.ndarray) -> np.ndarray:
    first = (years - 1970).astype("datetime64[Y]").astype("datetime64[D]")
    length = ((years + 1 - 1970).astype("datetime64[Y]").astype("datetime64[D]") - first).astype(np.int64)
    return first + np.floor(rng.random(years.shape[0]) * length).astype(np.int64)


def _ines(rng: np.random.Generator, n: int) -> pa.StringArray:
    """Distinct '99' + 8 digits + check letter, built as bytes without a per-row Python loop."""
    body = rng.choice(10**_INE_BODY_DIGITS, size=n, replace=False).astype(np.int64)
    value = int(INE_MARKER) * 10**_INE_BODY_DIGITS + body
    chars = np.empty((n, 11), dtype=np.uint8)
    for position in range(10):
        chars[:, position] = ord("0") + (value // 10 ** (9 - position)) % 10
    letters = np.frombuffer(_INE_LETTERS.encode("ascii"), dtype=np.uint8)
    chars[:, 10] = letters[value % len(_INE_LETTERS)]
    offsets = np.arange(0, 11 * (n + 1), 11, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(chars.tobytes()))


def _labels(indices: np.ndarray, labels: Sequence[str]) -> pa.Array:
    dictionary = pa.array(list(labels), type=pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(indices, type=pa.int32()), dictionary).dictionary_decode()


def _grade(raw: np.ndarray) -> np.ndarray:
    return np.round(np.clip(raw, 0.0, 20.0) * 2.0) / 2.0


def write_pupils_parquet(table: pa.Table, path: Path) -> Path:
    """Write `table` so that readers see either the previous file or the complete new one."""
    path = Path(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            pq.write_table(table, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def build_demo_pupils(out_dir: Path, n: int = 5000, seed: int = 2022) -> Path:
    """The demo warehouse's `pupils.parquet`, drawn over the vendored Ille-et-Vilaine schools."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    schools = load_schools(ANNUAIRE_CSV, ips_csvs=IPS_CSVS)
    table = generate_pupils(n, seed=seed, schools=schools)
    return write_pupils_parquet(table, out_dir / PUPILS_FILE)
