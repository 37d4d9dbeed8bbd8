"""DCAT-AP 3.0.1 JSON-LD for the catalog: one source, or the whole catalog.

Pure functions: a `SourceSpec` plus what the store knows about it (publisher, dates, status) goes
in, a JSON-LD dict comes out. No I/O, so the API, the CLI and the harvesting code of a peer site
all get byte-identical documents for identical input, and tests can compare them.

Choices that a reader of the output needs to know:

* Every node gets an IRI under `base_uri`: the dataset is `{base}/api/v1/sources/{id}`, its parts
  are fragments of it (`#distribution`, `#contact-point`, `#temporal`, `#provenance`, `#schema`,
  `#column-{index}`), publishers are `{base}/api/v1/organisations/{id}` and the catalog is
  `{base}/api/v1/catalog`. No blank nodes, so two exports of the same source are isomorphic
  triple for triple and a harvester can update rather than duplicate.
* The distribution's `dcat:accessURL` is the platform's own source URL: data is only ever reached
  through the platform (access request, policy, view), never from the warehouse. Nothing from the
  connector location is exported except its file format; no endpoint, bucket, key, database,
  table, query or credential name appears, whatever the access rights.
* Values taken from EU authority tables (themes, access rights, languages, file types,
  distribution status, planned availability) and ADMS (licence and publisher types) are typed
  inline with the class DCAT-AP's range shapes expect and linked to their `skos:ConceptScheme`,
  so the document validates against `range.ttl` and the controlled-vocabulary shapes without
  having to download those vocabularies.
* Sensitive-data fields follow HealthDCAT-AP: `dpv:hasLegalBasis` (DPV-GDPR Art. 6(1) terms),
  `dpv:hasPurpose` (a `bulles:` purpose, plus the DPV purpose when one plainly matches),
  `dpv:hasPersonalData` (DPV-PD where a term covers the category, `bulles:` otherwise) and
  `healthdcatap:numberOfRecords`.
* Retention is `bulles:retention`, an `xsd:duration` (e.g. "P5Y"; ISO weeks, which
  xsd:duration lacks, are written as days). HealthDCAT-AP's
  `healthdcatap:retentionPeriod` is a dated `dct:PeriodOfTime` during which the dataset is
  available for secondary use; a provider declares how long data is kept, not a calendar
  interval, so reusing that property would misstate what we know.
* Status: `bulles:status` is the literal "active" or "retired" on the dataset, and the
  distribution carries the matching ADMS distribution status (COMPLETED or WITHDRAWN); only an
  active source announces a planned availability.
* Datetimes are written in UTC with a `Z`; a naive datetime is taken as UTC, which is how the
  store keeps them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypedDict
from urllib.parse import quote

from catalog.model import ORG_ID, Column, SourceSpec
from catalog.vocab import (
    AccessMode,
    AccessRights,
    ColumnRole,
    LegalBasis,
    PersonalDataCategory,
    Purpose,
    Sensitivity,
    Theme,
)

BULLES_NS = "https://bulles.example.org/ns#"
"""Placeholder namespace for the platform's own terms, until a resolvable one is published."""

JsonLd = dict[str, Any]
Status = Literal["active", "retired"]
STATUSES: tuple[Status, ...] = ("active", "retired")

_DCAT = "http://www.w3.org/ns/dcat#"
_DPV = "https://w3id.org/dpv#"
_DPV_PD = "https://w3id.org/dpv/pd#"
_DPV_GDPR = "https://w3id.org/dpv/legal/eu/gdpr#"
_EU_AUTHORITY = "http://publications.europa.eu/resource/authority/"
_IANA_MEDIA_TYPES = "http://www.iana.org/assignments/media-types/"
_ADMS_LICENCE_TYPE = "http://purl.org/adms/licencetype/"
_ADMS_PUBLISHER_TYPE = "http://purl.org/adms/publishertype/"

