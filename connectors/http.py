"""CSV, Parquet or JSON over HTTP(S), Opendatasoft "exports" endpoints included
(data.education.gouv.fr: /api/explore/v2.1/catalog/datasets/<id>/exports/<format>).

CSV and JSON are parsed as they arrive; Parquet needs random access to its footer, so it is
spooled to a temporary file first (disk, not memory). By default a source may not point the
controller at loopback, private or link-local addresses (cloud metadata services live there):
a catalog entry must not become a way to make the platform fetch internal URLs.
"""

from __future__ import annotations

import ipaddress
import socket
import tempfile
from collections.abc import Iterator, Sequence

from urllib.parse import urlsplit

import httpx
import pyarrow as pa


from connectors.base import BATCH_ROWS, ConnectorError, Probe, check_columns
from connectors.formats import ChunkReader, batches_for, text_probe
from connectors.location import HttpLocation

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
HEAD_BYTES = 64 * 1024


class HttpConnector:
    def __init__(self, source_id: str, location: HttpLocation, declared: pa.Schema, *, allow_private: bool = False) -> None:
        self.source_id, self.location, self.declared, self.allow_private = source_id, location, declared, allow_private

    def _check_address(self) -> None:
        host = urlsplit(self.location.url).hostname or ""
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror:
            raise ConnectorError(self.source_id, "unreachable", f"cannot resolve host '{host}'") from None
        if self.allow_private:
            return
        for info in infos:
            address = ipaddress.ip_address(info[4][0])
            if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved \
                    or address.is_multicast or address.is_unspecified:
                raise ConnectorError(self.source_id, "invalid_location",
                                     f"'{host}' resolves to {address}, a non-public address this site does not fetch")

    def _fail(self, response: httpx.Response) -> ConnectorError:
        status = response.status_code
        code = {401: "unauthorised", 403: "unauthorised", 404: "not_found", 410: "not_found"}.get(status, "unreachable")
        return ConnectorError(self.source_id, code, f"GET {self.location.url} answered {status}")

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=TIMEOUT, follow_redirects=False, headers={"Accept-Encoding": "gzip"})

    def probe(self) -> Probe:
        """Reachability, and for CSV and JSON the schema and row estimate of the first 64 KiB.

        Parquet keeps its schema in a footer at the end of the file, which a plain GET reaches
        only after downloading all of it: for Parquet over HTTP the declared schema is returned
        unchecked and the rows are unknown (a scan checks the schema)."""
        self._check_address()
        try:
            with self._client() as client, client.stream("GET", self.location.url) as response:
                if response.status_code != 200:
                    raise self._fail(response)
                head, complete = _head(response)
                total = self._total_bytes(response, head, complete)
        except httpx.HTTPError as exc:
            raise ConnectorError(self.source_id, "unreachable", f"GET {self.location.url} failed: {exc}") from None
        if not head.strip():
            raise ConnectorError(self.source_id, "empty", "the response is empty")
        if self.location.format == "parquet":
            return Probe(self.declared, None)
        return text_probe(self.location.format, head, total, self.declared)

    @staticmethod
    def _total_bytes(response: httpx.Response, head: bytes, complete: bool) -> int | None:
        """The body's size: known when it all came in the head, or from Content-Length unless
        the body is compressed (the length is then that of the compressed bytes)."""
        if complete:
            return len(head)
        length = response.headers.get("content-length")
        if not length or not length.isdigit() or response.headers.get("content-encoding", "identity") != "identity":
            return None
        return int(length)

    def scan(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        chosen = check_columns(self.source_id, columns, self.declared.names)
        self._check_address()
        try:
            with self._client() as client, client.stream("GET", self.location.url) as response:
                if response.status_code != 200:
                    raise self._fail(response)
                if self.location.format == "parquet":
                    yield from self._parquet(response, chosen, batch_rows)
                    return
                stream = ChunkReader(response.iter_bytes(1 << 16))
                yield from batches_for(self.location.format, stream, self.source_id, self.declared, chosen, batch_rows)
        except httpx.HTTPError as exc:
            raise ConnectorError(self.source_id, "unreachable", f"GET {self.location.url} failed: {exc}") from None

    def _parquet(self, response: httpx.Response, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        with tempfile.TemporaryFile(prefix="bulles-http-") as spool:
            for chunk in response.iter_bytes(1 << 20):
                spool.write(chunk)
            spool.seek(0)
            if not spool.read(4):
                raise ConnectorError(self.source_id, "empty", "the response is empty")
            spool.seek(0)
            yield from batches_for("parquet", spool, self.source_id, self.declared, columns, batch_rows)


def _head(response: httpx.Response, size: int = HEAD_BYTES) -> tuple[bytes, bool]:
    """The first `size` bytes of the body, and whether that is all of it."""
    chunks = response.iter_bytes(size)
    head = next(chunks, b"")
    return head, next(chunks, None) is None
