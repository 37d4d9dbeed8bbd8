"""Controlled vocabularies shared by the catalog, the policies and the API.

They are closed enumerations on purpose: a purpose or an access mode that the policies do not
know about must be refused at the door rather than silently treated as something else.
"""

from __future__ import annotations

from enum import StrEnum


class Sensitivity(StrEnum):
    open = "open"
    internal = "internal"
    personal = "personal"
    sensitive = "sensitive"


class AccessRights(StrEnum):
    """DCAT-AP access-right authority codes."""

    PUBLIC = "PUBLIC"
    RESTRICTED = "RESTRICTED"
    NON_PUBLIC = "NON_PUBLIC"


class Purpose(StrEnum):
    research = "research"
    public_policy_evaluation = "public_policy_evaluation"
    statistics = "statistics"
    service_improvement = "service_improvement"
    teaching = "teaching"


class AccessMode(StrEnum):
    """The continuum, from the most open to the most closed form of a source."""

    raw = "raw"
    minimised = "minimised"
    pseudonymised = "pseudonymised"
    generalised = "generalised"
    aggregated = "aggregated"
    synthetic = "synthetic"


class LegalBasis(StrEnum):
    """GDPR article 6(1) bases."""

    consent = "consent"
    contract = "contract"
    legal_obligation = "legal_obligation"
    vital_interests = "vital_interests"
    public_task = "public_task"
    legitimate_interests = "legitimate_interests"


class ColumnRole(StrEnum):
    identifier = "identifier"
    quasi_identifier = "quasi_identifier"
    sensitive = "sensitive"
    attribute = "attribute"


class ColumnType(StrEnum):
    string = "string"
    int64 = "int64"
    float64 = "float64"
    boolean = "boolean"
    date = "date"
    timestamp = "timestamp"


class Generalisation(StrEnum):
    """Hints the generalised mode applies to a column (see the connectors issue)."""

    year = "year"  # date -> year
    month = "month"  # date -> year-month
    departement = "departement"  # commune INSEE code -> département
    band = "band"  # number -> band of `width`
    rare_to_other = "rare_to_other"  # categories under `min_count` -> "other"


class ConnectorKind(StrEnum):
    s3 = "s3"
    postgresql = "postgresql"
    http = "http"
    file = "file"


class PersonalDataCategory(StrEnum):
    identifier = "identifier"
    name = "name"
    birth_date = "birth_date"
    gender = "gender"
    school = "school"
    location = "location"
    socio_economic = "socio_economic"
    attendance = "attendance"
    academic_results = "academic_results"
    learning_traces = "learning_traces"
    health = "health"
    disability = "disability"
    social_aid = "social_aid"


class Theme(StrEnum):
    """EU data-theme authority codes (publications.europa.eu/resource/authority/data-theme)."""

    AGRI = "AGRI"
    ECON = "ECON"
    EDUC = "EDUC"
    ENER = "ENER"
    ENVI = "ENVI"
    GOVE = "GOVE"
    HEAL = "HEAL"
    INTR = "INTR"
    JUST = "JUST"
    OP_DATPRO = "OP_DATPRO"
    REGI = "REGI"
    SOCI = "SOCI"
    TECH = "TECH"
    TRAN = "TRAN"


class Role(StrEnum):
    provider = "provider"
    researcher = "researcher"
    reviewer = "reviewer"
    auditor = "auditor"
    admin = "admin"


# http(s) IRIs without the characters RFC 3987 forbids (spaces, <>"{}|\^`).
HTTP_IRI = r"^https?://[^\s<>\"{}|\\^`]+$"

PERSONAL_SENSITIVITIES = frozenset({Sensitivity.personal, Sensitivity.sensitive})