_PREFIXES: dict[str, str] = {
    "adms": "http://www.w3.org/ns/adms#",
    "bulles": BULLES_NS,
    "csvw": "http://www.w3.org/ns/csvw#",
    "dcat": _DCAT,
    "dcatap": "http://data.europa.eu/r5r/",
    "dct": "http://purl.org/dc/terms/",
    "dpv": _DPV,
    "eli": "http://data.europa.eu/eli/ontology#",
    "foaf": "http://xmlns.com/foaf/0.1/",
    "healthdcatap": "http://healthdataportal.eu/ns/health#",
    "rdfs": "http://www.w3.org/2000/01/rdf-schema#",
    "skos": "http://www.w3.org/2004/02/skos/core#",
    "vcard": "http://www.w3.org/2006/vcard/ns#",
    "xsd": "http://www.w3.org/2001/XMLSchema#",
}

# --- concept schemes -------------------------------------------------------------------------
# Every scheme we point at is typed and titled: the controlled-vocabulary shapes require
# `skos:ConceptScheme` on some of them and the core shapes then require a title on every one.

_SCHEME_TITLES: dict[str, str] = {
    f"{_EU_AUTHORITY}data-theme": "Data theme",
    f"{_EU_AUTHORITY}access-right": "Access right",
    f"{_EU_AUTHORITY}language": "Language",
    f"{_EU_AUTHORITY}file-type": "File type",
    f"{_EU_AUTHORITY}distribution-status": "Distribution status",
    f"{_EU_AUTHORITY}planned-availability": "Planned availability",
    f"{_EU_AUTHORITY}country": "Country",
    f"{_EU_AUTHORITY}place": "Place",
    f"{_EU_AUTHORITY}continent": "Continent",
    f"{_ADMS_LICENCE_TYPE}1.0": "Licence type",
    f"{_ADMS_PUBLISHER_TYPE}1.0": "Publisher type",
}

# --- DCAT-AP controlled vocabularies ---------------------------------------------------------

_THEME_LABELS: dict[Theme, str] = {
    Theme.AGRI: "Agriculture, fisheries, forestry and food",
    Theme.ECON: "Economy and finance",
    Theme.EDUC: "Education, culture and sport",
    Theme.ENER: "Energy",
    Theme.ENVI: "Environment",
    Theme.GOVE: "Government and public sector",
    Theme.HEAL: "Health",
    Theme.INTR: "International issues",
    Theme.JUST: "Justice, legal system and public safety",
    Theme.OP_DATPRO: "Provisional data",
    Theme.REGI: "Regions and cities",
    Theme.SOCI: "Population and society",
    Theme.TECH: "Science and technology",
    Theme.TRAN: "Transport",
}

_ACCESS_RIGHT_LABELS: dict[AccessRights, str] = {
    AccessRights.PUBLIC: "public",
    AccessRights.RESTRICTED: "restricted",
    AccessRights.NON_PUBLIC: "non-public",
}

# ISO 639-1 (what providers write, and what `@language` needs) to the EU language table.
# Unknown codes fall back to the Library of Congress ISO 639-1 IRI rather than failing the export.
_LANGUAGES: dict[str, str] = {
    "br": "BRE",
    "ca": "CAT",
    "co": "COS",
    "de": "DEU",
    "en": "ENG",
    "es": "SPA",
    "eu": "EUS",
    "fr": "FRA",
    "it": "ITA",
    "nl": "NLD",
    "oc": "OCI",
    "pt": "POR",
}

# (IANA media type, EU file-type code) per connector file format.
_FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("text/csv", "CSV"),
    "json": ("application/json", "JSON"),
    "parquet": ("application/vnd.apache.parquet", "PARQUET"),
}

_DISTRIBUTION_STATUS: dict[Status, tuple[str, str]] = {
    "active": ("COMPLETED", "Completed"),
    "retired": ("WITHDRAWN", "Withdrawn"),
}

