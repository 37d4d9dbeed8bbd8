"""The connector interface: what every warehouse kind offers the platform.

A connector is built from a catalog entry (where the data lives) plus the site's secrets (how to
get in); it never sees credentials from the catalog. `scan` streams Arrow record batches so
that memory does not grow with the size of the source: views, transforms and benchmarks all
consume batches.
"""

from __future__ import annotations

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


class ConnectorError(Exception):
    """A warehouse problem, reported with the source it concerns and a stable code.

    Codes: unreachable, unauthorised, not_found, unknown_column, schema_mismatch, empty,
    invalid_location, untrusted (TLS), unsupported.
    """

    def __init__(self, source: str, code: str, message: str) -> None:
        super().__init__(f"source '{source}': {message}")
        self.source, self.code, self.message = source, code, message


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
        raise ConnectorError(source, "unknown_column", f"no column {', '.join(repr(c) for c in missing)}")
    return list(wanted)
