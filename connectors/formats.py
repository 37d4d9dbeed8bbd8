"""Reading CSV, Parquet and JSON into batches typed as the catalog declares, from any stream.

The file, S3 and HTTP connectors differ only in how they open bytes; this module turns bytes
into typed batches, so that a semicolon CSV with a BOM read from disk, from S3 or over HTTP
gives the same Arrow types, and a file that does not match its declaration fails the same way.
"""

from __future__ import annotations

import io
import itertools
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import ijson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from connectors.base import ConnectorError, Probe

_DELIMITERS = (";", ",", "\t", "|")
NOT_PARQUET = "the warehouse's content is not readable Parquet"
# Where Arrow's readers name the column of a value they could not convert.
_CSV_COLUMN = re.compile(r"CSV column #(\d+)")
_JSON_COLUMN = re.compile(r"Column\(/([^)]*)\)")
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


def text_probe(fmt: str, head: bytes, total_bytes: int | None, declared: pa.Schema, files: int = 1) -> Probe:
    """What the first bytes of a CSV or JSON source show: see `csv_probe` and `json_probe`."""
    if fmt == "csv":
        return csv_probe(head, total_bytes, files, declared)
    return json_probe(head, total_bytes, declared, files)


def csv_probe(head: bytes, total_bytes: int | None, files: int = 1, declared: pa.Schema | None = None) -> Probe:
    """The header of the first file, typed from its first rows (see `found_schema`), and the
    rows estimated from the bytes per line of its first bytes; exact when `head` is all of it."""
    delimiter = sniff_delimiter(head)
    names = _header(head, delimiter)
    whole = total_bytes is not None and len(head) >= total_bytes and files == 1
    schema = found_schema(names, _csv_sample(head, delimiter, len(names), whole), declared)
    _, _, body = head.lstrip(b"\xef\xbb\xbf").partition(b"\n")
    if total_bytes is None:
        return Probe(schema, None)
    if whole:
        return Probe(schema, sum(1 for line in body.splitlines() if line.strip()), exact=True)
    lines = body.count(b"\n")
    if not lines:
        return Probe(schema, None)
    header_bytes = (len(head) - len(body)) * files
    return Probe(schema, max(0, round((total_bytes - header_bytes) / (len(body) / lines))))


def _complete_lines(head: bytes, whole: bool) -> bytes:
    """The head without its last line when that line may be cut short."""
    return head if whole else head[: head.rfind(b"\n") + 1]


def _csv_sample(head: bytes, delimiter: str, width: int, whole: bool) -> list[pa.Array | None]:
    """The columns of the first rows, typed as pyarrow infers them; None where unreadable (a
    quoted field cut by the end of the head, a ragged line): those are reported as strings."""
    try:
        table = pacsv.read_csv(pa.BufferReader(_complete_lines(head.lstrip(b"\xef\xbb\xbf"), whole)),
                               parse_options=pacsv.ParseOptions(delimiter=delimiter))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        return [None] * width
    if table.num_columns != width:
        return [None] * width
    return [table.column(i).combine_chunks() for i in range(width)]


def json_probe(head: bytes, total_bytes: int | None, declared: pa.Schema, files: int = 1) -> Probe:
    """The keys of the first records (a JSON array or JSON lines), typed from their values,
    and the rows estimated from the bytes per record; exact when `head` is all of it."""
    whole = total_bytes is not None and len(head) >= total_bytes and files == 1
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    records = _array_sample(text) if text.startswith(b"[") else _lines_sample(text, whole)
    records = [r for r in records if isinstance(r, dict)]
    names = list(dict.fromkeys(name for r in records for name in r))
    columns = []
    for name in names:
        try:
            columns.append(pa.array([r.get(name) for r in records]))
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            columns.append(None)  # mixed kinds of values: reported as strings
    schema = found_schema(names, columns, declared)
    if whole:
        return Probe(schema, len(records), exact=True)
    if not records or total_bytes is None:
        return Probe(schema, None)
    return Probe(schema, max(len(records), round(total_bytes / (len(head) / len(records)))))


def _array_sample(text: bytes) -> list[Any]:
    """The complete items at the start of a JSON array whose end may be cut off."""
    items: list[Any] = []
    try:
        for item in ijson.items(io.BytesIO(text), "item", use_float=True):
            items.append(item)
    except ijson.JSONError:
        pass  # the head ends inside an item: the ones before it are the sample
    return items


def _lines_sample(text: bytes, whole: bool) -> list[Any]:
    records = []
    for line in _complete_lines(text, whole).splitlines():
        if line.strip():
            try:
                records.append(json.loads(line))
            except ValueError:
                break
    return records


def found_schema(names: Sequence[str], sample: Sequence[pa.Array | None], declared: pa.Schema | None) -> pa.Schema:
    """The schema the first rows support: a column gets its declared type when all its sampled
    values convert to it (what a scan will need), else the type pyarrow infers from them, so a
    provider sees at once which declared columns are absent and which hold something else.
    Without a usable sample a column is a string, as its raw text is."""
    fields = []
    for name, values in zip(names, sample, strict=True):
        wanted = declared.field(name).type if declared is not None and name in declared.names else None
        if values is None:
            found = pa.string()
        elif wanted is not None and _converts(values, wanted):
            found = wanted
        else:
            found = pa.string() if pa.types.is_null(values.type) else values.type
        fields.append(pa.field(name, found))
    return pa.schema(fields)


def _converts(values: pa.Array, target: pa.DataType) -> bool:
    if values.type == target or pa.types.is_null(values.type):
        return True
    try:
        values.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return False
    return True