# Known licences, keyed by a normalised URL (see `_licence_key`), to their ADMS licence types.
_LICENCE_TYPES: dict[str, tuple[str, ...]] = {
    "etalab.gouv.fr/licence-ouverte-open-licence": ("Attribution",),
    "etalab.gouv.fr/wp-content/uploads/2017/04/etalab-licence-ouverte-v2.0.pdf": ("Attribution",),
    "creativecommons.org/licenses/by/4.0": ("Attribution",),
    "creativecommons.org/licenses/by-sa/4.0": ("Attribution", "ShareAlike"),
    "creativecommons.org/publicdomain/zero/1.0": ("PublicDomain",),
    "opendatacommons.org/licenses/odbl": ("Attribution", "ShareAlike"),
    "opendatacommons.org/licenses/odbl/1-0": ("Attribution", "ShareAlike"),
}
_LICENCE_TYPE_LABELS: dict[str, str] = {
    "Attribution": "Attribution",
    "ShareAlike": "Share-alike",
    "PublicDomain": "Public domain",
}

PUBLISHER_TYPES: dict[str, str] = {
    "Academia-ScientificOrganisation": "Academia/Scientific organisation",
    "Company": "Company",
    "IndustryConsortium": "Industry consortium",
    "LocalAuthority": "Local authority",
    "NationalAuthority": "National authority",
    "NonGovernmentalOrganisation": "Non-governmental organisation",
    "NonProfitOrganisation": "Non-profit organisation",
    "PrivateIndividual(s)": "Private individual(s)",
    "ProfessionalAssociation": "Professional association",
    "RegionalAuthority": "Regional authority",
    "StandardisationBody": "Standardisation body",
    "SupraNationalAuthority": "Supra-national authority",
}
"""ADMS publisher-type codes accepted for `Publisher.kind`, with their labels."""

# --- sensitive-data vocabularies -------------------------------------------------------------

LEGAL_BASIS_IRIS: dict[LegalBasis, str] = {
    LegalBasis.consent: f"{_DPV_GDPR}A6-1-a",
    LegalBasis.contract: f"{_DPV_GDPR}A6-1-b",
    LegalBasis.legal_obligation: f"{_DPV_GDPR}A6-1-c",
    LegalBasis.vital_interests: f"{_DPV_GDPR}A6-1-d",
    LegalBasis.public_task: f"{_DPV_GDPR}A6-1-e",
    LegalBasis.legitimate_interests: f"{_DPV_GDPR}A6-1-f",
}
"""GDPR Art. 6(1)(a)–(f) as DPV-GDPR terms."""

# Only purposes whose DPV definition plainly covers ours; the others keep their `bulles:` IRI
# alone (DPV's "official statistics" and "public policy making" are narrower than ours).
_DPV_PURPOSES: dict[Purpose, str] = {
    Purpose.research: f"{_DPV}ScientificResearch",
    Purpose.service_improvement: f"{_DPV}ImproveExistingProductsAndServices",
}

_DPV_PERSONAL_DATA: dict[PersonalDataCategory, str] = {
    PersonalDataCategory.identifier: f"{_DPV_PD}Identifier",
    PersonalDataCategory.name: f"{_DPV_PD}Name",
    PersonalDataCategory.birth_date: f"{_DPV_PD}BirthDate",
    PersonalDataCategory.gender: f"{_DPV_PD}Gender",
    PersonalDataCategory.school: f"{_DPV_PD}School",
    PersonalDataCategory.location: f"{_DPV_PD}Location",
    PersonalDataCategory.learning_traces: f"{_DPV_PD}Behavioural",
    PersonalDataCategory.health: f"{_DPV_PD}Health",
    PersonalDataCategory.disability: f"{_DPV_PD}Disability",
}


def purpose_iri(purpose: Purpose) -> str:
    return f"{BULLES_NS}purpose-{purpose.value}"


def personal_data_iri(category: PersonalDataCategory) -> str:
    return _DPV_PERSONAL_DATA.get(category, f"{BULLES_NS}personal-data-{category.value}")


def sensitivity_iri(sensitivity: Sensitivity) -> str:
    return f"{BULLES_NS}sensitivity-{sensitivity.value}"


