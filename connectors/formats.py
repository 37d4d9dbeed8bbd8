"""Reading CSV, Parquet and JSON into batches typed as the catalog declares, from any stream.

The file, S3 and HTTP connectors differ only in how they open bytes; this module turns bytes
into typed batches, so that a semicolon CSV with a BOM read from disk, from S3 or over HTTP
gives the same Arrow types, and a file that does not match its declaration fails the same way.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from connectors.base import ConnectorError, Probe

_DELIMITERS = (";", ",", "\t", "|")
_SNIFF_BYTES = 64 * 1024


class ChunkReader:
    """A read()-able, non-seekable stream over an iterator of byte chunks (an HTTP body, or
    bytes already read put back in front of the rest of a stream)."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks, self._buffer, self._position, self.closed = iter(chunks), b"", 0, False

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            chunk = next(self._chunks, None)
            if chunk is None:
                break
            self._buffer += chunk
        if size < 0:
            data, self._buffer = self._buffer, b""
        else:
            data, self._buffer = self._buffer[:size], self._buffer[size:]
        self._position += len(data)
        return data

    def tell(self) -> int:
        return self._position

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True


def peek(stream: Any, size: int = _SNIFF_BYTES) -> tuple[bytes, Any]:
    """The first `size` bytes, and a stream that still starts at the beginning."""
    head = stream.read(size)
    if stream.seekable():
        stream.seek(0)
        return head, stream
    rest = iter(lambda: stream.read(1 << 20), b"")
    return head, pa.PythonFile(ChunkReader(itertools.chain([head], rest)), mode="r")


def sniff_delimiter(head: bytes) -> str:
    """The delimiter of a CSV header line: the candidate that occurs most often in it."""
    line = head.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].decode("utf-8", errors="replace")
    counts = {d: line.count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.__getitem__)
    return best if counts[best] else ","


def _header(head: bytes, delimiter: str) -> list[str]:
    line = head.lstrip(b"\xef\xbb\xbf").split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8", errors="replace")
    return [c.strip().strip('"') for c in line.split(delimiter)]


def csv_probe(head: bytes, total_bytes: int | None, files: int = 1) -> Probe:
    """The header of the first file (every column a string, as nothing is parsed yet) and the
    rows estimated from the bytes per line of its first bytes; exact when `head` is all of it."""
    names = _header(head, sniff_delimiter(head))
    schema = pa.schema([pa.field(n, pa.string()) for n in names])
    _, _, body = head.lstrip(b"\xef\xbb\xbf").partition(b"\n")
    if total_bytes is None:
        return Probe(schema, None)
    if len(head) >= total_bytes and files == 1:
        return Probe(schema, sum(1 for line in body.splitlines() if line.strip()), exact=True)
    lines = body.count(b"\n")
    if not lines:
        return Probe(schema, None)
    header_bytes = (len(head) - len(body)) * files
    return Probe(schema, max(0, round((total_bytes - header_bytes) / (len(body) / lines))))


def _mismatch(source: str, exc: Exception) -> ConnectorError:
    text = str(exc).split("\n")[0]
    return ConnectorError(source, "schema_mismatch", f"content does not match the declared schema: {text}")


