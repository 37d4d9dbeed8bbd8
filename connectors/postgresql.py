"""A PostgreSQL table or read-only query, streamed through a server-side cursor.

The connection is opened read-only (`default_transaction_read_only`) so that a provider's query
cannot write, whatever it says; rows arrive `batch_rows` at a time and become Arrow arrays of
the declared types.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import psycopg
import pyarrow as pa
from psycopg import sql

from connectors.base import BATCH_ROWS, ConnectorError, Probe, check_columns
from connectors.location import PostgresqlLocation

_UNDEFINED_COLUMN = re.compile(r'column "([^"]+)" does not exist')

_PG_TO_ARROW = {
    "int2": pa.int64(), "int4": pa.int64(), "int8": pa.int64(), "float4": pa.float64(), "float8": pa.float64(),
    "numeric": pa.float64(), "text": pa.string(), "varchar": pa.string(), "bpchar": pa.string(), "bool": pa.bool_(),
    "date": pa.date32(), "timestamp": pa.timestamp("us"), "timestamptz": pa.timestamp("us", tz="UTC"),
}


class PostgresqlConnector:
    def __init__(self, source_id: str, location: PostgresqlLocation, url: str, declared: pa.Schema) -> None:
        self.source_id, self.location, self.url, self.declared = source_id, location, url, declared

    def _connect(self) -> psycopg.Connection:
        try:
            return psycopg.connect(self.url, connect_timeout=10, autocommit=False,
                                   options="-c default_transaction_read_only=on -c statement_timeout=0")
        except psycopg.OperationalError as exc:
            text = str(exc)
            if "authentication failed" in text or "not permitted to log in" in text or (
                    "role" in text and "does not exist" in text):
                raise ConnectorError(self.source_id, "unauthorised", f"database '{self.location.database}' "
                                                                    "refused the site's credentials") from None
            if "database" in text and "does not exist" in text:
                raise ConnectorError(self.source_id, "not_found", f"database '{self.location.database}' does not exist",
                                     public="the source's database does not exist") from None
            raise ConnectorError(self.source_id, "unreachable",
                                 f"cannot reach database '{self.location.database}': {text.splitlines()[0]}") from None

    def _relation(self) -> sql.Composable:
        if self.location.table is not None:
            return sql.Identifier(*self.location.table.split("."))
        return sql.SQL("({}) AS bulles_source").format(sql.SQL(self.location.query))

    def _select(self, columns: Sequence[str]) -> sql.Composed:
        return sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(map(sql.Identifier, columns)), self._relation())

    def _query_error(self, exc: psycopg.Error) -> ConnectorError:
        if isinstance(exc, psycopg.errors.UndefinedTable):
            return ConnectorError(self.source_id, "not_found", f"no table {self.location.table or 'in the query'} in "
                                  f"database '{self.location.database}': {str(exc).splitlines()[0]}",
                                  public="the source's table does not exist")
        if isinstance(exc, psycopg.errors.UndefinedColumn):
            # Named publicly only when it is a declared column (the catalog shows those anyway).
            named = _UNDEFINED_COLUMN.search(str(exc))
            column = named.group(1) if named and named.group(1) in self.declared.names else None
            public = f"the warehouse lacks declared column '{column}'" if column else "the warehouse lacks a declared column"
            return ConnectorError(self.source_id, "schema_mismatch", f"the warehouse lacks a declared column: "
                                                                    f"{str(exc).splitlines()[0]}", public=public)
        if isinstance(exc, psycopg.errors.InsufficientPrivilege):
            return ConnectorError(self.source_id, "unauthorised", f"the site's role in database "
                                  f"'{self.location.database}' may not read this source: {str(exc).splitlines()[0]}",
                                  public="the site's database role may not read this source")
        if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction):
            return ConnectorError(self.source_id, "invalid_location", "the source's query tries to write",
                                  public="the source's query tries to write")
        if isinstance(exc, psycopg.OperationalError):
            return ConnectorError(self.source_id, "unreachable", f"query failed: {str(exc).splitlines()[0]}")
        return ConnectorError(self.source_id, "invalid_location", f"the source's query is refused: "
                                                                 f"{str(exc).splitlines()[0]}",
                              public="the warehouse refuses the source's query")

    def probe(self) -> Probe:
        with self._connect() as conn, conn.cursor() as cur:
            try:
                cur.execute(sql.SQL("SELECT * FROM {} LIMIT 0").format(self._relation()))
                fields = [pa.field(d.name, _PG_TO_ARROW.get(conn.adapters.types.get(d.type_code).name
                                                         if conn.adapters.types.get(d.type_code) else "", pa.string()))
                          for d in cur.description]
                if self.location.table is not None:
                    cur.execute("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass(%s)", (self.location.table,))
                    estimate = cur.fetchone()[0]
                    rows = None if estimate is None or estimate < 0 else int(estimate)
                else:
                    cur.execute(sql.SQL("EXPLAIN (FORMAT JSON) SELECT * FROM {}").format(self._relation()))
                    rows = int(cur.fetchone()[0][0]["Plan"]["Plan Rows"])
            except psycopg.Error as exc:
                raise self._query_error(exc) from None
        return Probe(pa.schema(fields), rows)

    def scan(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        chosen = check_columns(self.source_id, columns, self.declared.names)
        target = pa.schema([self.declared.field(c) for c in chosen])
        with self._connect() as conn:
            try:
                with conn.cursor(name="bulles_scan") as cur:
                    cur.itersize = batch_rows
                    cur.execute(self._select(chosen))
                    while rows := cur.fetchmany(batch_rows):
                        yield self._batch(rows, target)
            except psycopg.Error as exc:
                raise self._query_error(exc) from None

    def _batch(self, rows: list[tuple], target: pa.Schema) -> pa.RecordBatch:
        arrays = []
        for index, field in enumerate(target):
            values = [row[index] for row in rows]
            if pa.types.is_floating(field.type):  # numeric arrives as Decimal
                values = [None if v is None else float(v) for v in values]
            try:
                arrays.append(pa.array(values, type=field.type))
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
                summary = f"column '{field.name}' holds values that are not {field.type}"
                raise ConnectorError(self.source_id, "schema_mismatch", f"{summary}: {str(exc).splitlines()[0]}",
                                     public=summary) from None
        return pa.RecordBatch.from_arrays(arrays, schema=target)
