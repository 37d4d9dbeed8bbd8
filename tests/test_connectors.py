"""The file, HTTP and PostgreSQL connectors against real files and real servers on loopback."""

from __future__ import annotations

import datetime as dt
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from catalog.model import SourceSpec
from catalog.synthetic import build_demo_pupils
from connectors.base import ConnectorError
from connectors.formats import json_batches
from connectors.registry import open_connector
from conftest import ROOT, example, free_port
from controller.config import load_settings

OPENDATA = ROOT / "catalog" / "demo" / "opendata"
PUBLISHER = "demo-rennes"  # of every example source
# The hosts the HTTP tests fetch from (or would, were the address rule not to stop them),
# opened to the examples' organisation.
HOSTS = {host: [PUBLISHER] for host in ("127.0.0.1", "warehouse.example.org", "169.254.169.254")}
OPEN = ["fr-en-ips-colleges-ap2022", "fr-en-annuaire-education", "fr-en-ecoles-effectifs-nb_classes", "fr-en-ips_ecoles"]


def spec_with(name: str, connector: dict[str, Any], **changes: Any) -> SourceSpec:
    return SourceSpec.model_validate(example(name) | {"connector": connector} | changes)


def scan_all(spec: SourceSpec, settings: Any, columns: list[str] | None = None, batch_rows: int = 65536) -> pa.Table:
    batches = list(open_connector(spec, settings).scan(columns, batch_rows=batch_rows))
    return pa.Table.from_batches(batches)


@pytest.fixture
def settings(home: Path):
    return load_settings(home, http_allow_private=True, http_hosts=HOSTS)


# -- file ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", OPEN)
def test_real_open_data_csvs_load_with_their_declared_types(name: str, settings) -> None:
    spec = SourceSpec.model_validate(example(name))
    table = scan_all(spec, settings)
    assert table.num_rows == spec.number_of_records
    assert table.schema.names == [c.name for c in spec.schema_]
    for column in spec.schema_:
        assert table.schema.field(column.name).type == {"string": pa.string(), "int64": pa.int64(),
                                                        "float64": pa.float64(), "boolean": pa.bool_(),
                                                        "date": pa.date32()}[column.type.value]


def test_codes_keep_their_leading_zeros_and_the_bom_is_gone(settings) -> None:
    spec = SourceSpec.model_validate(example("fr-en-ips-colleges-ap2022"))
    table = scan_all(spec, settings, ["Rentrée scolaire", "Code du département", "UAI", "IPS"])
    assert table.column("Code du département")[0].as_py() == "001"
    assert table.column("UAI")[0].as_py() == "0010005A"
    assert table.column("IPS")[0].as_py() == pytest.approx(110.4)
    assert table.schema.names[0] == "Rentrée scolaire"


@pytest.mark.parametrize("name", OPEN)
def test_csv_probe_reads_the_header_and_estimates_rows_without_reading_the_file(name: str, settings) -> None:
    spec = SourceSpec.model_validate(example(name))
    probe = open_connector(spec, settings).probe()
    assert probe.schema.names == [c.name for c in spec.schema_]
    assert abs(probe.rows - spec.number_of_records) <= 0.1 * spec.number_of_records


def test_scan_is_streamed_in_bounded_batches(settings) -> None:
    spec = SourceSpec.model_validate(example("fr-en-ips_ecoles"))
    sizes = [b.num_rows for b in open_connector(spec, settings).scan(["UAI", "IPS"], batch_rows=1000)]
    assert max(sizes) <= 1000 and sum(sizes) == 32091


