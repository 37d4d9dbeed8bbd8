"""Parquet, CSV and JSON objects in an S3 warehouse (SeaweedFS, MinIO, AWS, any S3 API).

Secrets come from the site's credential set, never from the catalog entry; the entry may name
an endpoint, but only the one its credential set is declared for, so a catalog entry cannot
send the site's access key and signed requests to a server of its author's choosing.

A location is one object (`key`) or every object under a `prefix` whose name ends with the
format's extension, read in lexical order as one source: that is how Spark, DuckDB or an ETL
leave partitioned exports (`part-00000.parquet`, ... beside `_SUCCESS`).

Nothing here reads an object whole. `probe` lists objects and reads Parquet footers or the
first 64 KiB of a CSV or JSON object; `scan` reads Parquet through a random-access file one row
group at a time (one coalesced ranged GET each), and CSV/JSON as streams.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from connectors.base import BATCH_ROWS, ConnectorError, Probe, check_columns
from connectors.formats import NOT_PARQUET, batches_for, text_probe
from connectors.location import S3Location
from controller.config import S3Credentials

EXTENSIONS: dict[str, tuple[str, ...]] = {"parquet": (".parquet",), "csv": (".csv",), "json": (".json", ".jsonl")}
CONNECT_TIMEOUT = 5.0
REQUEST_TIMEOUT = 10.0
# Two attempts: a lost packet is retried once, a dead endpoint is reported within about a second
# instead of the several seconds of backoff the AWS SDK's default three-attempt policy takes.
MAX_ATTEMPTS = 2


@dataclass(frozen=True)
class Limits:
    """How long the S3 client may wait, so that a dead or silent warehouse fails a request
    instead of hanging it: each attempt waits at most `connect_timeout` to connect and
    `request_timeout` for an answer, and there are `max_attempts` attempts."""

    connect_timeout: float = CONNECT_TIMEOUT
    request_timeout: float = REQUEST_TIMEOUT
    max_attempts: int = MAX_ATTEMPTS

    def __post_init__(self) -> None:
        if not (0 < self.connect_timeout < float("inf") and 0 < self.request_timeout < float("inf")):
            raise ValueError("S3 timeouts must be positive and finite")
        if self.max_attempts < 1:
            raise ValueError("S3 clients make at least one attempt")
_HEAD_BYTES = 64 * 1024

# How pyarrow (AWS SDK for C++ under it) words each failure, in its `AWS Error <CODE>` part or
# in the S3 error code quoted from the response body.
_UNAUTHORISED = ("ACCESS_DENIED", "INVALID_ACCESS_KEY_ID", "SIGNATURE_DOES_NOT_MATCH", "MISSING_AUTHENTICATION_TOKEN",
                 "EXPIRED_TOKEN", "UNRECOGNIZED_CLIENT", "INVALID_CLIENT_TOKEN_ID", "AccessDenied",
                 "InvalidAccessKeyId", "SignatureDoesNotMatch", "HTTP status 401", "HTTP status 403")
_NOT_FOUND = ("NO_SUCH_BUCKET", "NO_SUCH_KEY", "RESOURCE_NOT_FOUND", "NoSuchBucket", "NoSuchKey", "HTTP status 404")
_TIMED_OUT = ("curlCode: 28", "REQUEST_TIMEOUT", "Timeout was reached", "timed out")
_UNREACHABLE = ("NETWORK_CONNECTION", "REQUEST_TIMEOUT", "SLOW_DOWN", "SERVICE_UNAVAILABLE", "curlCode",
                "Could not connect", "Couldn't resolve", "timed out", "Timeout")


def _endpoint_of(source_id: str, location: S3Location, credentials: S3Credentials) -> str | None:
    """The endpoint to talk to: the credential set's, which a location may only repeat."""
    def norm(url: str) -> str:
        return url.strip().rstrip("/").lower()

    if location.endpoint is not None:
        if credentials.endpoint is None or norm(location.endpoint) != norm(credentials.endpoint):
            declared = credentials.endpoint or "AWS S3"
            raise ConnectorError(source_id, "invalid_location",
                                 f"endpoint '{location.endpoint}' is not the one credential set "
                                 f"'{location.credentials or 'default'}' is declared for ({declared})",
                                 public="the source's endpoint is not the one its credential set is declared for",
                                 field="connector.endpoint")
    return credentials.endpoint


