"""DCAT-AP 3.0.1 export, checked with the official SHACL shapes (SEMICeu/DCAT-AP, vendored).

Which shapes files are used, and how:

* `shapes.ttl` (mandatory constraints) together with `range.ttl` (class ranges) must conform.
  `range.ttl` applies cleanly offline because the export types every node it points at
  (`dct:LicenseDocument`, `skos:Concept`, `dct:Location`...), so `sh:class` finds the types in
  the data graph itself; no ontology and no RDFS inference are needed.
* `mdr-vocabularies.shape.ttl` (EU controlled vocabularies) must raise no sh:Violation; its
  warnings are reported. The export names each authority concept's scheme, which is what those
  shapes check; they never need the vocabularies themselves.
* `shapes_recommended.ttl` (recommended properties, sh:Warning) is reported, not enforced.
* `imports.ttl` only `owl:imports` the ontologies DCAT-AP reuses, by remote URL. With no network
  it cannot be resolved, and nothing above needs it (the data carries explicit types), so it is
  not loaded.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pytest

rdflib = pytest.importorskip("rdflib")
pyshacl = pytest.importorskip("pyshacl")

from rdflib import RDF, Graph, Literal, Namespace, URIRef  # noqa: E402

from catalog.dcat import (  # noqa: E402
    BULLES_NS,
    LEGAL_BASIS_IRIS,
    Publisher,
    catalog_to_dcat,
    source_document,
    source_to_dcat,
)
from catalog.model import SourceSpec  # noqa: E402
from catalog.vocab import LegalBasis  # noqa: E402

DCAT = Namespace("http://www.w3.org/ns/dcat#")
DCT = Namespace("http://purl.org/dc/terms/")
DPV = Namespace("https://w3id.org/dpv#")
ADMS = Namespace("http://www.w3.org/ns/adms#")
HEALTH = Namespace("http://healthdataportal.eu/ns/health#")
BULLES = Namespace(BULLES_NS)
# Open namespaces: rdflib's closed XSD/SH warn when pytest probes module attributes.
XSD = Namespace("http://www.w3.org/2001/XMLSchema#")
SH = Namespace("http://www.w3.org/ns/shacl#")
CSVW = Namespace("http://www.w3.org/ns/csvw#")
EU = "http://publications.europa.eu/resource/authority/"

BASE = "https://bulles.example.fr"
ISSUED = dt.datetime(2024, 9, 2, 8, 30, tzinfo=dt.timezone.utc)
MODIFIED = dt.datetime(2025, 1, 15, 17, 45, 12, tzinfo=dt.timezone.utc)


def _reference_dir() -> Path:
    override = os.environ.get("BULLES_SHARED_DIR")
    shared = Path(override) if override else Path(__file__).resolve().parents[2] / "shared"
    return shared / "data/reference/dcat-ap-3.0.1"


REFERENCE = _reference_dir()


# --- sources -------------------------------------------------------------------------------

DEPP = Publisher(
    id="men-depp",
    name="Ministère de l'Éducation nationale – DEPP",
    homepage="https://www.education.gouv.fr/",
    email="depp@education.gouv.fr",
    kind="NationalAuthority",
)
RENNES = Publisher(
    id="ac-rennes", name="Académie de Rennes", homepage="https://www.ac-rennes.fr/", kind="NationalAuthority"
)
PLATFORM = Publisher(
    id="bulles",
    name="Plateforme bulles",
    homepage=f"{BASE}/",
    email="contact@bulles.example.fr",
    kind="NationalAuthority",
)

# The restricted sources' warehouse details: none of these strings may leave the platform.
SECRETS = (
    "10.20.30.40",
    "rennes-eleves-prive",
    "eleves/2023/eleves.parquet",
    "rennes-s3-readonly",
    "rectorat_dw",
    "vie_scolaire_2019",
)


def ips_colleges() -> SourceSpec:
    """The real open dataset fr-en-ips-colleges-ap2022 (DEPP), as vendored in shared/data."""
    text = ("Rentrée scolaire", "Académie", "Code du département", "Département")
    columns: list[dict[str, Any]] = [{"name": name, "type": "string"} for name in text]
    columns += [
        {"name": "UAI", "type": "string", "description": "Identifiant de l'établissement"},
        {"name": "Nom de l'établissment", "type": "string"},
        {"name": "Code INSEE de la commune", "type": "string"},
        {"name": "Nom de la commune", "type": "string"},
        {"name": "Secteur", "type": "string"},
        {"name": "Effectifs", "type": "float64"},
        {"name": "IPS", "type": "float64", "description": "Indice de position sociale"},
        {"name": "Ecart-type de l'IPS", "type": "float64"},
    ]
    return SourceSpec.model_validate(
        {
            "id": "fr-en-ips-colleges-ap2022",
            "title": "Indices de position sociale dans les collèges (à partir de 2022)",
            "description": "IPS des collèges publics et privés sous contrat, rentrée 2022-2023, "
            "France entière (DEPP).",
            "publisher": "men-depp",
            "contact_point": {"name": "DEPP", "email": "depp@education.gouv.fr"},
            "keywords": ["IPS", "indice de position sociale", "collège"],
            "themes": ["EDUC", "SOCI"],
            "language": ["fr"],
            "access_rights": "PUBLIC",
            "licence": "https://www.etalab.gouv.fr/licence-ouverte-open-licence/",
            "landing_page": "https://data.education.gouv.fr/explore/dataset/fr-en-ips-colleges-ap2022/",
            "provenance": "Ministère de l'Éducation nationale – data.education.gouv.fr, 2023.",
            "temporal": {"start": "2022-09-01", "end": "2023-08-31"},
            "spatial": [f"{EU}country/FRA"],
            "sensitivity": "open",
            "access_modes": ["raw"],
            "number_of_records": 6973,
            "schema": columns,
            "connector": {
                "kind": "file",
                "root": "demo",
                "path": "opendata/fr-en-ips-colleges-ap2022.csv",
                "format": "csv",
            },
        }
    )


def synthetic_pupils() -> SourceSpec:
    """A personal source of synthetic pupils held in a private S3 warehouse."""
    return SourceSpec.model_validate(
        {
            "id": "eleves-synthetiques-35",
            "title": "Élèves du second degré d'Ille-et-Vilaine (synthétiques)",
            "description": "Données individuelles synthétiques d'élèves : scolarité, résultats, aides.",
            "publisher": "ac-rennes",
            "contact_point": {"name": "DPD de l'académie de Rennes", "email": "dpd@ac-rennes.fr"},
            "keywords": ["élèves", "scolarité"],
            "themes": ["EDUC"],
            "access_rights": "NON_PUBLIC",
            "applicable_legislation": ["http://data.europa.eu/eli/reg/2016/679/oj"],
            "provenance": "Généré à partir d'un modèle statistique de la base élèves académique.",
            "temporal": {"start": "2023-09-01"},
            "spatial": [f"{EU}country/FRA"],
            "sensitivity": "sensitive",
            "legal_basis": "public_task",
            "allowed_purposes": ["research", "public_policy_evaluation", "statistics"],
            "access_modes": ["pseudonymised", "generalised", "aggregated", "synthetic"],
            "personal_data_categories": [
                "identifier",
                "name",
                "birth_date",
                "gender",
                "school",
                "location",
                "socio_economic",
                "social_aid",
                "disability",
                "academic_results",
            ],
            "retention": "P5Y",
            "number_of_records": 120000,
            "schema": [
                {"name": "ine", "type": "string", "role": "identifier"},
                {"name": "nom", "type": "string", "role": "identifier"},
                {
                    "name": "date_naissance",
                    "type": "date",
                    "role": "quasi_identifier",
                    "generalisation": {"to": "year"},
                },
                {
                    "name": "uai",
                    "type": "string",
                    "role": "quasi_identifier",
                    "generalisation": {"to": "rare_to_other", "min_count": 11},
                },
                {
                    "name": "code_commune",
                    "type": "string",
                    "role": "quasi_identifier",
                    "generalisation": {"to": "departement"},
                },
                {"name": "sexe", "type": "string", "role": "quasi_identifier"},
                {"name": "pcs_famille", "type": "string"},
                {"name": "boursier", "type": "boolean", "role": "sensitive"},
                {"name": "handicap", "type": "boolean", "role": "sensitive"},
                {
                    "name": "moyenne",
                    "type": "float64",
                    "generalisation": {"to": "band", "width": 2},
                },
            ],
            "connector": {
                "kind": "s3",
                "endpoint": "http://10.20.30.40:8333",
                "bucket": "rennes-eleves-prive",
                "key": "eleves/2023/eleves.parquet",
                "format": "parquet",
                "credentials": "rennes-s3-readonly",
            },
            "site": "rennes",
        }
    )


def retired_school_life() -> SourceSpec:
    """An internal source in a PostgreSQL warehouse, since retired."""
    return SourceSpec.model_validate(
        {
            "id": "vie-scolaire-2019",
            "title": "Vie scolaire 2019 (agrégats par établissement)",
            "description": "Absences et sanctions agrégées par établissement.",
            "publisher": "ac-rennes",
            "contact_point": {"name": "Service statistique", "email": "stats@ac-rennes.fr"},
            "keywords": ["absentéisme"],
            "themes": ["EDUC"],
            "temporal": {"start": "2019-09-01", "end": "2020-07-04"},
            "spatial": [f"{EU}country/FRA"],
            "access_rights": "RESTRICTED",
            "sensitivity": "internal",
            "access_modes": ["aggregated"],
            "schema": [
                {"name": "uai", "type": "string"},
                {"name": "absences", "type": "int64"},
            ],
            "connector": {"kind": "postgresql", "database": "rectorat_dw", "table": "stats.vie_scolaire_2019"},
            "site": "rennes",
        }
    )


def catalog_entries() -> list[tuple[SourceSpec, Publisher, dict[str, Any]]]:
    return [
        (synthetic_pupils(), RENNES, {"issued": ISSUED, "modified": MODIFIED, "status": "active"}),
        (ips_colleges(), DEPP, {"issued": ISSUED, "modified": ISSUED, "status": "active"}),
        (retired_school_life(), RENNES, {"issued": ISSUED, "modified": MODIFIED, "status": "retired"}),
    ]


def export_catalog(entries: list[tuple[SourceSpec, Publisher, dict[str, Any]]] | None = None) -> dict[str, Any]:
    return catalog_to_dcat(
        catalog_entries() if entries is None else entries,
        base_uri=BASE,
        title="Catalogue de la plateforme bulles",
        description="Sources de données éducatives accessibles par bulles de traitement.",
        publisher=PLATFORM,
        issued=ISSUED,
        licence="https://www.etalab.gouv.fr/licence-ouverte-open-licence/",
        spatial=[f"{EU}country/FRA"],
    )


def document_for(spec: SourceSpec, publisher: Publisher, status: str = "active") -> dict[str, Any]:
    return source_document(
        spec, publisher=publisher, base_uri=BASE, issued=ISSUED, modified=MODIFIED, status=status
    )


def to_graph(document: dict[str, Any]) -> Graph:
    # The context is inline: parsing must not need the network.
    return Graph().parse(data=json.dumps(document), format="json-ld")


# --- SHACL ---------------------------------------------------------------------------------


class Shapes:
    def __init__(self, directory: Path) -> None:
        self.mandatory = Graph()
        for name in ("shapes.ttl", "range.ttl"):
            self.mandatory.parse(directory / name, format="turtle")
        self.vocabularies = Graph().parse(directory / "mdr-vocabularies.shape.ttl", format="turtle")
        self.recommended = Graph().parse(directory / "shapes_recommended.ttl", format="turtle")


@pytest.fixture(scope="module")
def shapes() -> Shapes:
    if not REFERENCE.is_dir():
        message = f"DCAT-AP 3.0.1 shapes not found at {REFERENCE} (set BULLES_SHARED_DIR to the shared dir)"
        if os.environ.get("CI"):  # CI always has shared/ beside the clone: never skip there
            pytest.fail(message)
        pytest.skip(message)
    return Shapes(REFERENCE)


def validate(data: Graph, shapes_graph: Graph) -> tuple[bool, list[tuple[str, str, str, str]], str]:
    conforms, results, text = pyshacl.validate(
        data, shacl_graph=shapes_graph, inference="none", advanced=False, allow_warnings=False
    )
    found = []
    # Top-level results only: pySHACL also types the nested sh:detail results, which explain
    # a result but whose severity is not the one the shape asked for.
    for result in results.objects(None, SH.result):
        severity = str(results.value(result, SH.resultSeverity)).rsplit("#", 1)[-1]
        focus = str(results.value(result, SH.focusNode))
        path = str(results.value(result, SH.resultPath))
        message = str(results.value(result, SH.resultMessage))
        found.append((severity, focus, path, message))
    return bool(conforms), sorted(found), str(text)


def report(label: str, results: list[tuple[str, str, str, str]]) -> None:
    """Recommended-level findings are information for the lead, not failures."""
    for severity, focus, path, message in results:
        line = f"{label}: {severity} on {focus} [{path}]: {message}"
        print(line)
        warnings.warn(line, stacklevel=2)


def assert_dcat_ap(document: dict[str, Any], shapes: Shapes, label: str) -> Graph:
    graph = to_graph(document)
    conforms, _, text = validate(graph, shapes.mandatory)
    assert conforms is True, f"{label} breaks DCAT-AP mandatory or range shapes:\n{text}"
    _, vocabulary_results, text = validate(graph, shapes.vocabularies)
    violations = [r for r in vocabulary_results if r[0] == "Violation"]
    assert not violations, f"{label} breaks DCAT-AP controlled-vocabulary shapes:\n{text}"
    _, recommended_results, _ = validate(graph, shapes.recommended)
    report(label, [r for r in vocabulary_results if r[0] != "Violation"] + recommended_results)
    return graph


# --- conformance ---------------------------------------------------------------------------


def test_open_source_conforms(shapes: Shapes) -> None:
    graph = assert_dcat_ap(document_for(ips_colleges(), DEPP), shapes, "open source")
    dataset = URIRef(f"{BASE}/api/v1/sources/fr-en-ips-colleges-ap2022")
    assert (dataset, RDF.type, DCAT.Dataset) in graph
    title = Literal("Indices de position sociale dans les collèges (à partir de 2022)", lang="fr")
    assert (dataset, DCT.title, title) in graph
    assert (dataset, DCT.language, URIRef(f"{EU}language/FRA")) in graph
    assert (dataset, DCAT.theme, URIRef(f"{EU}data-theme/EDUC")) in graph
    assert (dataset, DCT.accessRights, URIRef(f"{EU}access-right/PUBLIC")) in graph
    assert (dataset, HEALTH.numberOfRecords, Literal("6973", datatype=XSD.nonNegativeInteger)) in graph
    assert (dataset, DCAT.keyword, Literal("collège", lang="fr")) in graph
    distribution = URIRef(f"{dataset}#distribution")
    assert (distribution, DCAT.accessURL, dataset) in graph
    assert (distribution, DCAT.mediaType, URIRef("http://www.iana.org/assignments/media-types/text/csv")) in graph
    assert (distribution, DCT["format"], URIRef(f"{EU}file-type/CSV")) in graph
    licence = URIRef("https://www.etalab.gouv.fr/licence-ouverte-open-licence/")
    assert (distribution, DCT.license, licence) in graph
    assert (licence, RDF.type, DCT.LicenseDocument) in graph
    assert (distribution, DCAT.downloadURL, None) not in graph
    names = [str(graph.value(c, CSVW.name)) for c in _columns(graph, dataset)]
    assert names[4:7] == ["UAI", "Nom de l'établissment", "Code INSEE de la commune"]
    assert len(names) == 12


def test_personal_source_conforms_and_carries_sensitive_data_fields(shapes: Shapes) -> None:
    graph = assert_dcat_ap(document_for(synthetic_pupils(), RENNES), shapes, "personal source")
    dataset = URIRef(f"{BASE}/api/v1/sources/eleves-synthetiques-35")
    gdpr = "https://w3id.org/dpv/legal/eu/gdpr#"
    assert (dataset, DPV.hasLegalBasis, URIRef(f"{gdpr}A6-1-e")) in graph
    purposes = set(graph.objects(dataset, DPV.hasPurpose))
    assert {BULLES["purpose-research"], DPV.ScientificResearch, BULLES["purpose-statistics"]} <= purposes
    personal = set(graph.objects(dataset, DPV.hasPersonalData))
    assert URIRef("https://w3id.org/dpv/pd#BirthDate") in personal
    assert URIRef("https://w3id.org/dpv/pd#Disability") in personal
    assert BULLES["personal-data-social_aid"] in personal
    assert (dataset, BULLES.retention, Literal("P5Y", datatype=XSD.duration)) in graph
    assert (dataset, HEALTH.numberOfRecords, Literal("120000", datatype=XSD.nonNegativeInteger)) in graph
    assert (dataset, BULLES.sensitivity, BULLES["sensitivity-sensitive"]) in graph
    assert (dataset, BULLES.accessMode, BULLES["mode-pseudonymised"]) in graph
    assert (dataset, BULLES.site, Literal("rennes")) in graph
    assert (dataset, DCT.accessRights, URIRef(f"{EU}access-right/NON_PUBLIC")) in graph
    legislation = URIRef("http://data.europa.eu/eli/reg/2016/679/oj")
    assert (dataset, URIRef("http://data.europa.eu/r5r/applicableLegislation"), legislation) in graph
    roles = {
        str(graph.value(c, CSVW.name)): graph.value(c, BULLES.columnRole)
        for c in _columns(graph, dataset)
    }
    assert roles["ine"] == BULLES["role-identifier"]
    assert roles["date_naissance"] == BULLES["role-quasi_identifier"]
    assert roles["handicap"] == BULLES["role-sensitive"]
    assert roles["pcs_famille"] == BULLES["role-attribute"]
    distribution = URIRef(f"{dataset}#distribution")
    parquet = URIRef("http://www.iana.org/assignments/media-types/application/vnd.apache.parquet")
    assert (distribution, DCAT.mediaType, parquet) in graph
    assert (distribution, DCAT.accessURL, dataset) in graph


def test_catalog_conforms(shapes: Shapes) -> None:
    document = export_catalog()
    graph = assert_dcat_ap(document, shapes, "catalog")
    catalog = URIRef(f"{BASE}/api/v1/catalog")
    assert (catalog, RDF.type, DCAT.Catalog) in graph
    assert (catalog, DCT.publisher, URIRef(f"{BASE}/api/v1/organisations/bulles")) in graph
    listed = set(graph.objects(catalog, DCAT.dataset))
    assert listed == set(graph.subjects(RDF.type, DCAT.Dataset))
    assert len(listed) == 3
    agents = set(graph.subjects(RDF.type, URIRef("http://xmlns.com/foaf/0.1/Agent")))
    assert {str(a).rsplit("/", 1)[-1] for a in agents} == {"bulles", "ac-rennes", "men-depp"}
    # Latest modification among the entries.
    assert (catalog, DCT.modified, Literal("2025-01-15T17:45:12Z", datatype=XSD.dateTime)) in graph


def test_mandatory_failure_is_detected(shapes: Shapes) -> None:
    """Proves the conformance tests can fail: a dataset without a title is rejected."""
    node = source_to_dcat(
        ips_colleges(), publisher=DEPP, base_uri=BASE, issued=ISSUED, modified=MODIFIED, status="active"
    )
    del node["dct:title"]
    document = {"@context": document_for(ips_colleges(), DEPP)["@context"], "@graph": [node]}
    conforms, results, text = validate(to_graph(document), shapes.mandatory)
    assert conforms is False
    assert any(path == str(DCT.title) and severity == "Violation" for severity, _, path, _ in results), text


def test_range_shapes_are_enforced(shapes: Shapes) -> None:
    """range.ttl is part of the mandatory set: an untyped licence node breaks it."""
    document = document_for(ips_colleges(), DEPP)
    del document["@graph"][0]["dcat:distribution"][0]["dct:license"]["@type"]
    conforms, results, text = validate(to_graph(document), shapes.mandatory)
    assert conforms is False
    assert any(path == str(DCT.license) for _, _, path, _ in results), text


def test_distribution_without_access_url_is_detected(shapes: Shapes) -> None:
    document = document_for(synthetic_pupils(), RENNES)
    del document["@graph"][0]["dcat:distribution"][0]["dcat:accessURL"]
    conforms, results, text = validate(to_graph(document), shapes.mandatory)
    assert conforms is False
    assert any(path == str(DCAT.accessURL) for _, _, path, _ in results), text


# --- behaviour -----------------------------------------------------------------------------


def test_export_is_deterministic() -> None:
    first = export_catalog()
    second = export_catalog(list(reversed(catalog_entries())))
    assert first == second
    assert json.dumps(first, ensure_ascii=False) == json.dumps(second, ensure_ascii=False)
    assert document_for(synthetic_pupils(), RENNES) == document_for(synthetic_pupils(), RENNES)


def test_output_is_not_shared_between_calls() -> None:
    first = export_catalog()
    mutated = copy.deepcopy(first)
    first["@context"]["dct"] = "urn:broken"
    first["@graph"][1]["dct:title"] = "changed"
    assert export_catalog() == mutated


def test_no_warehouse_detail_of_restricted_sources_leaks() -> None:
    for document in (
        export_catalog(),
        document_for(synthetic_pupils(), RENNES),
        document_for(retired_school_life(), RENNES, "retired"),
    ):
        text = json.dumps(document, ensure_ascii=False)
        for secret in SECRETS:
            assert secret not in text
        # Nor any property that would point at the data outside the platform.
        graph = to_graph(document)
        assert not list(graph.triples((None, DCAT.downloadURL, None)))
        assert not list(graph.triples((None, DCAT.endpointURL, None)))


def test_retired_source_is_marked() -> None:
    graph = to_graph(export_catalog())
    retired = URIRef(f"{BASE}/api/v1/sources/vie-scolaire-2019")
    active = URIRef(f"{BASE}/api/v1/sources/fr-en-ips-colleges-ap2022")
    assert (retired, BULLES.status, Literal("retired")) in graph
    assert (active, BULLES.status, Literal("active")) in graph
    withdrawn = URIRef(f"{EU}distribution-status/WITHDRAWN")
    assert (URIRef(f"{retired}#distribution"), ADMS.status, withdrawn) in graph
    assert (URIRef(f"{active}#distribution"), ADMS.status, URIRef(f"{EU}distribution-status/COMPLETED")) in graph
    assert (URIRef(f"{retired}#distribution"), URIRef("http://data.europa.eu/r5r/availability"), None) not in graph


def test_every_legal_basis_maps_to_its_gdpr_point() -> None:
    points = {basis: iri.rsplit("#A6-1-", 1)[-1] for basis, iri in LEGAL_BASIS_IRIS.items()}
    assert points == {
        LegalBasis.consent: "a",
        LegalBasis.contract: "b",
        LegalBasis.legal_obligation: "c",
        LegalBasis.vital_interests: "d",
        LegalBasis.public_task: "e",
        LegalBasis.legitimate_interests: "f",
    }


def test_dates_are_utc_datetimes() -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    naive = dt.datetime(2024, 9, 2, 8, 30)
    node = source_to_dcat(
        ips_colleges(),
        publisher=DEPP,
        base_uri=BASE + "/",
        issued=naive,
        modified=dt.datetime(2025, 1, 15, 18, 45, 12, tzinfo=paris),
        status="active",
    )
    assert node["dct:issued"] == {"@value": "2024-09-02T08:30:00Z", "@type": "xsd:dateTime"}
    assert node["dct:modified"] == {"@value": "2025-01-15T17:45:12Z", "@type": "xsd:dateTime"}
    assert node["@id"] == f"{BASE}/api/v1/sources/fr-en-ips-colleges-ap2022"


@pytest.mark.parametrize(
    ("retention", "expected"), [("P5Y", "P5Y"), ("P18M", "P18M"), ("P2W", "P14D"), ("P1Y2W3D", "P1Y17D")]
)
def test_retention_is_a_valid_xsd_duration(retention: str, expected: str) -> None:
    spec = synthetic_pupils().model_copy(update={"retention": retention})
    node = source_to_dcat(spec, publisher=RENNES, base_uri=BASE, issued=ISSUED, modified=MODIFIED, status="active")
    assert node["bulles:retention"] == {"@value": expected, "@type": "xsd:duration"}


def test_malformed_language_codes_are_left_out() -> None:
    spec = ips_colleges().model_copy(update={"language": ["français", "en-GB"]})
    graph = to_graph(document_for(spec, DEPP))
    dataset = URIRef(f"{BASE}/api/v1/sources/fr-en-ips-colleges-ap2022")
    assert set(graph.objects(dataset, DCT.language)) == {URIRef(f"{EU}language/ENG")}
    assert graph.value(dataset, DCT.description).language.lower() == "en-gb"


def test_bad_input_is_refused() -> None:
    spec = ips_colleges()
    with pytest.raises(ValueError, match="published by 'men-depp'"):
        source_to_dcat(spec, publisher=RENNES, base_uri=BASE, issued=ISSUED, modified=MODIFIED, status="active")
    with pytest.raises(ValueError, match="status 'deleted'"):
        source_to_dcat(spec, publisher=DEPP, base_uri=BASE, issued=ISSUED, modified=MODIFIED, status="deleted")
    with pytest.raises(ValueError, match="base_uri"):
        source_to_dcat(spec, publisher=DEPP, base_uri="bulles.local", issued=ISSUED, modified=MODIFIED, status="active")
    twice = [(spec, DEPP, {"issued": ISSUED, "modified": ISSUED, "status": "active"})] * 2
    with pytest.raises(ValueError, match="appears twice"):
        export_catalog(twice)
    with pytest.raises(ValueError, match="lacks status"):
        export_catalog([(spec, DEPP, {"issued": ISSUED, "modified": ISSUED})])
    impostor = Publisher(id="men-depp", name="Someone else")
    with pytest.raises(ValueError, match="share the id 'men-depp'"):
        catalog_to_dcat(
            [(spec, DEPP, {"issued": ISSUED, "modified": ISSUED, "status": "active"})],
            base_uri=BASE,
            title="Catalogue",
            description="Catalogue de test",
            publisher=impostor,
        )
    with pytest.raises(ValueError, match="ADMS publisher type"):
        Publisher(id="x-org", name="X", kind="Ministry")


def _columns(graph: Graph, dataset: URIRef) -> list[Any]:
    schema = graph.value(dataset, BULLES.schema)
    head = graph.value(schema, CSVW.column)
    return list(rdflib.collection.Collection(graph, head))


def test_the_api_serves_a_conforming_catalog_of_the_demo_sources(site, shapes: Shapes) -> None:
    """The catalog as a harvester gets it: registered through the API, exported by the API."""
    from conftest import example

    names = ["eleves-synthetiques", "fr-en-ips-colleges-ap2022", "fr-en-annuaire-education"]
    for name in names:
        answer = site.client.post("/api/v1/sources", json=example(name), headers=site.headers("alice"))
        assert answer.status_code == 201, answer.text
    site.client.post("/api/v1/sources/fr-en-annuaire-education/retire", json={"reason": "test"},
                     headers=site.headers("alice"))
    whole = site.client.get("/api/v1/catalog")
    assert whole.status_code == 200 and whole.headers["content-type"].startswith("application/ld+json")
    graph = assert_dcat_ap(whole.json(), shapes, "api catalog")
    assert len(set(graph.subjects(RDF.type, DCAT.Dataset))) == 3
    one = site.client.get("/api/v1/sources/eleves-synthetiques/dcat")
    assert_dcat_ap(one.json(), shapes, "api source")
    assert "pupils.parquet" not in whole.text  # where the data lives is not published
    assert site.client.get("/api/v1/sources/nope/dcat").status_code == 404