def test_file_errors_name_the_source_and_the_problem(tmp_path: Path, home: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    settings = load_settings(home, file_roots={"t": {"path": root, "organisations": [PUBLISHER]}})
    header = (OPENDATA / "fr-en-ips-colleges-ap2022.csv").read_bytes().split(b"\n", 1)[0]
    (root / "bad.csv").write_bytes(header + b"\n2022-2023;LYON;001;AIN;X;C;01025;B;public;many;110.4;31.3\n")
    (root / "short.csv").write_bytes(b"UAI;IPS\n0010005A;100\n")
    (root / "empty.csv").write_bytes(b"")
    (root / "escape.csv").symlink_to(OPENDATA / "fr-en-ips-colleges-ap2022.csv")
    cases = {"missing.csv": "not_found", "bad.csv": "schema_mismatch", "short.csv": "schema_mismatch",
             "empty.csv": "empty", "escape.csv": "invalid_location"}
    for path, code in cases.items():
        spec = spec_with("fr-en-ips-colleges-ap2022", {"kind": "file", "root": "t", "path": path, "format": "csv"})
        with pytest.raises(ConnectorError) as caught:
            list(open_connector(spec, settings).scan())
        assert caught.value.code == code and caught.value.source == "fr-en-ips-colleges-ap2022", (path, caught.value)
    with pytest.raises(ConnectorError) as caught:
        list(open_connector(SourceSpec.model_validate(example("fr-en-ips-colleges-ap2022")), settings).scan(["nope"]))
    assert caught.value.code == "unknown_column"
    unknown_root = spec_with("fr-en-ips-colleges-ap2022", {"kind": "file", "root": "nowhere", "path": "x.csv"})
    with pytest.raises(ConnectorError) as caught:
        open_connector(unknown_root, settings)
    assert caught.value.code == "location_refused" and "no file root 'nowhere'" in caught.value.detail


def test_parquet_files_probe_exactly(tmp_path: Path, home: Path) -> None:
    path = build_demo_pupils(home / "warehouse", n=3000)
    settings = load_settings(home)
    spec = SourceSpec.model_validate(example("eleves-synthetiques"))
    probe = open_connector(spec, settings).probe()
    assert probe.rows == 3000 and probe.exact
    table = scan_all(spec, settings, ["ine", "birth_date"])
    assert table.num_rows == 3000 and table.schema.field("birth_date").type == pa.date32()
    assert pq.ParquetFile(path).metadata.num_rows == 3000


# -- http ----------------------------------------------------------------------------------
class FileServer:
    """Serves the vendored files under Opendatasoft-style export paths, on loopback, over HTTP or
    (with a server context) HTTPS. `redirects` maps a path to the Location it answers 302 with.
    Requests in proxy form (an absolute URL, as clients send to an HTTP proxy) are served by
    their path, so the server can stand in for an egress proxy too."""

    def __init__(self, files: dict[str, tuple[bytes, str]], redirects: dict[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.hits: list[str] = []
        server, redirects = self, redirects or {}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                server.hits.append(self.path)
                path = urlsplit(self.path).path
                if path in redirects:
                    self.send_response(302)
                    self.send_header("Location", redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if path == "/private":
                    self.send_error(401)
                    return
                if path not in files:
                    self.send_error(404)
                    return
                body, kind = files[path]
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.base = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


EXPORTS = "/api/explore/v2.1/catalog/datasets/fr-en-ips-colleges-ap2022/exports"


@pytest.fixture(scope="module")
def http_files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileServer]:
    import pyarrow.csv as pacsv

    csv = (OPENDATA / "fr-en-ips-colleges-ap2022.csv").read_bytes()
    spec = SourceSpec.model_validate(example("fr-en-ips-colleges-ap2022"))
    types = {c.name: pa.string() if c.type.value == "string" else None for c in spec.schema_}
    table = pacsv.read_csv(OPENDATA / "fr-en-ips-colleges-ap2022.csv", parse_options=pacsv.ParseOptions(delimiter=";"),
                           convert_options=pacsv.ConvertOptions(column_types={k: v for k, v in types.items() if v}))
    parquet = tmp_path_factory.mktemp("http") / "ips.parquet"
    pq.write_table(table, parquet, row_group_size=1000)
    records = table.slice(0, 500).to_pylist()
    server = FileServer({
        f"{EXPORTS}/csv": (csv, "text/csv"),
        f"{EXPORTS}/parquet": (parquet.read_bytes(), "application/octet-stream"),
        f"{EXPORTS}/json": (json.dumps(records).encode(), "application/json"),
        f"{EXPORTS}/jsonl": ("\n".join(json.dumps(r) for r in records).encode(), "application/jsonl"),
        "/empty.csv": (b"", "text/csv"),
        "/without-ips.json": (json.dumps([{k: v for k, v in r.items() if k != "IPS"} for r in records]).encode(),
                              "application/json"),
    })
    yield server
    server.close()


@pytest.mark.parametrize("fmt,rows", [("csv", 6973), ("parquet", 6973), ("json", 500), ("jsonl", 500)])
def test_http_reads_opendatasoft_exports(http_files: FileServer, settings, fmt: str, rows: int) -> None:
    spec = spec_with("fr-en-ips-colleges-ap2022", {"kind": "http", "url": f"{http_files.base}{EXPORTS}/{fmt}",
                                                  "format": "json" if fmt == "jsonl" else fmt})
    table = scan_all(spec, settings, ["Code du département", "UAI", "IPS"])
    assert table.num_rows == rows
    assert table.column("Code du département")[0].as_py() == "001"
    assert table.schema.field("IPS").type == pa.float64()


@pytest.mark.parametrize("fmt", ["csv", "json", "jsonl"])
def test_http_probe_reports_the_schema_found_in_the_first_rows(http_files: FileServer, settings, fmt: str) -> None:
    spec = spec_with("fr-en-ips-colleges-ap2022", {"kind": "http", "url": f"{http_files.base}{EXPORTS}/{fmt}",
                                                  "format": "json" if fmt == "jsonl" else fmt})
    probe = open_connector(spec, settings).probe()
    assert probe.schema.names == [c.name for c in spec.schema_]
    assert probe.schema.field("Code du département").type == pa.string()  # '001', declared a string
    assert probe.schema.field("IPS").type == pa.float64()
    assert probe.rows is not None and abs(probe.rows - (6973 if fmt == "csv" else 500)) <= 0.2 * (
        6973 if fmt == "csv" else 500)


def test_http_probe_shows_a_declared_column_the_data_lacks(http_files: FileServer, settings) -> None:
    spec = spec_with("fr-en-ips-colleges-ap2022", {"kind": "http", "url": f"{http_files.base}/without-ips.json",
                                                  "format": "json"})
    probe = open_connector(spec, settings).probe()
    assert "IPS" not in probe.schema.names and "UAI" in probe.schema.names
    with pytest.raises(ConnectorError) as caught:
        list(open_connector(spec, settings).scan(["UAI", "IPS"]))
    assert caught.value.code == "schema_mismatch" and "'IPS'" in caught.value.detail


def test_http_parquet_probe_checks_reachability_only(http_files: FileServer, settings) -> None:
    """Its schema sits in a footer a plain GET reaches only after the whole file: the declared
    schema is echoed and the rows are unknown (the README says so)."""
    spec = spec_with("fr-en-ips-colleges-ap2022", {"kind": "http", "url": f"{http_files.base}{EXPORTS}/parquet",
                                                  "format": "parquet"})
    probe = open_connector(spec, settings).probe()
    assert probe.rows is None and probe.schema.names == [c.name for c in spec.schema_]


CSV_URL = f"{EXPORTS}/csv"


def csv_source(url: str) -> SourceSpec:
    return spec_with("fr-en-ips-colleges-ap2022", {"kind": "http", "url": url, "format": "csv"})


def http_failure(url: str, settings: Any) -> ConnectorError:
    with pytest.raises(ConnectorError) as caught:
        list(open_connector(csv_source(url), settings).scan())
    return caught.value


def test_http_errors(http_files: FileServer, settings, home: Path) -> None:
    def code(url: str, s: Any = settings) -> str:
        return http_failure(url, s).code

    assert code(f"{http_files.base}/nothing") == "not_found"
    assert code(f"{http_files.base}/private") == "unauthorised"
    assert code(f"{http_files.base}/empty.csv") == "empty"
    assert code(f"http://127.0.0.1:{free_port()}/x.csv") == "unreachable"
    # A catalog entry must not make the controller fetch internal addresses unless the site says so.
    strict = load_settings(home, http_allow_private=False, http_hosts=HOSTS)
    hits = len(http_files.hits)
    assert code(f"{http_files.base}{EXPORTS}/csv", strict) == "invalid_location"
    assert code("http://169.254.169.254/latest/meta-data", strict) == "invalid_location"
    assert len(http_files.hits) == hits  # refused before any request


# -- http: redirects -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def redirecting(http_files: FileServer) -> Iterator[FileServer]:
    """A second server whose paths answer 302: to the file server, along a chain, elsewhere."""
    chain = {f"/hop/{i}": f"/hop/{i + 1}" for i in range(8)}
    server = FileServer({}, redirects=chain | {
        "/moved": f"{http_files.base}{CSV_URL}",
        "/relative": "/hop/5",
        "/to-metadata": "http://169.254.169.254/latest/meta-data/iam",
        "/to-file": "file:///etc/passwd",
        "/hop/8": f"{http_files.base}{CSV_URL}",
    })
    yield server
    server.close()


def test_http_follows_redirects_to_the_data(redirecting: FileServer, settings) -> None:
    table = scan_all(csv_source(f"{redirecting.base}/moved"), settings, ["UAI"])
    assert table.num_rows == 6973
    # /relative -> /hop/5 .. /hop/8 -> the file: five redirects, the most a source may take.
    assert scan_all(csv_source(f"{redirecting.base}/relative"), settings, ["UAI"]).num_rows == 6973


def test_http_gives_up_after_too_many_redirects(redirecting: FileServer, settings) -> None:
    error = http_failure(f"{redirecting.base}/hop/0", settings)
    assert error.code == "unreachable" and "redirected more than 5 times" in error.detail


def test_http_refuses_a_redirect_out_of_http(redirecting: FileServer, settings) -> None:
    error = http_failure(f"{redirecting.base}/to-file", settings)
    assert error.code == "invalid_location" and "'file:'" in error.detail


def test_http_refuses_a_redirect_into_a_host_the_organisation_may_not_use(
        redirecting: FileServer, http_files: FileServer, home: Path) -> None:
    """A host open to the source's organisation answers 302 to another organisation's host: the
    hop is refused by the ownership rule before it is asked."""
    port = urlsplit(redirecting.base).port
    only_this_one = load_settings(home, http_allow_private=True, http_hosts={f"127.0.0.1:{port}": [PUBLISHER]})
    hits = len(http_files.hits)
    error = http_failure(f"{redirecting.base}/moved", only_this_one)
    assert error.code == "location_refused" and error.field == "connector.url"
    assert f"127.0.0.1:{urlsplit(http_files.base).port}" in error.detail
    assert len(http_files.hits) == hits  # the other host was never asked


@pytest.fixture
def public_dns(monkeypatch: pytest.MonkeyPatch, redirecting: FileServer) -> None:
    """A fake DNS in which warehouse.example.org is a public address, and the loopback server
    reached through it as the site's egress proxy: the only way, on a machine without internet,
    to have a public first hop answer with a redirect to an internal address."""
    import connectors.http as http

    real = http.resolve
    monkeypatch.setattr(http, "resolve", lambda host: ["93.184.215.14"] if host == "warehouse.example.org" else real(host))
    monkeypatch.setenv("HTTP_PROXY", redirecting.base)
    monkeypatch.setenv("NO_PROXY", "")


def test_http_checks_every_redirect_hop_against_the_address_rule(
        public_dns: None, redirecting: FileServer, home: Path) -> None:
    strict = load_settings(home, http_allow_private=False, http_hosts=HOSTS)
    hits = len(redirecting.hits)
    error = http_failure("http://warehouse.example.org/to-metadata", strict)
    assert error.code == "invalid_location" and "169.254.169.254" in error.detail
    # The public hop was asked (through the proxy); the metadata service never was.
    assert redirecting.hits[hits:] == ["http://warehouse.example.org/to-metadata"]
    # A redirect to the loopback file server is refused the same way.
    error = http_failure("http://warehouse.example.org/moved", strict)
    assert error.code == "invalid_location" and "127.0.0.1" in error.detail


# -- https ------------------------------------------------------------------------------------
class Authority:
    """A throw-away certificate authority, and server certificates it signs."""

    def __init__(self, directory: Path, name: str = "bulles test CA") -> None:
        import datetime as dt

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self._x509, self._hashes, self._ec, self._serialization = x509, hashes, ec, serialization
        self.directory, self.key = directory, ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.timezone.utc)
        self.not_before, self.not_after = now - dt.timedelta(minutes=5), now + dt.timedelta(hours=1)
        self.certificate = (x509.CertificateBuilder().subject_name(self.name).issuer_name(self.name)
                            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                            .not_valid_before(self.not_before).not_valid_after(self.not_after)
                            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                            .sign(self.key, hashes.SHA256()))
        self.bundle = directory / "ca.pem"
        self.bundle.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))

    def server_context(self, names: list[Any]) -> ssl.SSLContext:
        x509, serialization = self._x509, self._serialization
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        certificate = (x509.CertificateBuilder().subject_name(x509.Name([])).issuer_name(self.name)
                       .public_key(key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(self.not_before).not_valid_after(self.not_after)
                       .add_extension(x509.SubjectAlternativeName(names), critical=True)
                       .sign(self.key, self._hashes.SHA256()))
        stem = self.directory / f"server-{x509.random_serial_number()}"
        stem.with_suffix(".crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        stem.with_suffix(".key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(stem.with_suffix(".crt"), stem.with_suffix(".key"))
        return context


@pytest.fixture(scope="module")
def authority(tmp_path_factory: pytest.TempPathFactory) -> Authority:
    return Authority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def https_files(authority: Authority, http_files: FileServer) -> Iterator[FileServer]:
    import ipaddress

    from cryptography import x509

    csv = (OPENDATA / "fr-en-ips-colleges-ap2022.csv").read_bytes()
    server = FileServer({CSV_URL: (csv, "text/csv")}, redirects={"/downgrade": f"{http_files.base}{CSV_URL}"},
                        tls=authority.server_context([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]))
    yield server
    server.close()


def test_https_source_is_read_when_its_authority_is_trusted(https_files: FileServer, authority: Authority,
                                                            home: Path) -> None:
    trusting = load_settings(home, http_allow_private=True, http_ca_bundle=authority.bundle, http_hosts=HOSTS)
    spec = csv_source(f"{https_files.base}{CSV_URL}")
    assert open_connector(spec, trusting).probe().schema.names == [c.name for c in spec.schema_]
    table = scan_all(spec, trusting, ["UAI", "IPS"])
    assert table.num_rows == 6973 and table.schema.field("IPS").type == pa.float64()


def test_https_with_an_unknown_authority_is_untrusted(https_files: FileServer, settings) -> None:
    error = http_failure(f"{https_files.base}{CSV_URL}", settings)  # certifi's bundle only
    assert error.code == "untrusted" and "CERTIFICATE_VERIFY_FAILED" in error.detail


def test_https_with_a_certificate_for_another_host_is_untrusted(authority: Authority, home: Path) -> None:
    from cryptography import x509

    server = FileServer({CSV_URL: (b"a;b\n1;2\n", "text/csv")},
                        tls=authority.server_context([x509.DNSName("warehouse.example.org")]))
    try:
        trusting = load_settings(home, http_allow_private=True, http_ca_bundle=authority.bundle, http_hosts=HOSTS)
        error = http_failure(f"{server.base}{CSV_URL}", trusting)
        assert error.code == "untrusted" and "127.0.0.1" in error.detail
        assert server.hits == []  # nothing was asked of a server that could not prove who it is
    finally:
        server.close()


def test_https_is_never_downgraded_by_a_redirect(https_files: FileServer, authority: Authority,
                                                 http_files: FileServer, home: Path) -> None:
    trusting = load_settings(home, http_allow_private=True, http_ca_bundle=authority.bundle, http_hosts=HOSTS)
    hits = len(http_files.hits)
    error = http_failure(f"{https_files.base}/downgrade", trusting)
    assert error.code == "invalid_location" and "plain HTTP" in error.detail
    assert len(http_files.hits) == hits


def test_a_ca_bundle_that_is_not_pem_is_refused_at_start(home: Path, tmp_path: Path) -> None:
    from pydantic import ValidationError

    junk = tmp_path / "ca.pem"
    junk.write_text("not a certificate")
    for path in (junk, tmp_path / "missing.pem"):
        with pytest.raises(ValidationError) as caught:
            load_settings(home, http_ca_bundle=path)
        assert "http_ca_bundle" in str(caught.value)


# -- json ------------------------------------------------------------------------------------
class CountingStream:
    """A non-seekable byte stream that remembers how far it has been read."""

    def __init__(self, data: bytes) -> None:
        self.data, self.position = data, 0

    def read(self, size: int = -1) -> bytes:
        end = len(self.data) if size < 0 else min(len(self.data), self.position + size)
        chunk, self.position = self.data[self.position:end], end
        return chunk

    def seekable(self) -> bool:
        return False


JSON_DECLARED = pa.schema([("uai", pa.string()), ("ips", pa.float64()), ("day", pa.date32()), ("n", pa.int64())])


def json_source(shape: str, rows: int) -> bytes:
    records = [{"uai": f"{i:07d}A", "ips": i / 10, "day": "2023-09-04", "n": i, "extra": "x"} for i in range(rows)]
    if shape == "array":  # as Opendatasoft's exports/json, with a BOM and white space
        return b"\xef\xbb\xbf \n" + json.dumps(records, indent=1).encode()
    return "\n".join(json.dumps(r) for r in records).encode() + b"\n"


@pytest.mark.parametrize("shape", ["array", "lines"])
def test_json_is_streamed_batch_by_batch(shape: str) -> None:
    """Each batch comes out having read only a little past it: memory follows the batch, not
    the source. Checked by how far the stream had been read when each batch came out."""
    rows = 200_000
    stream = CountingStream(json_source(shape, rows))
    read_at: list[int] = []
    total = 0
    for batch in json_batches(stream, "s", JSON_DECLARED, ["uai", "day", "n"], 1000):
        read_at.append(stream.position)
        assert batch.num_rows <= 1000 and batch.schema.names == ["uai", "day", "n"]
        total += batch.num_rows
    assert total == rows
    assert read_at[0] < len(stream.data) / 10, (read_at[0], len(stream.data))
    assert len(set(read_at)) > 5  # reading went on between batches, not all at once


@pytest.mark.parametrize("shape", ["array", "lines"])
def test_json_values_are_typed_as_declared(shape: str) -> None:
    table = pa.Table.from_batches(list(json_batches(CountingStream(json_source(shape, 3)), "s", JSON_DECLARED,
                                                    ["n", "day", "ips", "uai"], 2)))
    assert table.schema == pa.schema([("n", pa.int64()), ("day", pa.date32()), ("ips", pa.float64()),
                                      ("uai", pa.string())])
    assert table.to_pylist()[2] == {"n": 2, "day": dt.date(2023, 9, 4), "ips": 0.2, "uai": "0000002A"}


@pytest.mark.parametrize("body,code", [
    (b"", "empty"), (b"  \n", "empty"), (b"[1, 2]", "schema_mismatch"), (b'[{"n": 1},', "schema_mismatch"),
    (b'{"n": "many"}\n', "schema_mismatch"), (b'[{"n": "many"}]', "schema_mismatch"),
])
def test_bad_json_names_the_source_and_the_problem(body: bytes, code: str) -> None:
    with pytest.raises(ConnectorError) as caught:
        list(json_batches(CountingStream(body), "a-source", JSON_DECLARED, ["n"], 10))
    assert caught.value.code == code and caught.value.source == "a-source"


# -- postgresql -----------------------------------------------------------------------------
@pytest.fixture
def warehouse_db(pg_server: str, home: Path) -> Iterator[tuple[str, Any]]:
    import uuid

    name = "w_" + uuid.uuid4().hex[:10]
    with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
        conn.execute("DO $$ BEGIN CREATE ROLE nologin_role NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    url = f"{pg_server}/{name}"
    pupils = pq.read_table(build_demo_pupils(home / "warehouse", n=2500))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE SCHEMA scolarite")
        conn.execute("""CREATE TABLE scolarite.eleves (ine text, birth_date date, sex text, uai text, commune text,
            level text, school_year text, social_category text, scholarship bool, disability_plan bool,
            absences_half_days int, grade_french numeric(4,1), grade_maths double precision)""")
        with conn.cursor().copy("COPY scolarite.eleves FROM STDIN") as copy:
            for row in pupils.to_pylist():
                copy.write_row(list(row.values()))
        conn.execute("ANALYZE scolarite.eleves")
        conn.execute("CREATE SEQUENCE scolarite.counter")
    urls = {"rectorat": url, "ghost": f"{pg_server}/no_such_db",
            "closed": f"postgresql://nologin_role@{pg_server.split('@')[1]}/{name}"}
    settings = load_settings(home, databases={key: {"url": value, "organisations": [PUBLISHER]}
                                              for key, value in urls.items()})
    try:
        yield url, settings
    finally:
        with psycopg.connect(f"{pg_server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pg_spec(**location: Any) -> SourceSpec:
    return spec_with("eleves-synthetiques", {"kind": "postgresql", "database": "rectorat", **location})


def test_postgresql_table_and_query_are_streamed_with_declared_types(warehouse_db) -> None:
    _, settings = warehouse_db
    table_spec = pg_spec(table="scolarite.eleves")
    probe = open_connector(table_spec, settings).probe()
    assert probe.rows == 2500
    batches = list(open_connector(table_spec, settings).scan(["ine", "birth_date", "grade_french"], batch_rows=700))
    assert [b.num_rows for b in batches] == [700, 700, 700, 400]
    table = pa.Table.from_batches(batches)
    assert table.schema.field("birth_date").type == pa.date32() and table.schema.field("grade_french").type == pa.float64()
    query_spec = pg_spec(query="SELECT * FROM scolarite.eleves WHERE level = 'CP'")
    cp = pa.Table.from_batches(list(open_connector(query_spec, settings).scan(["ine", "level"])))
    assert cp.num_rows > 0 and set(cp.column("level").to_pylist()) == {"CP"}


def test_postgresql_errors(warehouse_db) -> None:
    _, settings = warehouse_db

    def code(spec: SourceSpec, columns: list[str] | None = None) -> str:
        with pytest.raises(ConnectorError) as caught:
            list(open_connector(spec, settings).scan(columns))
        return caught.value.code

    assert code(pg_spec(table="scolarite.absent")) == "not_found"
    assert code(pg_spec(table="scolarite.eleves", database="ghost")) == "not_found"
    assert code(pg_spec(table="scolarite.eleves", database="closed")) == "unauthorised"
    writing = pg_spec(query="WITH gone AS (DELETE FROM scolarite.eleves RETURNING *) SELECT * FROM gone")
    assert code(writing) == "invalid_location"
    side_effect = pg_spec(query="SELECT e.*, nextval('scolarite.counter') AS n FROM scolarite.eleves e")
    with pytest.raises(ConnectorError, match="tries to write"):  # the session is read-only
        list(open_connector(side_effect, settings).scan(["ine"]))
    assert code(pg_spec(table="scolarite.eleves"), ["nope"]) == "unknown_column"
    renamed = pg_spec(query="SELECT ine AS other_name FROM scolarite.eleves")
    assert code(renamed, ["ine"]) == "schema_mismatch"
    wrong_type = pg_spec(query="SELECT sex AS birth_date, ine FROM scolarite.eleves")
    assert code(wrong_type, ["birth_date"]) == "schema_mismatch"
    url, _ = warehouse_db
    with psycopg.connect(url) as conn:  # the failed write attempt changed nothing
        assert conn.execute("SELECT count(*) FROM scolarite.eleves").fetchone()[0] == 2500
    unreachable = load_settings(settings.home, databases={"rectorat": {
        "url": f"postgresql://postgres@127.0.0.1:{free_port()}/x", "organisations": [PUBLISHER]}})
    with pytest.raises(ConnectorError) as caught:
        list(open_connector(pg_spec(table="scolarite.eleves"), unreachable).scan())
    assert caught.value.code == "unreachable"


# -- what the public text of an error holds ---------------------------------------------------
def test_public_texts_name_the_problem_never_the_location_or_a_value(
        http_files: FileServer, warehouse_db, tmp_path: Path, home: Path) -> None:
    """Each connector's failures, as anyone but the provider and admins read them (`str()`),
    hold neither the path, root, URL, host, database, table nor the value read; the detail
    (for the provider, admins and the log) has them."""
    root = tmp_path / "secret-root"
    root.mkdir()
    value = "ecole.0350122T@ac-rennes.fr"
    header = (OPENDATA / "fr-en-ips-colleges-ap2022.csv").read_bytes().split(b"\n", 1)[0]
    (root / "bad-value.csv").write_bytes(header + f"\n2022-2023;LYON;001;AIN;X;C;01025;B;public;{value};1;2\n".encode())
    (root / "bad.parquet").write_bytes(b"PAR1 not really parquet")
    _, pg = warehouse_db
    settings = load_settings(home, http_allow_private=True, http_hosts=HOSTS, databases=pg.databases,
                             file_roots={"t": {"path": root, "organisations": [PUBLISHER]}})
    ips = "fr-en-ips-colleges-ap2022"
    cases = [  # (source, columns scanned, code, what only the detail may say)
        (spec_with(ips, {"kind": "file", "root": "t", "path": "bad-value.csv", "format": "csv"}), None,
         "schema_mismatch", value),
        (spec_with(ips, {"kind": "file", "root": "t", "path": "absent/ips.csv", "format": "csv"}), None,
         "not_found", "absent/ips.csv"),
        (spec_with(ips, {"kind": "file", "root": "t", "path": "bad.parquet", "format": "parquet"}), None,
         "schema_mismatch", "bad.parquet"),
        (csv_source(f"{http_files.base}/nothing/secret-path.csv"), None, "not_found", "secret-path"),
        (csv_source(f"http://127.0.0.1:{free_port()}/secret-path.csv"), None, "unreachable", "secret-path"),
        (pg_spec(table="scolarite.absent"), None, "not_found", "scolarite"),
        (pg_spec(table="scolarite.eleves", database="ghost"), None, "not_found", "ghost"),
        (pg_spec(query="SELECT 1 AS birth_date, ine FROM scolarite.eleves"), None, "schema_mismatch", 'column "sex"'),
        (pg_spec(query="SELECT 'x' || ine AS absences_half_days FROM scolarite.eleves"), ["absences_half_days"],
         "schema_mismatch", "x99"),
    ]
    for spec, columns, code, secret in cases:
        with pytest.raises(ConnectorError) as caught:
            list(open_connector(spec, settings).scan(columns))
        error = caught.value
        public = str(error)
        assert error.code == code, (spec.connector, error.full)
        assert secret in error.full, (spec.connector, error.full)
        leaked = [s for s in (secret, str(root), "secret-root", "127.0.0.1", "rectorat", "scolarite", "ghost", value)
                  if s in public]
        assert leaked == [], (public, leaked)
        assert public.startswith(f"source '{spec.id}': ") and error.incident in public