def csv_batches(
    stream: pa.NativeFile, source: str, declared: pa.Schema, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Stream a CSV; every declared column must be in its header, with values of its type."""
    head, buffered = peek(stream)
    if not head.strip():
        raise ConnectorError(source, "empty", "the file is empty")
    delimiter = sniff_delimiter(head)
    header = _header(head, delimiter)
    missing = [f.name for f in declared if f.name not in header]
    if missing:
        raise ConnectorError(source, "schema_mismatch", f"declared column(s) {', '.join(map(repr, missing))} "
                                                       "are not in the file's header")
    types = {name: declared.field(name).type for name in columns}
    try:
        reader = pacsv.open_csv(
            buffered,
            read_options=pacsv.ReadOptions(block_size=max(1 << 20, batch_rows * 64)),
            parse_options=pacsv.ParseOptions(delimiter=delimiter),
            convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(columns),
                                                 strings_can_be_null=False),
        )
        for batch in reader:
            yield from _rebatch(batch, batch_rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _mismatch(source, exc) from None


def parquet_batches(
    file: Any, source: str, declared: pa.Schema, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Stream a Parquet file one row group at a time, cast (safely) to the declared types.

    pyarrow's ParquetFile pre-buffers by default: asked for batches, it first fetches the column
    chunks of every row group in one read, i.e. the whole file into memory. Reading row group by
    row group keeps one coalesced read per row group while holding only that row group.
    Transport failures (an S3 `AWS Error`) are re-raised as they are for the connector to map;
    anything else pyarrow cannot read is a content problem.
    """
    try:
        parquet = pq.ParquetFile(file)
    except (pa.ArrowInvalid, OSError) as exc:
        if "AWS Error" in str(exc):
            raise
        raise ConnectorError(source, "schema_mismatch", f"not a readable Parquet file: {exc}") from None
    present = parquet.schema_arrow.names
    missing = [f.name for f in declared if f.name not in present]
    if missing:
        raise ConnectorError(source, "schema_mismatch", f"declared column(s) {', '.join(map(repr, missing))} "
                                                       "are not in the Parquet schema")
    target = pa.schema([declared.field(c) for c in columns])
    for index in range(parquet.num_row_groups):
        reader = parquet.iter_batches(batch_size=batch_rows, row_groups=[index], columns=list(columns))
        while True:
            try:
                batch = next(reader)
            except StopIteration:
                break
            except (pa.ArrowInvalid, OSError) as exc:
                if "AWS Error" in str(exc):
                    raise
                raise ConnectorError(source, "schema_mismatch", f"row group {index} cannot be read: "
                                                               f"{str(exc).splitlines()[0]}") from None
            yield conform(batch, target, source)


def json_batches(
    stream: Any, source: str, declared: pa.Schema, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """JSON lines, or a JSON array of objects (what Opendatasoft's `exports/json` returns).

    Arrow's JSON reader needs a seekable file, so the bytes are spooled to a temporary file
    first (disk, not memory); a JSON array is then parsed whole, so large sources are better
    exported as CSV, Parquet or JSON lines.
    """
    target = pa.schema([declared.field(c) for c in columns])
    with tempfile.TemporaryFile(prefix="bulles-json-") as spool:
        while chunk := stream.read(1 << 20):
            spool.write(chunk)
        spool.seek(0)
        head = spool.read(_SNIFF_BYTES).lstrip(b"\xef\xbb\xbf").lstrip()
        if not head:
            raise ConnectorError(source, "empty", "the file is empty")
        spool.seek(0)
        if head.startswith(b"["):
            try:
                records = json.loads(spool.read())
            except ValueError as exc:
                raise ConnectorError(source, "schema_mismatch", f"not valid JSON: {exc}") from None
            if not all(isinstance(r, dict) for r in records):
                raise ConnectorError(source, "schema_mismatch", "a JSON array of objects was expected")
            for start in range(0, len(records), batch_rows):
                try:
                    yield _from_records(records[start : start + batch_rows], target, source)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise _mismatch(source, exc) from None
            return
        try:
            reader = pajson.open_json(spool, parse_options=pajson.ParseOptions(explicit_schema=target,
                                                                               unexpected_field_behavior="ignore"))
            for batch in reader:
                yield from _rebatch(batch.select(list(columns)), batch_rows)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _mismatch(source, exc) from None


def _from_records(records: list[dict[str, Any]], target: pa.Schema, source: str) -> pa.RecordBatch:
    missing = [f.name for f in target if all(f.name not in r for r in records)]
    if missing:
        raise ConnectorError(source, "schema_mismatch", f"declared column(s) {', '.join(map(repr, missing))} "
                                                       "are in no record")
    strings = pa.RecordBatch.from_pylist([{f.name: r.get(f.name) for f in target} for r in records])
    return conform(strings, target, source)


def conform(batch: pa.RecordBatch, target: pa.Schema, source: str) -> pa.RecordBatch:
    """Cast to the declared types; a value that does not fit is a schema mismatch, not a null."""
    if batch.schema.equals(target):
        return batch
    arrays = []
    for field in target:
        column = batch.column(batch.schema.get_field_index(field.name))
        try:
            arrays.append(column if column.type == field.type else column.cast(field.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            raise ConnectorError(source, "schema_mismatch",
                                 f"column '{field.name}' holds {column.type} values that are not {field.type}: "
                                 f"{str(exc).splitlines()[0]}") from None
    return pa.RecordBatch.from_arrays(arrays, schema=target)


def _rebatch(batch: pa.RecordBatch, batch_rows: int) -> Iterator[pa.RecordBatch]:
    if batch.num_rows <= batch_rows:
        yield batch
        return
    for start in range(0, batch.num_rows, batch_rows):
        yield batch.slice(start, batch_rows)


def batches_for(
    fmt: str, stream: Any, source: str, declared: pa.Schema, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    readers = {"csv": csv_batches, "parquet": parquet_batches, "json": json_batches}
    return readers[fmt](stream, source, declared, columns, batch_rows)
