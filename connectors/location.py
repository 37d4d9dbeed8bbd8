"""Where a source lives, one shape per warehouse kind.

The catalog stores locations, never credentials: secrets for S3 or PostgreSQL come from the
site's configuration or environment (`credentials` only names which set to use), so a catalog
entry can be shown to anyone who may see the catalog.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from catalog.fields import Line, Text
from catalog.vocab import HTTP_IRI

FileFormat = Literal["parquet", "csv", "json"]
_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


class _Location(BaseModel):
    model_config = ConfigDict(extra="forbid")


class S3Location(_Location):
    kind: Literal["s3"]
    endpoint: Line | None = Field(None, max_length=2000, description="Endpoint URL; the site default when absent")
    bucket: str = Field(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    key: Line | None = Field(None, min_length=1, max_length=1024, description="One object")
    prefix: Line | None = Field(None, min_length=1, max_length=1024, description="Every object under a prefix")
    format: FileFormat = "parquet"
    credentials: str | None = Field(None, pattern=_NAME, description="Name of a credential set")

    @model_validator(mode="after")
    def _one_of_key_or_prefix(self) -> "S3Location":
        if (self.key is None) == (self.prefix is None):
            raise ValueError("give exactly one of 'key' or 'prefix'")
        return self


class PostgresqlLocation(_Location):
    kind: Literal["postgresql"]
    database: str = Field(pattern=_NAME, description="Name of a database declared by the site")
    table: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)?$")
    query: Text | None = Field(None, min_length=1, max_length=100_000, description="A read-only SELECT")

    @model_validator(mode="after")
    def _one_of_table_or_query(self) -> "PostgresqlLocation":
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        if self.query is not None and not self.query.lstrip().lower().startswith(("select", "with")):
            raise ValueError("'query' must be a read-only SELECT")
        return self


class HttpLocation(_Location):
    kind: Literal["http"]
    url: Line = Field(pattern=HTTP_IRI, max_length=2000)
    format: FileFormat = "csv"


class FileLocation(_Location):
    """A file under one of the site's declared roots, never an arbitrary host path."""

    kind: Literal["file"]
    root: str = Field("warehouse", pattern=_NAME, description="Name of a root declared by the site")
    path: Line = Field(min_length=1, max_length=4096, description="Relative to the root; no '..'")
    format: FileFormat = "csv"

    @model_validator(mode="after")
    def _confined(self) -> "FileLocation":
        parts = self.path.replace("\\", "/").split("/")
        if self.path.startswith("/") or ".." in parts:
            raise ValueError("'path' must be relative to its root and must not contain '..'")
        return self


Location = Annotated[
    Union[S3Location, PostgresqlLocation, HttpLocation, FileLocation],
    Field(discriminator="kind"),
]