def access_mode_iri(mode: AccessMode) -> str:
    return f"{BULLES_NS}mode-{mode.value}"


def column_role_iri(role: ColumnRole) -> str:
    return f"{BULLES_NS}role-{role.value}"


# --- publishers ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Publisher:
    """The organisation that owns a source (or runs the catalog), as the store knows it.

    `kind` is an ADMS publisher-type code (see `PUBLISHER_TYPES`); DCAT-AP recommends a type
    on every agent, and the store is the one that knows whether an organisation is an académie,
    a région, a company or a laboratory.
    """

    id: str
    name: str
    homepage: str | None = None
    email: str | None = None
    kind: str | None = None

    def __post_init__(self) -> None:
        if not re.match(ORG_ID, self.id):
            raise ValueError(f"publisher id '{self.id}' is not an organisation id")
        if not self.name.strip():
            raise ValueError(f"publisher '{self.id}' has an empty name")
        if self.homepage is not None and not re.match(r"^https?://\S+$", self.homepage):
            raise ValueError(f"publisher '{self.id}': homepage '{self.homepage}' is not an http(s) URI")
        if self.email is not None and not re.match(r"^[^@\s]+@[^@\s]+$", self.email):
            raise ValueError(f"publisher '{self.id}': '{self.email}' is not an e-mail address")
        if self.kind is not None and self.kind not in PUBLISHER_TYPES:
            raise ValueError(f"publisher '{self.id}': '{self.kind}' is not an ADMS publisher type")


class EntryMeta(TypedDict):
    """What the store adds to a spec for the export."""

    issued: dt.datetime
    modified: dt.datetime
    status: Status


# --- IRIs ------------------------------------------------------------------------------------


def _base(base_uri: str) -> str:
    if not re.match(r"^https?://[^\s?#]+$", base_uri):
        raise ValueError(f"base_uri '{base_uri}' must be an http(s) URI without query or fragment")
    return base_uri.rstrip("/")


def source_uri(base_uri: str, source_id: str) -> str:
    return f"{_base(base_uri)}/api/v1/sources/{source_id}"


def organisation_uri(base_uri: str, organisation_id: str) -> str:
    return f"{_base(base_uri)}/api/v1/organisations/{organisation_id}"


def catalog_uri(base_uri: str) -> str:
    return f"{_base(base_uri)}/api/v1/catalog"


# --- small builders --------------------------------------------------------------------------


def context() -> dict[str, str]:
    """A fresh inline `@context`: prefixes only, so every value states its own type."""
    return dict(_PREFIXES)


def _ref(iri: str) -> JsonLd:
    return {"@id": iri}


def _text(value: str, language: str | None) -> JsonLd | str:
    return {"@value": value, "@language": language} if language else value


def _en(value: str) -> JsonLd:
    return {"@value": value, "@language": "en"}


def _typed(value: str, datatype: str) -> JsonLd:
    return {"@value": value, "@type": datatype}


def _datetime(value: dt.datetime) -> JsonLd:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.timezone.utc)
    text = value.astimezone(dt.timezone.utc).isoformat().replace("+00:00", "Z")
    return _typed(text, "xsd:dateTime")


def _xsd_duration(iso: str) -> JsonLd:
    """The model accepts ISO 8601 weeks (P2W), which xsd:duration lacks: weeks become days."""
    match = re.fullmatch(r"P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?", iso)
    if match is None or iso == "P":
        raise ValueError(f"'{iso}' is not an ISO 8601 duration such as P5Y")
    years, months, weeks, days = match.groups()
    if weeks is not None:
        days = str(int(weeks) * 7 + int(days or 0))
    parts = [f"{value}{unit}" for value, unit in ((years, "Y"), (months, "M"), (days, "D")) if value is not None]
    return _typed("P" + "".join(parts), "xsd:duration")


def _mailto(email: str) -> JsonLd:
    return _ref("mailto:" + quote(email, safe="@!$&'()*+,;=-._~"))


