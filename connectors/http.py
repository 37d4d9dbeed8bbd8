"""CSV, Parquet or JSON over HTTP(S), Opendatasoft "exports" endpoints included
(data.education.gouv.fr: /api/explore/v2.1/catalog/datasets/<id>/exports/<format>).

CSV and JSON are parsed as they arrive; Parquet needs random access to its footer, so it is
spooled to a temporary file first (disk, not memory). By default a source may not point the
controller at loopback, private or link-local addresses (cloud metadata services live there):
a catalog entry must not become a way to make the platform fetch internal URLs. Redirects are
followed by hand, a few hops at most, so that every hop is checked by that same rule (a public
URL answering 302 to http://169.254.169.254/ would otherwise get around it), and an HTTPS URL is
never downgraded to plain HTTP on the way.

HTTPS is verified against certifi's bundle, plus the site's own CA file (`http_ca_bundle`) for
warehouses certified by an internal authority; an untrusted or mismatched certificate is an
`untrusted` error, never a silent fallback.

Known limit: the address is checked by resolving the host before the request, and the client
resolves it again to connect; a DNS server answering differently the second time (rebinding)
is not stopped by this check. Sites that need that guarantee put the controller behind an egress
proxy or network policy that refuses private ranges.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import certifi
import httpx
import pyarrow as pa

from connectors.base import BATCH_ROWS, ConnectorError, Probe, check_columns
from connectors.formats import ChunkReader, batches_for, text_probe
from connectors.location import HttpLocation

TIMEOUT = httpx.Timeout(30.0, connect=10.0)
HEAD_BYTES = 64 * 1024
MAX_REDIRECTS = 5


def resolve(host: str) -> list[str]:
    """Every address the host resolves to (a name with one private address among public ones is
    refused as a whole)."""
    return [info[4][0] for info in socket.getaddrinfo(host, None)]


class HttpConnector:
    def __init__(self, source_id: str, location: HttpLocation, declared: pa.Schema, *,
                 refuse_url: Callable[[str], str | None], allow_private: bool = False,
                 ca_bundle: Path | None = None) -> None:
        """`refuse_url` says why a redirect's target is not the source's organisation's to
        fetch (None when it is): a host open to all must not redirect into an owned one."""
        self.source_id, self.location, self.declared, self.allow_private = source_id, location, declared, allow_private
        self.ca_bundle, self.refuse_url = ca_bundle, refuse_url

    def _check_address(self, url: httpx.URL) -> None:
        host = url.host
        try:
            addresses = resolve(host)
        except socket.gaierror:
            raise ConnectorError(self.source_id, "unreachable", f"cannot resolve host '{host}'",
                                 public="the warehouse's host name does not resolve") from None
        if self.allow_private:
            return
        for text in addresses:
            address = ipaddress.ip_address(text.split("%")[0])
            if address.is_private or address.is_loopback or address.is_link_local or address.is_reserved \
                    or address.is_multicast or address.is_unspecified:
                raise ConnectorError(self.source_id, "invalid_location",
                                     f"'{host}' resolves to {address}, a non-public address this site does not fetch",
                                     public="the source's host resolves to an address this site does not fetch")

    def _fail(self, response: httpx.Response) -> ConnectorError:
        status = response.status_code
        code = {401: "unauthorised", 403: "unauthorised", 404: "not_found", 410: "not_found"}.get(status, "unreachable")
        return ConnectorError(self.source_id, code, f"GET {response.url} answered {status}",
                              public=f"the warehouse answered HTTP {status}")

    def _client(self) -> httpx.Client:
        return httpx.Client(timeout=TIMEOUT, follow_redirects=False, headers={"Accept-Encoding": "gzip"},
                            verify=tls_context(self.ca_bundle))

    @contextmanager
    def _get(self) -> Iterator[httpx.Response]:
        """The streamed 200 response for the source's URL, after at most MAX_REDIRECTS hops,
        each checked before it is requested; transport failures become ConnectorErrors."""
        try:
            with self._client() as client:
                request = client.build_request("GET", self.location.url)
                for _hop in range(MAX_REDIRECTS + 1):
                    self._check_address(request.url)
                    response = client.send(request, stream=True)
                    try:
                        if response.next_request is None:
                            if response.status_code != 200:
                                raise self._fail(response)
                            yield response
                            return
                        request = self._next_hop(response)
                    finally:
                        response.close()
                raise ConnectorError(self.source_id, "unreachable",
                                     f"GET {self.location.url} was redirected more than {MAX_REDIRECTS} times",
                                     public=f"the warehouse redirected more than {MAX_REDIRECTS} times")
        except httpx.HTTPError as exc:
            if _is_certificate_error(exc):
                raise ConnectorError(self.source_id, "untrusted",
                                     f"the TLS certificate of {self.location.url} is not trusted: {exc}") from None
            raise ConnectorError(self.source_id, "unreachable", f"GET {self.location.url} failed: {exc}") from None

    def _next_hop(self, response: httpx.Response) -> httpx.Request:
        request = response.next_request
        assert request is not None
        target = request.url
        if target.scheme not in ("http", "https"):
            raise ConnectorError(self.source_id, "invalid_location",
                                 f"{response.url} redirects to '{target.scheme}:', which is not HTTP(S)",
                                 public="the warehouse redirects to something that is not HTTP(S)")
        if response.url.scheme == "https" and target.scheme == "http":
            raise ConnectorError(self.source_id, "invalid_location",
                                 f"{response.url} redirects to plain HTTP ({target}); HTTPS is never downgraded",
                                 public="the warehouse redirects from HTTPS to plain HTTP")
        refused = self.refuse_url(str(target))
        if refused is not None:
            raise ConnectorError(self.source_id, "location_refused", f"{response.url} redirects to {target}: {refused}",
                                 public="the warehouse redirects to a host its organisation may not use",
                                 field="connector.url")
        return request

    def probe(self) -> Probe:
        """Reachability, and for CSV and JSON the schema and row estimate of the first 64 KiB.

        Parquet keeps its schema in a footer at the end of the file, which a plain GET reaches
        only after downloading all of it: for Parquet over HTTP the declared schema is returned
        unchecked and the rows are unknown (a scan checks the schema)."""
        with self._get() as response:
            head, complete = _head(response)
            total = self._total_bytes(response, head, complete)
        if not head.strip():
            raise ConnectorError(self.source_id, "empty", f"GET {self.location.url}: the response is empty")
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
        with self._get() as response:
            try:
                if self.location.format == "parquet":
                    yield from self._parquet(response, chosen, batch_rows)
                    return
                stream = ChunkReader(response.iter_bytes(1 << 16))
                yield from batches_for(self.location.format, stream, self.source_id, self.declared, chosen, batch_rows)
            except ConnectorError as exc:
                raise exc.locate(f"GET {response.url}") from None

    def _parquet(self, response: httpx.Response, columns: list[str], batch_rows: int) -> Iterator[pa.RecordBatch]:
        with tempfile.TemporaryFile(prefix="bulles-http-") as spool:
            for chunk in response.iter_bytes(1 << 20):
                spool.write(chunk)
            spool.seek(0)
            if not spool.read(4):
                raise ConnectorError(self.source_id, "empty", f"GET {self.location.url}: the response is empty")
            spool.seek(0)
            yield from batches_for("parquet", spool, self.source_id, self.declared, columns, batch_rows)


def _head(response: httpx.Response, size: int = HEAD_BYTES) -> tuple[bytes, bool]:
    """The first `size` bytes of the body, and whether that is all of it."""
    chunks = response.iter_bytes(size)
    head = next(chunks, b"")
    return head, next(chunks, None) is None


@functools.lru_cache(maxsize=4)
def tls_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """certifi's authorities (httpx's default), and the site's own CA file when it has one.

    Built once per bundle and shared (a client context is safe to share): loading certifi's
    bundle costs tens of milliseconds, which every probe and scan paid before."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def _is_certificate_error(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
