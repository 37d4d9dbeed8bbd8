"""The demo catalog entries are valid and describe the files they point at, column for column."""

from __future__ import annotations

import csv
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
import yaml

from connectors.base import ARROW_TYPES
from catalog.model import SourceSpec
from catalog.synthetic import ANNUAIRE_CSV, OPENDATA_DIR, generate_pupils, load_schools
from catalog.vocab import AccessMode, AccessRights, ColumnRole, ColumnType, Purpose, Sensitivity
from connectors.location import FileLocation

EXAMPLES = Path(__file__).resolve().parent.parent / "catalog" / "examples"
OPEN_IDS = {
    "fr-en-ips-colleges-ap2022",
    "fr-en-annuaire-education",
    "fr-en-ecoles-effectifs-nb_classes",
    "fr-en-ips_ecoles",
}
PUPILS_ID = "eleves-synthetiques"


def _load(path: Path) -> SourceSpec:
    return SourceSpec.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


SPECS = {path.name: _load(path) for path in sorted(EXAMPLES.glob("*.yaml"))}
OPEN_SPECS = [spec for spec in SPECS.values() if spec.id in OPEN_IDS]


def _csv_of(spec: SourceSpec) -> Path:
    assert isinstance(spec.connector, FileLocation)
    assert spec.connector.root == "demo" and spec.connector.format == "csv"
    return OPENDATA_DIR.parent / spec.connector.path


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as handle:
        return next(csv.reader(handle, delimiter=";"))


def _read_typed(spec: SourceSpec) -> pa.Table:
    return pacsv.read_csv(
        _csv_of(spec),
        parse_options=pacsv.ParseOptions(delimiter=";"),
        convert_options=pacsv.ConvertOptions(
            column_types={c.name: ARROW_TYPES[c.type] for c in spec.schema_}, strings_can_be_null=False
        ),
    )


def test_every_example_validates_and_is_named_after_its_id() -> None:
    assert {spec.id for spec in SPECS.values()} == OPEN_IDS | {PUPILS_ID}
    for name, spec in SPECS.items():
        assert name == f"{spec.id}.yaml"
        assert spec.publisher == "demo-rennes"
        assert spec.contact_point.email.endswith("@example.org")


@pytest.mark.parametrize("spec", OPEN_SPECS, ids=lambda s: s.id)
def test_open_example_declares_open_data(spec: SourceSpec) -> None:
    assert spec.sensitivity is Sensitivity.open
    assert spec.access_rights is AccessRights.PUBLIC
    assert spec.licence == "https://www.etalab.gouv.fr/licence-ouverte-open-licence/"
    assert spec.landing_page == f"https://data.education.gouv.fr/explore/dataset/{spec.id}/"
    assert set(spec.access_modes) == set(AccessMode)
    assert set(spec.allowed_purposes) == set(Purpose)
    assert all(c.role is ColumnRole.attribute for c in spec.schema_)
    assert "data.education.gouv.fr" in (spec.provenance or "")


@pytest.mark.parametrize("spec", OPEN_SPECS, ids=lambda s: s.id)
def test_open_schema_matches_csv_header_exactly(spec: SourceSpec) -> None:
    header = _header(_csv_of(spec))
    assert [c.name for c in spec.schema_] == header


@pytest.mark.parametrize("spec", OPEN_SPECS, ids=lambda s: s.id)
def test_open_csv_parses_with_declared_types(spec: SourceSpec) -> None:
    table = _read_typed(spec)
    assert table.num_rows == spec.number_of_records
    for column in spec.schema_:
        assert table.schema.field(column.name).type == ARROW_TYPES[column.type], column.name


@pytest.mark.parametrize("spec", OPEN_SPECS, ids=lambda s: s.id)
def test_codes_keep_their_leading_zeros(spec: SourceSpec) -> None:
    table = _read_typed(spec)
    codes = {
        "Code du département": "001",
        "Code_departement": "035",
        "Code INSEE de la commune": "01025",
        "UAI": "0010005A",
        "Identifiant_de_l_etablissement": "0350122T",
        "Numéro de l'école": "0350103X",
    }
    present = [name for name in codes if name in table.column_names]
    assert present, "every open example has at least one code column"
    for name in present:
        if spec.id == "fr-en-ips_ecoles" and name in ("Code INSEE de la commune", "UAI"):
            continue  # the école file has no collège rows
        assert codes[name] in set(table[name].to_pylist()), name
    for column in spec.schema_:
        if column.name.lower().startswith("code") or column.name in ("UAI", "SIREN_SIRET", "rpi_disperse"):
            assert column.type is ColumnType.string, column.name


def test_pupils_example_matches_generator() -> None:
    spec = SPECS[f"{PUPILS_ID}.yaml"]
    assert spec.sensitivity is Sensitivity.personal
    assert spec.access_rights is AccessRights.NON_PUBLIC
    assert AccessMode.raw not in spec.access_modes and AccessMode.minimised not in spec.access_modes
    assert "synthétiques" in spec.description.lower()
    assert spec.columns_by_role(ColumnRole.identifier) == ["ine"]
    assert spec.columns_by_role(ColumnRole.sensitive) == ["disability_plan"]
    table = generate_pupils(50, seed=1, schools=load_schools(ANNUAIRE_CSV))
    assert [c.name for c in spec.schema_] == table.column_names
    for column in spec.schema_:
        actual = table.schema.field(column.name).type
        expected = ARROW_TYPES[column.type]
        if column.type is ColumnType.string:
            assert actual in (pa.string(), pa.large_string()), column.name
        else:
            assert actual == expected, column.name