def _scheme(iri: str) -> JsonLd:
    return {"@id": iri, "@type": "skos:ConceptScheme", "dct:title": _en(_SCHEME_TITLES[iri])}


def _concept(iri: str, label: str, scheme: str, *types: str) -> JsonLd:
    return {
        "@id": iri,
        "@type": [*types, "skos:Concept"],
        "skos:prefLabel": _en(label),
        "skos:inScheme": _scheme(scheme),
    }


_LANGUAGE_TAG = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$")


def _language_codes(codes: Sequence[str]) -> list[str]:
    """The model does not check language codes; one that is no BCP 47 tag would make an
    invalid `@language` and an invalid IRI, so it is left out rather than exported broken."""
    return [code for code in codes if _LANGUAGE_TAG.match(code)]


def _language(code: str) -> JsonLd:
    primary = code.split("-")[0].lower()
    eu_code = _LANGUAGES.get(primary)
    if eu_code is None:
        return {"@id": f"http://id.loc.gov/vocabulary/iso639-1/{primary}", "@type": "dct:LinguisticSystem"}
    return {
        "@id": f"{_EU_AUTHORITY}language/{eu_code}",
        "@type": "dct:LinguisticSystem",
        "skos:inScheme": _scheme(f"{_EU_AUTHORITY}language"),
    }


def _location(iri: str) -> JsonLd:
    node: JsonLd = {"@id": iri, "@type": "dct:Location"}
    for table in ("country", "place", "continent"):
        if iri.startswith(f"{_EU_AUTHORITY}{table}/"):
            node["skos:inScheme"] = _scheme(f"{_EU_AUTHORITY}{table}")
    return node


def _licence_key(url: str) -> str:
    key = re.sub(r"^https?://(www\.)?", "", url.strip().lower())
    return key.rstrip("/")


def _licence(url: str) -> JsonLd:
    node: JsonLd = {"@id": url, "@type": "dct:LicenseDocument"}
    kinds = _LICENCE_TYPES.get(_licence_key(url), ())
    if kinds:
        node["dct:type"] = [
            _concept(f"{_ADMS_LICENCE_TYPE}{kind}", _LICENCE_TYPE_LABELS[kind], f"{_ADMS_LICENCE_TYPE}1.0")
            for kind in kinds
        ]
    return node


def _file_format(location: object) -> tuple[str, str] | None:
    file_format = getattr(location, "format", None)
    return _FORMATS.get(file_format) if file_format else None


# --- agents ----------------------------------------------------------------------------------


def publisher_to_dcat(publisher: Publisher, *, base_uri: str) -> JsonLd:
    """The `foaf:Agent` node of an organisation."""
    node: JsonLd = {
        "@id": organisation_uri(base_uri, publisher.id),
        "@type": ["foaf:Agent", "foaf:Organization"],
        "foaf:name": publisher.name,
    }
    if publisher.kind is not None:
        node["dct:type"] = _concept(
            f"{_ADMS_PUBLISHER_TYPE}{publisher.kind}",
            PUBLISHER_TYPES[publisher.kind],
            f"{_ADMS_PUBLISHER_TYPE}1.0",
        )
    if publisher.homepage is not None:
        node["foaf:homepage"] = {"@id": publisher.homepage, "@type": "foaf:Document"}
    if publisher.email is not None:
        node["foaf:mbox"] = _mailto(publisher.email)
    return node


def _agents(publishers: Iterable[Publisher], *, base_uri: str) -> list[JsonLd]:
    """One node per organisation, sorted; two different records under one id is a store bug."""
    by_id: dict[str, Publisher] = {}
    for publisher in publishers:
        known = by_id.setdefault(publisher.id, publisher)
        if known != publisher:
            raise ValueError(f"two different publishers share the id '{publisher.id}'")
    return [publisher_to_dcat(by_id[key], base_uri=base_uri) for key in sorted(by_id)]


# --- datasets --------------------------------------------------------------------------------


