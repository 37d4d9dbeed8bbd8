"""A source as a provider declares it: DCAT-AP fields, sensitive-data fields and the schema.

`SourceSpec` is what a provider writes (YAML file or API body). Every rule that ties fields
together lives here, so that the API, the CLI and the demo seeding refuse the same things with
the same field names.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from catalog.fields import Line, Text
from catalog.vocab import (
    HTTP_IRI,
    PERSONAL_SENSITIVITIES,
    AccessMode,
    AccessRights,
    ColumnRole,
    ColumnType,
    Generalisation,
    LegalBasis,
    PersonalDataCategory,
    Purpose,
    Sensitivity,
    Theme,
)
from connectors.location import Location

SOURCE_ID = r"^[a-z0-9][a-z0-9._-]{1,62}[a-z0-9]$"
ORG_ID = r"^[a-z0-9][a-z0-9._-]{0,62}[a-z0-9]$"
# ISO 8601 durations as used for retention periods (P5Y, P18M, P30D, P1Y6M, P6W); weeks
# stand alone, as ISO 8601 says.
_DURATION = re.compile(r"^P((?!$)(\d+Y)?(\d+M)?(\d+D)?|\d+W)$")
GDPR = "http://data.europa.eu/eli/reg/2016/679/oj"
# Domain bounds on the numbers a document holds: far beyond any real source, well inside what a
# 64-bit integer, canonical JSON and the policies can hold.
MAX_RECORDS = 10**15
MAX_HINT = 10**9


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class GeneralisationHint(_Strict):
    to: Generalisation
    width: int | None = Field(None, ge=1, le=MAX_HINT, description="Band width, for 'band'")
    min_count: int | None = Field(None, ge=1, le=MAX_HINT, description="Rarity threshold, for 'rare_to_other'")

    @model_validator(mode="after")
    def _parameters(self) -> "GeneralisationHint":
        if self.to is Generalisation.band and self.width is None:
            raise ValueError("'band' needs 'width'")
        if self.to is not Generalisation.band and self.width is not None:
            raise ValueError("'width' only applies to 'band'")
        if self.to is not Generalisation.rare_to_other and self.min_count is not None:
            raise ValueError("'min_count' only applies to 'rare_to_other'")
        return self


class Column(_Strict):
    name: Line = Field(min_length=1, max_length=128)
    type: ColumnType
    role: ColumnRole = ColumnRole.attribute
    description: Text | None = Field(None, max_length=2000)
    generalisation: GeneralisationHint | None = None

    @model_validator(mode="after")
    def _hint_fits(self) -> "Column":
        hint = self.generalisation
        if hint is None:
            return self
        if self.role in (ColumnRole.identifier, ColumnRole.sensitive):
            raise ValueError(f"a {self.role} column is never generalised, only dropped or pseudonymised")
        if hint.to in (Generalisation.year, Generalisation.month) and self.type not in (
            ColumnType.date,
            ColumnType.timestamp,
        ):
            raise ValueError(f"'{hint.to}' needs a date or timestamp column, not {self.type}")
        if hint.to is Generalisation.band and self.type not in (ColumnType.int64, ColumnType.float64):
            raise ValueError(f"'band' needs a numeric column, not {self.type}")
        if hint.to in (Generalisation.departement, Generalisation.rare_to_other) and self.type is not ColumnType.string:
            raise ValueError(f"'{hint.to}' needs a string column, not {self.type}")
        return self


class ContactPoint(_Strict):
    name: Line = Field(min_length=1, max_length=200)
    email: EmailStr


class Temporal(_Strict):
    start: dt.date | None = None
    end: dt.date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> "Temporal":
        if self.start is None and self.end is None:
            raise ValueError("give 'start', 'end' or both")
        if self.start and self.end and self.end < self.start:
            raise ValueError("'end' is before 'start'")
        return self


class SourceSpec(_Strict):
    """What a provider registers. `publisher` is the owning organisation's id."""

    id: str = Field(pattern=SOURCE_ID, description="Stable identifier, lowercase")
    title: Line = Field(min_length=1, max_length=300)
    description: Text = Field(min_length=1, max_length=20000)
    publisher: str = Field(pattern=ORG_ID)
    contact_point: ContactPoint
    keywords: list[Line] = Field(default_factory=list, max_length=50)
    themes: list[Theme] = Field(default_factory=list, max_length=20)
    language: list[str] = Field(default_factory=lambda: ["fr"], min_length=1, max_length=30)
    access_rights: AccessRights
    applicable_legislation: list[Line] = Field(default_factory=list, max_length=50)
    licence: Line | None = Field(None, pattern=HTTP_IRI, max_length=2000)
    landing_page: Line | None = Field(None, pattern=HTTP_IRI, max_length=2000)
    provenance: Text | None = Field(None, max_length=4000)
    temporal: Temporal | None = None
    spatial: list[Line] = Field(default_factory=list, max_length=50)
    sensitivity: Sensitivity
    legal_basis: LegalBasis | None = None
    allowed_purposes: list[Purpose] = Field(default_factory=list)
    access_modes: list[AccessMode] = Field(min_length=1)
    personal_data_categories: list[PersonalDataCategory] = Field(default_factory=list)
    retention: Line | None = Field(None, max_length=40, description="ISO 8601 duration, e.g. P5Y")
    number_of_records: int | None = Field(None, ge=0, le=MAX_RECORDS)
    schema_: list[Column] = Field(alias="schema", min_length=1, max_length=2000)
    connector: Location
    site: str = Field("local", pattern=ORG_ID)

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        cleaned = [k.strip() for k in value]
        if any(not k or len(k) > 100 for k in cleaned):
            raise ValueError("keywords must be 1 to 100 characters")
        return cleaned

    @field_validator("applicable_legislation", "spatial")
    @classmethod
    def _uris(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.match(HTTP_IRI, item):
                raise ValueError(f"'{item}' is not an http(s) IRI")
        return value

    @field_validator("language")
    @classmethod
    def _languages(cls, value: list[str]) -> list[str]:
        for item in value:
            if not re.fullmatch(r"[a-z]{2}", item):
                raise ValueError(f"'{item}' is not an ISO 639-1 code such as 'fr' or 'en'")
        return value

    @field_validator("retention")
    @classmethod
    def _retention(cls, value: str | None) -> str | None:
        if value is not None and not _DURATION.match(value):
            raise ValueError(f"'{value}' is not an ISO 8601 duration such as P5Y or P18M")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "SourceSpec":
        seen: dict[str, int] = {}
        for index, column in enumerate(self.schema_):
            if column.name in seen:
                raise FieldError(f"schema.{index}.name", f"duplicate column name '{column.name}'")
            seen[column.name] = index
        personal = self.sensitivity in PERSONAL_SENSITIVITIES
        if personal:
            if self.legal_basis is None:
                raise FieldError("legal_basis", f"a {self.sensitivity} source needs a legal basis")
            if not self.personal_data_categories:
                raise FieldError(
                    "personal_data_categories",
                    f"a {self.sensitivity} source must list its personal data categories",
                )
            if self.access_rights is AccessRights.PUBLIC:
                raise FieldError("access_rights", f"a {self.sensitivity} source cannot be PUBLIC")
            if not self.allowed_purposes:
                raise FieldError("allowed_purposes", f"a {self.sensitivity} source must list allowed purposes")
            if GDPR not in self.applicable_legislation:
                raise FieldError("applicable_legislation", f"a {self.sensitivity} source falls under the GDPR ({GDPR})")
        if self.sensitivity is Sensitivity.internal and self.access_rights is AccessRights.PUBLIC:
            raise FieldError("access_rights", "an internal source is not PUBLIC")
        if self.sensitivity is Sensitivity.open:
            if self.access_rights is not AccessRights.PUBLIC:
                raise FieldError("access_rights", "an open source is PUBLIC")
            if self.licence is None:
                raise FieldError("licence", "an open source states its licence")
            for index, column in enumerate(self.schema_):
                if column.role in (ColumnRole.identifier, ColumnRole.sensitive):
                    raise FieldError(
                        f"schema.{index}.role",
                        f"an open source cannot hold a {column.role} column ('{column.name}')",
                    )
        return self

    def columns_by_role(self, role: ColumnRole) -> list[str]:
        return [c.name for c in self.schema_ if c.role is role]

    def document(self) -> dict[str, Any]:
        """The JSON form stored and returned by the API (aliases, no None noise)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class FieldError(ValueError):
    """A cross-field rule broken at a known place; the API reports `field` as the location."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