class S3Connector:
    def __init__(self, source_id: str, location: S3Location, credentials: S3Credentials, declared: pa.Schema,
                 limits: Limits = Limits()) -> None:
        self.source_id, self.location, self.declared, self.limits = source_id, location, declared, limits
        self.credential_set = location.credentials or "default"
        endpoint = _endpoint_of(source_id, location, credentials)
        options: dict[str, object] = {}
        if endpoint is None:
            self.endpoint = "AWS S3"
        else:
            url = urlsplit(endpoint)
            if url.scheme not in ("http", "https") or not url.netloc or url.path.strip("/") or url.query:
                raise ConnectorError(source_id, "invalid_location",
                                     f"S3 endpoint '{endpoint}' must be http(s)://host[:port], without a path")
            self.endpoint = f"{url.scheme}://{url.netloc}"
            options.update(endpoint_override=url.netloc, scheme=url.scheme)
        self._fs = pafs.S3FileSystem(
            access_key=credentials.access_key, secret_key=credentials.secret_key, region=credentials.region,
            connect_timeout=limits.connect_timeout, request_timeout=limits.request_timeout,
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=limits.max_attempts), **options)
        self.where = (f"s3://{location.bucket}/{location.key}" if location.key is not None
                      else f"s3://{location.bucket}/{location.prefix}*")

    # -- errors ---------------------------------------------------------------------------

    def _error(self, exc: OSError) -> ConnectorError:
        """One stable code for what pyarrow reports as a bare OSError with the SDK's wording."""
        text = str(exc)
        first = text.splitlines()[0] if text else type(exc).__name__
        if isinstance(exc, FileNotFoundError) or any(m in text for m in _NOT_FOUND):
            return ConnectorError(self.source_id, "not_found", f"{self.where} does not exist on {self.endpoint}")
        if any(m in text for m in _UNAUTHORISED):
            return ConnectorError(self.source_id, "unauthorised",
                                  f"{self.endpoint} refused credential set '{self.credential_set}' for "
                                  f"{self.where} (wrong access key or secret key, or no permission): {first}")
        if any(m in text for m in _TIMED_OUT):
            limits = self.limits
            return ConnectorError(self.source_id, "unreachable",
                                  f"S3 endpoint {self.endpoint} did not answer within {limits.connect_timeout:g} s "
                                  f"to connect and {limits.request_timeout:g} s to reply, in {limits.max_attempts} "
                                  f"attempt(s): {first}", public="the warehouse did not answer in time")
        if any(m in text for m in _UNREACHABLE):
            return ConnectorError(self.source_id, "unreachable", f"cannot reach S3 endpoint {self.endpoint}: {first}")
        return ConnectorError(self.source_id, "unreachable", f"S3 endpoint {self.endpoint} failed: {first}")

    # -- objects --------------------------------------------------------------------------

    def _objects(self) -> list[pafs.FileInfo]:
        """The objects of the location, in lexical order; not_found when there are none."""
        bucket = self.location.bucket
        try:
            if self.location.key is not None:
                info = self._fs.get_file_info(f"{bucket}/{self.location.key}")
                if info.type == pafs.FileType.File:
                    return [info]
                if info.type == pafs.FileType.Directory:
                    raise ConnectorError(self.source_id, "not_found",
                                         f"{self.where} is a prefix holding objects, not an object; use 'prefix'",
                                         public="the source's key names a prefix, not an object")
                raise self._missing()
            prefix = self.location.prefix or ""
            wanted = f"{bucket}/{prefix}"
            # List from the last '/' of the prefix: S3 prefixes need not end at a "directory".
            base = f"{bucket}/{prefix.rsplit('/', 1)[0]}" if "/" in prefix else bucket
            selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
            extensions = EXTENSIONS[self.location.format]
            found = [i for i in self._fs.get_file_info(selector)
                     if i.type == pafs.FileType.File and i.path.startswith(wanted) and i.path.lower().endswith(extensions)]
        except OSError as exc:
            raise self._error(exc) from None
        if not found:
            raise self._missing()
        return sorted(found, key=lambda i: i.path)

    def _missing(self) -> ConnectorError:
        """not_found, saying whether the bucket itself is missing (a typo there is common)."""
        try:
            bucket = self._fs.get_file_info(self.location.bucket)
        except OSError as exc:
            return self._error(exc)
        if bucket.type == pafs.FileType.NotFound:
            return ConnectorError(self.source_id, "not_found", f"no bucket '{self.location.bucket}' on {self.endpoint}",
                                  public="the source's bucket does not exist")
        if self.location.key is not None:
            return ConnectorError(self.source_id, "not_found",
                                  f"no object '{self.location.key}' in bucket '{self.location.bucket}' on {self.endpoint}",
                                  public="the source's object does not exist")
        extensions = "/".join(EXTENSIONS[self.location.format])
        return ConnectorError(self.source_id, "not_found",
                              f"no {extensions} object under prefix '{self.location.prefix}' in bucket "
                              f"'{self.location.bucket}' on {self.endpoint}",
                              public=f"no {extensions} object under the source's prefix")

    def _non_empty(self, objects: list[pafs.FileInfo]) -> list[pafs.FileInfo]:
        """Zero-byte objects carry no rows (an aborted export part); a source of only those is empty."""
        kept = [o for o in objects if o.size]
        if not kept:
            raise ConnectorError(self.source_id, "empty", f"{self.where}: every object is empty (0 bytes)")
        return kept

    # -- probe ----------------------------------------------------------------------------

    def probe(self) -> Probe:
        objects = self._non_empty(self._objects())
        try:
            if self.location.format == "parquet":
                return self._probe_parquet(objects)
            with self._fs.open_input_file(objects[0].path) as handle:
                head = handle.read(min(_HEAD_BYTES, objects[0].size))
        except OSError as exc:
            raise self._error(exc) from None
        return self._probe_text(head, objects)

    def _probe_parquet(self, objects: list[pafs.FileInfo]) -> Probe:
        """Schema and exact row count from the footers: a few KiB per object."""
        schema: pa.Schema | None = None
        rows = 0
        for info in objects:
            with self._fs.open_input_file(info.path) as handle:
                try:
                    meta = pq.ParquetFile(handle).metadata
                except (pa.ArrowInvalid, OSError) as exc:
                    if "AWS Error" in str(exc):
                        raise
                    raise ConnectorError(self.source_id, "schema_mismatch",
                                         f"'{info.path}' is not a readable Parquet file: {exc}",
                                         public=NOT_PARQUET) from None
            found = meta.schema.to_arrow_schema()
            if schema is None:
                schema = found
            elif [(f.name, f.type) for f in found] != [(f.name, f.type) for f in schema]:
                # Nullability and metadata differ between writers; names and types may not.
                raise ConnectorError(self.source_id, "schema_mismatch",
                                     f"'{info.path}' does not have the schema of '{objects[0].path}'",
                                     public="the source's objects do not all have the same schema")
            rows += meta.num_rows
        assert schema is not None
        return Probe(schema, rows, exact=True)

    def _probe_text(self, head: bytes, objects: list[pafs.FileInfo]) -> Probe:
        """Schema from the first 64 KiB of the first object; rows estimated from their bytes
        per line (CSV) or per record (JSON)."""
        if not head.strip():
            raise ConnectorError(self.source_id, "empty", f"{objects[0].path}: the object holds only blank space")
        return text_probe(self.location.format, head, sum(o.size for o in objects), self.declared, len(objects))

    # -- scan -----------------------------------------------------------------------------

    def scan(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        """Columns and objects are checked now, so a bad request fails before the first batch."""
        chosen = check_columns(self.source_id, columns, self.declared.names)
        objects = self._non_empty(self._objects())
        return self._batches(objects, chosen, batch_rows)

    def _batches(self, objects: list[pafs.FileInfo], chosen: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        fmt = self.location.format
        for info in objects:
            try:
                opened = self._fs.open_input_file(info.path) if fmt == "parquet" else self._fs.open_input_stream(info.path)
            except OSError as exc:
                raise self._error(exc) from None
            with opened as handle:
                try:
                    yield from batches_for(fmt, handle, self.source_id, self.declared, chosen, batch_rows)
                except OSError as exc:  # the warehouse failing mid-read; content errors are ConnectorErrors
                    raise self._error(exc) from None
                except ConnectorError as exc:
                    raise exc.locate(f"s3://{info.path} on {self.endpoint}") from None