def _column(column: Column, index: int, dataset: str, language: str | None) -> JsonLd:
    node: JsonLd = {
        "@id": f"{dataset}#column-{index}",
        "@type": "csvw:Column",
        "csvw:name": column.name,
        "bulles:columnType": column.type.value,
        "bulles:columnRole": _ref(column_role_iri(column.role)),
    }
    if column.description is not None:
        node["dct:description"] = _text(column.description, language)
    hint = column.generalisation
    if hint is not None:
        generalisation: JsonLd = {
            "@id": f"{dataset}#column-{index}-generalisation",
            "@type": "bulles:GeneralisationHint",
            "bulles:generaliseTo": _ref(f"{BULLES_NS}generalisation-{hint.to.value}"),
        }
        if hint.width is not None:
            generalisation["bulles:bandWidth"] = _typed(str(hint.width), "xsd:positiveInteger")
        if hint.min_count is not None:
            generalisation["bulles:minCount"] = _typed(str(hint.min_count), "xsd:positiveInteger")
        node["bulles:generalisation"] = generalisation
    return node


def _distribution(spec: SourceSpec, dataset: str, status: Status) -> JsonLd:
    modes = ", ".join(mode.value for mode in spec.access_modes)
    code, label = _DISTRIBUTION_STATUS[status]
    node: JsonLd = {
        "@id": f"{dataset}#distribution",
        "@type": "dcat:Distribution",
        # Access is always mediated by the platform, so the access URL is the source's own
        # platform URL and there is deliberately no dcat:downloadURL.
        "dcat:accessURL": _ref(dataset),
        "dct:description": _en(
            f"Served only through the bulles platform, as a view in one of the access modes the "
            f"provider allows ({modes}); request access at the access URL."
        ),
    }
    file_format = _file_format(spec.connector)
    if file_format is not None:
        media_type, file_type = file_format
        node["dcat:mediaType"] = {"@id": f"{_IANA_MEDIA_TYPES}{media_type}", "@type": "dct:MediaType"}
        node["dct:format"] = {
            "@id": f"{_EU_AUTHORITY}file-type/{file_type}",
            "@type": "dct:MediaTypeOrExtent",
            "skos:inScheme": _scheme(f"{_EU_AUTHORITY}file-type"),
        }
    if spec.licence is not None:
        node["dct:license"] = _licence(spec.licence)
    node["adms:status"] = _concept(
        f"{_EU_AUTHORITY}distribution-status/{code}", label, f"{_EU_AUTHORITY}distribution-status"
    )
    if status == "active":
        node["dcatap:availability"] = _concept(
            f"{_EU_AUTHORITY}planned-availability/AVAILABLE", "Available", f"{_EU_AUTHORITY}planned-availability"
        )
    return node


def _check_status(status: str) -> Status:
    if status not in STATUSES:
        raise ValueError(f"status '{status}' is not one of {', '.join(STATUSES)}")
    return status  # type: ignore[return-value]


