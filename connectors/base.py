"""The connector interface: what every warehouse kind offers the platform.

A connector is built from a catalog entry (where the data lives) plus the site's secrets (how to
get in); it never sees credentials from the catalog. `scan` streams Arrow record batches so
that memory does not grow with the size of the source: views, transforms and benchmarks all
consume batches.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import pyarrow as pa

from catalog.vocab import ColumnType

BATCH_ROWS = 65_536

ARROW_TYPES: dict[ColumnType, pa.DataType] = {
    ColumnType.string: pa.string(),
    ColumnType.int64: pa.int64(),
    ColumnType.float64: pa.float64(),
    ColumnType.boolean: pa.bool_(),
    ColumnType.date: pa.date32(),
    ColumnType.timestamp: pa.timestamp("us"),
}


# A source that can be read again from the start: transforms needing several passes (class
# counts, then output) call it once per pass instead of holding the data.
Scan = Callable[[], Iterator[pa.RecordBatch]]


# What anyone may be told of each failure: the problem, never where or what (no bucket, key,
# endpoint, host, path, database, table, nor a value read). A raise that gives no public text
# of its own gets this one, so a new error cannot leak by omission.
PUBLIC: dict[str, str] = {
    "unreachable": "the warehouse could not be reached",
    "unauthorised": "the warehouse refused the site's credentials",
    "not_found": "the data was not found in the warehouse",
    "unknown_column": "a requested column is not in the source",
    "schema_mismatch": "the warehouse's content does not match the declared schema",
    "empty": "the source holds no rows",
    "invalid_location": "the source's location is refused",
    "untrusted": "the warehouse's TLS certificate is not trusted",
    "unsupported": "no connector reads this kind of location",
    "location_refused": "the source's location is not one its organisation may use on this site",
}

log = logging.getLogger("bulles.warehouse")


class ConnectorError(Exception):
    """A warehouse problem, reported with the source it concerns and a stable code.

    It carries two texts. `detail` says everything (the bucket and key, the endpoint, the
    warehouse's own words, the value that did not convert): it is for the server log and for
    those who may see where the source lives (its organisation's providers, admins). `public`
    names only the problem (and a column, which the catalog shows anyway); `str()` gives the
    public text, so whatever prints an error without choosing shows the safe one. Each error
    gets an incident id, logged with the detail, that the public text quotes: someone told
    only the public text can give it to those who can look the detail up.

    Codes: unreachable, unauthorised, not_found, unknown_column, schema_mismatch, empty,
    invalid_location, untrusted (TLS), unsupported, location_refused (not its organisation's).
    """

    def __init__(self, source: str, code: str, detail: str, *, public: str | None = None,
                 field: str | None = None) -> None:
        self.source, self.code, self.detail, self.field = source, code, detail, field
        self.public = public or PUBLIC.get(code, "the warehouse failed")
        self.incident = secrets.token_hex(6)
        super().__init__(f"source '{source}': {self.public} (incident {self.incident})")
        log.warning("incident %s: source '%s': %s: %s", self.incident, source, code, detail)

    def locate(self, where: str) -> "ConnectorError":
        """Add where it happened to the detail: the format readers see bytes, their connector
        knows the object or file they come from."""
        self.detail = f"{where}: {self.detail}"
        log.warning("incident %s: in %s", self.incident, where)
        return self

    @property
    def full(self) -> str:
        """The detailed text, for those who may read it."""
        return f"source '{self.source}': {self.detail}"


class DataError(Exception):
    """Content a transform cannot publish as its mode requires, with a stable code.

    Raised by the transforms, which do not know the source's name: the view adds it. Unlike a
    bug, this is the data's doing (a dimension value that margins use, a source changed between
    two passes), so the caller gets a 409 with the code rather than a 500.

    Codes: reserved_value, source_changed, all_suppressed.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(frozen=True)
class Probe:
    """What a cheap look at the warehouse tells: the schema found and how many rows, roughly."""

    schema: pa.Schema
    rows: int | None  # None when the warehouse cannot tell without reading everything
    exact: bool = False


class Connector(Protocol):
    source_id: str

    def probe(self) -> Probe:
        """Reachability, schema and a row estimate, without reading the data."""
        ...

    def scan(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """The chosen columns (all when None), in batches, typed as the catalog declares."""
        ...


def declared_schema(columns: Sequence[tuple[str, ColumnType]]) -> pa.Schema:
    return pa.schema([pa.field(name, ARROW_TYPES[kind]) for name, kind in columns])


def check_columns(source: str, wanted: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """The columns to read, or a ConnectorError naming the ones the source does not have."""
    if wanted is None:
        return list(available)
    missing = [c for c in wanted if c not in available]
    if missing:
        names = ", ".join(repr(c) for c in missing)
        raise ConnectorError(source, "unknown_column", f"no column {names}", public=f"no column {names}")
    return list(wanted)