def _mismatch(source: str, exc: Exception, header: Sequence[str] = ()) -> ConnectorError:
    """A value Arrow could not read as its declared type. Arrow's words quote the value, so
    they go only in the detail; the public text names the column when Arrow says which."""
    text = str(exc).split("\n")[0]
    column = None
    if found := _CSV_COLUMN.search(text):
        index = int(found.group(1))
        column = header[index] if index < len(header) else None
    elif found := _JSON_COLUMN.search(text):
        column = found.group(1)
    public = f"column '{column}' holds a value that is not of its declared type" if column else None
    return ConnectorError(source, "schema_mismatch", f"content does not match the declared schema: {text}",
                          public=public)


def _missing_columns(source: str, missing: Sequence[str], where: str) -> ConnectorError:
    text = f"declared column(s) {', '.join(map(repr, missing))} are not in {where}"
    return ConnectorError(source, "schema_mismatch", text, public=text)


def csv_batches(
    stream: pa.NativeFile, source: str, declared: pa.Schema, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Stream a CSV; every declared column must be in its header, with values of its type."""
    head, buffered = peek(stream)
    if not head.strip():
        raise ConnectorError(source, "empty", "the content is empty")
    delimiter = sniff_delimiter(head)
    header = _header(head, delimiter)
    missing = [f.name for f in declared if f.name not in header]
    if missing:
        raise _missing_columns(source, missing, "the file's header")
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
        raise _mismatch(source, exc, header) from None


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
        raise ConnectorError(source, "schema_mismatch", f"not a readable Parquet file: {exc}",
                             public=NOT_PARQUET) from None
    present = parquet.schema_arrow.names
    missing = [f.name for f in declared if f.name not in present]
    if missing:
        raise _missing_columns(source, missing, "the Parquet schema")
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
                                                               f"{str(exc).splitlines()[0]}",
                                     public=f"row group {index} of the Parquet content cannot be read") from None
            yield conform(batch, target, source)


def json_batches(
    stream: Any, source: str, declared: pa.Schema, columns: Sequence[str], batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """JSON lines, or a JSON array of objects (what Opendatasoft's `exports/json` returns),
    streamed: memory holds one batch of records, whatever the size of the source.

    An array is parsed item by item (ijson, an incremental parser); JSON lines are cut into
    blocks of whole lines, each parsed by Arrow's JSON reader (which, given a stream, would
    read all of it before the first batch).
    """
    head = stream.read(_SNIFF_BYTES)
    text = head.removeprefix(b"\xef\xbb\xbf").lstrip()
    if not text:
        raise ConnectorError(source, "empty", "the content is empty")
    rest = ChunkReader(itertools.chain([text], iter(lambda: stream.read(1 << 20), b"")))
    target = pa.schema([declared.field(c) for c in columns])
    if text.startswith(b"["):
        yield from _array_batches(rest, source, target, batch_rows)
    else:
        yield from _lines_batches(rest, source, target, batch_rows)


def _array_batches(stream: Any, source: str, target: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    records: list[Any] = []
    try:
        for record in ijson.items(stream, "item", use_float=True):
            if not isinstance(record, dict):
                raise ConnectorError(source, "schema_mismatch", "a JSON array of objects was expected",
                                     public="the content is not a JSON array of objects")
            records.append(record)
            if len(records) == batch_rows:
                yield _records_batch(records, target, source)
                records = []
    except ijson.JSONError as exc:
        raise ConnectorError(source, "schema_mismatch", f"not valid JSON: {str(exc).splitlines()[0]}",
                             public="the content is not valid JSON") from None
    if records:
        yield _records_batch(records, target, source)


def _records_batch(records: list[dict[str, Any]], target: pa.Schema, source: str) -> pa.RecordBatch:
    try:
        return _from_records(records, target, source)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise _mismatch(source, exc) from None


def _lines_batches(stream: Any, source: str, target: pa.Schema, batch_rows: int) -> Iterator[pa.RecordBatch]:
    # JSON has no dates: they are read as the strings they are, then cast like CSV values.
    parsed = pa.schema([pa.field(f.name, pa.string()) if pa.types.is_temporal(f.type) else f for f in target])
    options = pajson.ParseOptions(explicit_schema=parsed, unexpected_field_behavior="ignore")
    for block in _line_blocks(stream, max(1 << 20, batch_rows * 64)):
        try:
            table = pajson.read_json(pa.BufferReader(block), parse_options=options)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            raise _mismatch(source, exc) from None
        for batch in table.select(list(target.names)).to_batches():
            yield from _rebatch(conform(batch, target, source), batch_rows)


def _line_blocks(stream: Any, block_bytes: int) -> Iterator[bytes]:
    """Whole lines, about `block_bytes` at a time (more when one line is longer than that)."""
    pending = b""
    while chunk := stream.read(block_bytes):
        pending += chunk
        cut = pending.rfind(b"\n") + 1
        if cut:
            yield pending[:cut]
            pending = pending[cut:]
    if pending.strip():
        yield pending


def _from_records(records: list[dict[str, Any]], target: pa.Schema, source: str) -> pa.RecordBatch:
    missing = [f.name for f in target if all(f.name not in r for r in records)]
    if missing:
        raise _missing_columns(source, missing, "any record")
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
            summary = f"column '{field.name}' holds {column.type} values that are not {field.type}"
            raise ConnectorError(source, "schema_mismatch", f"{summary}: {str(exc).splitlines()[0]}",
                                 public=summary) from None
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