def source_to_dcat(
    spec: SourceSpec,
    *,
    publisher: Publisher,
    base_uri: str,
    issued: dt.datetime,
    modified: dt.datetime,
    status: str,
) -> JsonLd:
    """The `dcat:Dataset` node of one source, its distribution inline, its publisher by reference.

    The publisher's own node is left to the enclosing document so that a catalog describes each
    organisation once however many sources it publishes.
    """
    state = _check_status(status)
    if publisher.id != spec.publisher:
        raise ValueError(f"source '{spec.id}' is published by '{spec.publisher}', not '{publisher.id}'")
    dataset = source_uri(base_uri, spec.id)
    languages = _language_codes(spec.language)
    language = languages[0] if languages else None

    node: JsonLd = {
        "@id": dataset,
        "@type": "dcat:Dataset",
        "dct:identifier": spec.id,
        "dct:title": _text(spec.title, language),
        "dct:description": _text(spec.description, language),
        "dct:publisher": _ref(organisation_uri(base_uri, publisher.id)),
        "dcat:contactPoint": {
            "@id": f"{dataset}#contact-point",
            "@type": "vcard:Kind",
            "vcard:fn": spec.contact_point.name,
            "vcard:hasEmail": _mailto(str(spec.contact_point.email)),
        },
        "dct:issued": _datetime(issued),
        "dct:modified": _datetime(modified),
    }
    if spec.keywords:
        node["dcat:keyword"] = [_text(keyword, language) for keyword in spec.keywords]
    if spec.themes:
        node["dcat:theme"] = [
            _concept(f"{_EU_AUTHORITY}data-theme/{theme.value}", _THEME_LABELS[theme], f"{_EU_AUTHORITY}data-theme")
            for theme in spec.themes
        ]
    if languages:
        node["dct:language"] = [_language(code) for code in languages]
    node["dct:accessRights"] = _concept(
        f"{_EU_AUTHORITY}access-right/{spec.access_rights.value}",
        _ACCESS_RIGHT_LABELS[spec.access_rights],
        f"{_EU_AUTHORITY}access-right",
        "dct:RightsStatement",
    )
    if spec.applicable_legislation:
        node["dcatap:applicableLegislation"] = [
            {"@id": iri, "@type": "eli:LegalResource"} for iri in spec.applicable_legislation
        ]
    if spec.landing_page is not None:
        node["dcat:landingPage"] = {"@id": spec.landing_page, "@type": "foaf:Document"}
    if spec.provenance is not None:
        node["dct:provenance"] = {
            "@id": f"{dataset}#provenance",
            "@type": "dct:ProvenanceStatement",
            "rdfs:label": _text(spec.provenance, language),
        }
    temporal = spec.temporal
    if temporal is not None and (temporal.start is not None or temporal.end is not None):
        period: JsonLd = {"@id": f"{dataset}#temporal", "@type": "dct:PeriodOfTime"}
        if temporal.start is not None:
            period["dcat:startDate"] = _typed(temporal.start.isoformat(), "xsd:date")
        if temporal.end is not None:
            period["dcat:endDate"] = _typed(temporal.end.isoformat(), "xsd:date")
        node["dct:temporal"] = period
    if spec.spatial:
        node["dct:spatial"] = [_location(iri) for iri in spec.spatial]

    # Sensitive-data fields (HealthDCAT-AP style).
    if spec.legal_basis is not None:
        node["dpv:hasLegalBasis"] = _ref(LEGAL_BASIS_IRIS[spec.legal_basis])
    if spec.allowed_purposes:
        purposes: list[JsonLd] = []
        for purpose in spec.allowed_purposes:
            purposes.append(_ref(purpose_iri(purpose)))
            if purpose in _DPV_PURPOSES and _ref(_DPV_PURPOSES[purpose]) not in purposes:
                purposes.append(_ref(_DPV_PURPOSES[purpose]))
        node["dpv:hasPurpose"] = purposes
    if spec.personal_data_categories:
        node["dpv:hasPersonalData"] = [_ref(personal_data_iri(c)) for c in spec.personal_data_categories]
    if spec.number_of_records is not None:
        node["healthdcatap:numberOfRecords"] = _typed(str(spec.number_of_records), "xsd:nonNegativeInteger")
    if spec.retention is not None:
        node["bulles:retention"] = _xsd_duration(spec.retention)

    # Platform fields.
    node["bulles:status"] = state
    node["bulles:sensitivity"] = _ref(sensitivity_iri(spec.sensitivity))
    node["bulles:accessMode"] = [_ref(access_mode_iri(mode)) for mode in spec.access_modes]
    node["bulles:site"] = spec.site
    node["bulles:schema"] = {
        "@id": f"{dataset}#schema",
        "@type": "csvw:Schema",
        "csvw:column": {
            "@list": [_column(column, index, dataset, language) for index, column in enumerate(spec.schema_)]
        },
    }
    node["dcat:distribution"] = [_distribution(spec, dataset, state)]
    return node


def source_document(
    spec: SourceSpec,
    *,
    publisher: Publisher,
    base_uri: str,
    issued: dt.datetime,
    modified: dt.datetime,
    status: str,
) -> JsonLd:
    """A standalone JSON-LD document for one source: its dataset node and its publisher."""
    dataset = source_to_dcat(
        spec, publisher=publisher, base_uri=base_uri, issued=issued, modified=modified, status=status
    )
    return {"@context": context(), "@graph": [dataset, *_agents([publisher], base_uri=base_uri)]}


def _entry_meta(spec: SourceSpec, meta: dict[str, Any]) -> EntryMeta:
    missing = [key for key in ("issued", "modified", "status") if key not in meta]
    if missing:
        raise ValueError(f"catalog entry '{spec.id}' lacks {', '.join(missing)}")
    for key in ("issued", "modified"):
        if not isinstance(meta[key], dt.datetime):
            raise ValueError(f"catalog entry '{spec.id}': '{key}' must be a datetime")
    return EntryMeta(issued=meta["issued"], modified=meta["modified"], status=_check_status(meta["status"]))


def _utc(value: dt.datetime) -> dt.datetime:
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


def catalog_to_dcat(
    entries: Sequence[tuple[SourceSpec, Publisher, dict[str, Any]]],
    *,
    base_uri: str,
    title: str,
    description: str,
    publisher: Publisher,
    language: str = "fr",
    homepage: str | None = None,
    issued: dt.datetime | None = None,
    modified: dt.datetime | None = None,
    licence: str | None = None,
    spatial: Sequence[str] = (),
) -> JsonLd:
    """The whole catalog: a `dcat:Catalog`, every dataset (sorted by id) and every agent.

    Entries are sorted so that the document does not depend on the order the store returned
    them in. `modified` defaults to the latest modification among the entries; `homepage` to the
    platform's root. `licence` is the licence of the catalog metadata itself.
    """
    if not title.strip() or not description.strip():
        raise ValueError("a catalog needs a title and a description")
    if not _language_codes([language]):
        raise ValueError(f"'{language}' is not a language tag such as 'fr'")
    ordered = sorted(entries, key=lambda entry: entry[0].id)
    datasets: list[JsonLd] = []
    last_modified: dt.datetime | None = None
    for index, (spec, owner, raw_meta) in enumerate(ordered):
        if index and ordered[index - 1][0].id == spec.id:
            raise ValueError(f"source '{spec.id}' appears twice in the catalog")
        meta = _entry_meta(spec, raw_meta)
        datasets.append(
            source_to_dcat(
                spec,
                publisher=owner,
                base_uri=base_uri,
                issued=meta["issued"],
                modified=meta["modified"],
                status=meta["status"],
            )
        )
        entry_modified = _utc(meta["modified"])
        if last_modified is None or entry_modified > last_modified:
            last_modified = entry_modified
    if modified is None:
        modified = last_modified

    node: JsonLd = {
        "@id": catalog_uri(base_uri),
        "@type": "dcat:Catalog",
        "dct:title": _text(title, language),
        "dct:description": _text(description, language),
        "dct:publisher": _ref(organisation_uri(base_uri, publisher.id)),
        "foaf:homepage": {"@id": homepage or f"{_base(base_uri)}/", "@type": "foaf:Document"},
        "dct:language": [_language(language)],
        "dcat:themeTaxonomy": _scheme(f"{_EU_AUTHORITY}data-theme"),
    }
    if issued is not None:
        node["dct:issued"] = _datetime(issued)
    if modified is not None:
        node["dct:modified"] = _datetime(modified)
    if licence is not None:
        node["dct:license"] = _licence(licence)
    if spatial:
        node["dct:spatial"] = [_location(iri) for iri in spatial]
    node["dcat:dataset"] = [_ref(dataset["@id"]) for dataset in datasets]

    agents = _agents([publisher, *(owner for _, owner, _ in ordered)], base_uri=base_uri)
    return {"@context": context(), "@graph": [node, *datasets, *agents]}
