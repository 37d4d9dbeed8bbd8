"""Views through the API: each mode's guarantee, atomic and idempotent materialisation, audit
events, and failures that leave nothing behind. Runs on SQLite and PostgreSQL state."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings as hsettings

from catalog.synthetic import build_demo_pupils
from conftest import Site, example, free_port, remove_bubbles
from connectors.pseudonyms import Pseudonymiser, project_key

PUPILS = "eleves-synthetiques"


@pytest.fixture
def pupils_site(site: Site) -> Site:
    """The pupils source, its provider allowing every mode (tests of mode refusal restrict it)."""
    build_demo_pupils(site.platform.settings.home / "warehouse", n=2000)
    every_mode = example(PUPILS) | {"access_modes": ["raw", "minimised", "pseudonymised", "generalised", "aggregated",
                                                     "synthetic"]}
    assert site.client.post("/api/v1/sources", json=every_mode, headers=site.headers("alice")).status_code == 201
    return site


def build(site: Site, **body):
    return site.client.post("/api/v1/views", json={"source": PUPILS, "project": "projet-a", **body},
                            headers=site.headers("admin"))


def view_table(site: Site, manifest: dict) -> pa.Table:
    return pq.read_table(site.platform.settings.home / "views" / manifest["view"] / "data.parquet")


def real_ines(site: Site) -> set[str]:
    return set(pq.read_table(site.platform.settings.home / "warehouse" / "pupils.parquet",
                             columns=["ine"]).column("ine").to_pylist())


def test_raw_view_is_the_source_and_its_manifest_is_complete(pupils_site: Site) -> None:
    answer = build(pupils_site, mode="raw", columns=["ine", "sex", "grade_maths"], decision_id="d-1")
    assert answer.status_code == 201, answer.text
    manifest = answer.json()
    directory = pupils_site.platform.settings.home / "views" / manifest["view"]
    assert manifest["row_count"] == 2000 and manifest["mode"] == "raw" and manifest["source"] == PUPILS
    assert manifest["policy_decision_id"] == "d-1" and manifest["project"] == "projet-a"
    assert [c["name"] for c in manifest["schema"]] == ["ine", "sex", "grade_maths"]
    digest = hashlib.sha256((directory / "data.parquet").read_bytes()).hexdigest()
    assert manifest["files"] == [{"path": "data.parquet", "sha256": digest, "bytes": (directory / "data.parquet").stat().st_size}]
    assert set(view_table(pupils_site, manifest).column("ine").to_pylist()) == real_ines(pupils_site)
    events = pupils_site.client.get("/api/v1/audit/events", params={"action": "view.materialised"},
                                    headers=pupils_site.headers("david")).json()["items"]
    assert len(events) == 1 and events[0]["decision_id"] == "d-1"
    assert events[0]["details"]["files"]["data.parquet"] == digest
    assert pupils_site.client.get(f"/api/v1/views/{manifest['view']}", headers=pupils_site.headers("admin")).json() == manifest


def test_asking_twice_returns_the_same_view_without_rebuilding(pupils_site: Site) -> None:
    first = build(pupils_site, mode="pseudonymised", columns=["ine", "sex"])
    second = build(pupils_site, mode="pseudonymised", columns=["ine", "sex"])
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.json() == second.json()
    events = pupils_site.client.get("/api/v1/audit/events", params={"action": "view.materialised"},
                                    headers=pupils_site.headers("david")).json()["items"]
    assert len(events) == 1


def test_only_granted_columns_are_read(pupils_site: Site) -> None:
    manifest = build(pupils_site, mode="pseudonymised", columns=["sex", "level"]).json()
    assert [c["name"] for c in manifest["schema"]] == ["sex", "level"]


NON_RAW = [
    ("pseudonymised", {}),
    ("generalised", {"k": 5}),
    ("aggregated", {"dimensions": ["sex", "level"], "measures": ["grade_maths"]}),
    ("synthetic", {"size": 500}),
]


@pytest.mark.parametrize("mode,parameters", NON_RAW, ids=[m for m, _ in NON_RAW])
def test_no_direct_identifier_appears_anywhere_in_a_non_raw_view(pupils_site: Site, mode: str, parameters: dict) -> None:
    answer = build(pupils_site, mode=mode, parameters=parameters)
    assert answer.status_code == 201, answer.text
    table = view_table(pupils_site, answer.json())
    ines = real_ines(pupils_site)
    for column in table.columns:
        values = {str(v) for v in column.to_pylist() if v is not None}
        assert not values & ines, column
    if mode == "pseudonymised":
        assert table.column("ine").null_count == 0 and table.num_rows == 2000


def test_pseudonyms_are_stable_in_a_project_and_unlinkable_across_projects(pupils_site: Site) -> None:
    a1 = view_table(pupils_site, build(pupils_site, mode="pseudonymised", columns=["ine", "sex"]).json())
    a2 = view_table(pupils_site, build(pupils_site, mode="pseudonymised", columns=["ine", "birth_date"]).json())
    b = view_table(pupils_site, pupils_site.client.post("/api/v1/views", json={
        "source": PUPILS, "project": "projet-b", "mode": "pseudonymised", "columns": ["ine", "sex"]},
        headers=pupils_site.headers("admin")).json())
    assert a1.column("ine").to_pylist() == a2.column("ine").to_pylist()
    assert not set(a1.column("ine").to_pylist()) & set(b.column("ine").to_pylist())
    assert len(set(a1.column("ine").to_pylist())) == 2000


@hsettings(max_examples=50, deadline=None)
@given(values=st.lists(st.one_of(st.none(), st.text(min_size=1, max_size=12)), min_size=1, max_size=200),
       cut=st.integers(min_value=1, max_value=200))
def test_pseudonymisation_properties(values: list[str | None], cut: int) -> None:
    """Whatever the values and however they are split into batches: same length, nulls kept,
    equal values get equal pseudonyms, distinct values distinct ones, no value shows through."""
    key = project_key(b"k" * 32, "p")
    whole = Pseudonymiser(key).array(pa.array(values, pa.string())).to_pylist()
    pseudonymiser = Pseudonymiser(key)
    split = (pseudonymiser.array(pa.array(values[:cut], pa.string())).to_pylist()
             + pseudonymiser.array(pa.array(values[cut:], pa.string())).to_pylist())
    assert whole == split and len(whole) == len(values)
    for original, pseudonym in zip(values, whole):
        assert (original is None) == (pseudonym is None)
    mapping = {v: p for v, p in zip(values, whole) if v is not None}
    assert len(set(mapping.values())) == len(mapping)
    assert not set(mapping) & set(mapping.values())
    other = Pseudonymiser(project_key(b"k" * 32, "q")).array(pa.array(values, pa.string())).to_pylist()
    assert not {p for p in whole if p} & {p for p in other if p}


def test_bad_requests_change_nothing(pupils_site: Site) -> None:
    before = pupils_site.counts()
    cases = [
        ({"mode": "raw", "columns": ["ine", "shoe_size"]}, 422, "columns.1"),
        ({"mode": "generalised", "parameters": {"k": 1}}, 422, "parameters.k"),
        ({"mode": "aggregated", "parameters": {"dimensions": []}}, 422, "parameters.dimensions"),
        ({"mode": "aggregated", "parameters": {"dimensions": ["sex"], "measures": ["uai"]}}, 422, "parameters.measures"),
        ({"mode": "aggregated", "parameters": {"dimensions": ["sex", "level", "uai", "commune"]}}, 422,
         "parameters.dimensions"),
        ({"mode": "synthetic", "parameters": {"size": 0}}, 422, "parameters.size"),
        ({"mode": "pseudonymised", "parameters": {"k": 3}}, 422, "parameters.k"),
        ({"mode": "teleported"}, 422, "mode"),
    ]
    for body, status, field in cases:
        answer = build(pupils_site, **body)
        assert answer.status_code == status, (body, answer.text)
        assert answer.json()["error"]["field"] == field, (body, answer.json())
    assert build(pupils_site, mode="raw", source="nope").status_code == 404
    for user in ("alice", "bruno", "david"):
        denied = pupils_site.client.post("/api/v1/views", json={"source": PUPILS, "project": "p", "mode": "raw"},
                                         headers=pupils_site.headers(user))
        assert denied.status_code == 403
    assert pupils_site.counts() == before
    assert not (pupils_site.platform.settings.home / "views").exists() or \
        not any((pupils_site.platform.settings.home / "views").iterdir())


def test_a_mode_the_provider_does_not_allow_is_refused(pupils_site: Site) -> None:
    restricted = pupils_site.client.put(f"/api/v1/sources/{PUPILS}", json=example(PUPILS),
                                        headers=pupils_site.headers("alice"))
    assert restricted.status_code == 200
    for mode in ("raw", "minimised"):
        answer = build(pupils_site, mode=mode)
        assert answer.status_code == 422 and answer.json()["error"]["code"] == "mode_not_allowed"
    assert build(pupils_site, mode="pseudonymised").status_code == 201


def test_minimised_drops_identifiers_even_when_asked_for(pupils_site: Site) -> None:
    manifest = build(pupils_site, mode="minimised", columns=["ine", "sex"]).json()
    assert [c["name"] for c in manifest["schema"]] == ["sex"]
    assert manifest["parameters"]["dropped"] == ["ine"]


def test_a_failing_warehouse_leaves_no_partial_view_and_an_audit_event(pupils_site: Site) -> None:
    (pupils_site.platform.settings.home / "warehouse" / "pupils.parquet").write_bytes(b"PAR1 not really parquet")
    answer = build(pupils_site, mode="pseudonymised")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "warehouse_schema_mismatch"
    assert answer.json()["error"]["source"] == PUPILS
    (pupils_site.platform.settings.home / "warehouse" / "pupils.parquet").unlink()
    missing = build(pupils_site, mode="pseudonymised")
    assert missing.status_code == 502 and missing.json()["error"]["code"] == "warehouse_not_found"
    root = pupils_site.platform.settings.home / "views"
    assert not root.exists() or list(root.iterdir()) == []
    failures = pupils_site.client.get("/api/v1/audit/events", params={"action": "view.failed"},
                                      headers=pupils_site.headers("david")).json()["items"]
    assert [f["details"]["error"] for f in failures] == ["schema_mismatch", "not_found"]


EVERY_MODE = [
    ("raw", {}),
    ("minimised", {}),
    *NON_RAW,
]


def failures(site: Site) -> list[dict]:
    return site.client.get("/api/v1/audit/events", params={"action": "view.failed"},
                           headers=site.headers("david")).json()["items"]


def no_view_left(site: Site) -> bool:
    root = site.platform.settings.home / "views"
    return not root.exists() or list(root.iterdir()) == []


@pytest.mark.parametrize("mode,parameters", EVERY_MODE, ids=[m for m, _ in EVERY_MODE])
def test_an_empty_source_is_refused_in_every_mode(pupils_site: Site, mode: str, parameters: dict) -> None:
    """Synthetic mode included: a model fitted on no row would publish rows of nulls."""
    path = pupils_site.platform.settings.home / "warehouse" / "pupils.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)
    answer = build(pupils_site, mode=mode, parameters=parameters)
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "warehouse_empty" and error["source"] == PUPILS and PUPILS in error["message"]
    assert no_view_left(pupils_site)
    [failure] = failures(pupils_site)
    assert failure["details"]["error"] == "empty" and failure["details"]["source"] == PUPILS
    assert failure["details"]["mode"] == mode


@pytest.mark.parametrize("mode,parameters", EVERY_MODE, ids=[m for m, _ in EVERY_MODE])
def test_rows_in_counts_the_source_in_every_mode(pupils_site: Site, mode: str, parameters: dict) -> None:
    answer = build(pupils_site, mode=mode, parameters=parameters)
    assert answer.status_code == 201, answer.text
    assert answer.json()["statistics"]["rows_in"] == 2000  # read once, even by the two-pass generalisation


def test_a_generalised_view_that_would_suppress_everything_is_refused_naming_k(pupils_site: Site) -> None:
    """Refused rather than published empty: an empty view would read as an empty source, and
    the useful answer is which k and quasi-identifiers left nothing."""
    answer = build(pupils_site, mode="generalised", parameters={"k": 2001})  # more than the 2,000 pupils
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "all_suppressed" and error["source"] == PUPILS
    assert "k=2001" in error["message"] and "all 2000 records" in error["message"] and PUPILS in error["message"]
    assert "birth_date" in error["message"]  # a quasi-identifier of the view is named
    assert no_view_left(pupils_site)
    assert [f["details"]["error"] for f in failures(pupils_site)] == ["all_suppressed"]


def test_a_dimension_value_equal_to_the_total_label_is_a_clear_conflict(pupils_site: Site) -> None:
    path = pupils_site.platform.settings.home / "warehouse" / "pupils.parquet"
    table = pq.read_table(path)
    levels = table.column("level").to_pylist()
    levels[7] = "Total"
    pq.write_table(table.set_column(table.schema.get_field_index("level"), "level", pa.array(levels)), path)
    answer = build(pupils_site, mode="aggregated", parameters={"dimensions": ["sex", "level"]})
    assert answer.status_code == 409, answer.text
    error = answer.json()["error"]
    assert error["code"] == "reserved_value" and error["source"] == PUPILS
    assert PUPILS in error["message"] and "dimension 'level'" in error["message"]
    assert no_view_left(pupils_site)
    [failure] = failures(pupils_site)
    assert failure["details"] | {"error": "reserved_value", "source": PUPILS, "mode": "aggregated"} == failure["details"]


def test_an_unexpected_failure_names_the_source_and_is_recorded(pupils_site: Site,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a transform is still a failed build: an event, nothing left behind, an answer
    naming the source; the exception's text (which may quote data) is not sent."""
    import connectors.synthetic

    def broken(*args, **kwargs):
        raise ZeroDivisionError("value 'secret-ine-123' divided by nothing")

    monkeypatch.setattr(connectors.synthetic, "synthesise", broken)
    answer = build(pupils_site, mode="synthetic", parameters={"size": 10})
    assert answer.status_code == 500
    error = answer.json()["error"]
    assert error["code"] == "internal_error" and error["source"] == PUPILS and PUPILS in error["message"]
    assert "ZeroDivisionError" in error["message"] and "secret-ine-123" not in answer.text
    assert no_view_left(pupils_site)
    assert [f["details"]["error"] for f in failures(pupils_site)] == ["internal_error"]


def test_probe_reports_the_warehouse_schema(pupils_site: Site) -> None:
    probe = pupils_site.client.get(f"/api/v1/sources/{PUPILS}/probe", headers=pupils_site.headers("alice")).json()
    assert probe["rows"] == 2000 and probe["exact"] and probe["missing"] == []
    assert pupils_site.client.get(f"/api/v1/sources/{PUPILS}/probe", headers=pupils_site.headers("olivier")).status_code == 403


def test_probe_reports_what_a_json_file_holds_not_what_is_declared(pupils_site: Site) -> None:
    """JSON and CSV sources are probed from their first rows: a declared column the file lacks
    shows in `missing`, a column holding something else shows its type."""
    table = pq.read_table(pupils_site.platform.settings.home / "warehouse" / "pupils.parquet").slice(0, 50)
    records = table.drop_columns(["sex"]).to_pylist()
    for record in records:
        record["birth_date"] = str(record["birth_date"])
        record["grade_maths"] = "n/a"
    (pupils_site.platform.settings.home / "warehouse" / "pupils.json").write_text(
        json.dumps(records, default=str), encoding="utf-8")
    document = example(PUPILS) | {"id": "eleves-json", "connector": {"kind": "file", "root": "warehouse",
                                                                     "path": "pupils.json", "format": "json"}}
    assert pupils_site.client.post("/api/v1/sources", json=document, headers=pupils_site.headers("alice")).status_code == 201
    probe = pupils_site.client.get("/api/v1/sources/eleves-json/probe", headers=pupils_site.headers("alice")).json()
    assert probe["missing"] == ["sex"] and probe["rows"] == 50 and probe["exact"]
    types = {c["name"]: (c["type"], c["declared"]) for c in probe["columns"]}
    assert types["birth_date"] == ("date32[day]", "date")  # ISO strings that convert: the declared type
    assert types["grade_maths"] == ("string", "float64")  # text where a number is declared


# -- a real S3 warehouse that fails -------------------------------------------------------------


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    from connectors.seaweed import SeaweedFS, ensure_bucket, upload

    base = tmp_path_factory.mktemp("views-s3")
    with SeaweedFS(base / "seaweed") as server:
        creds = server.credentials()
        ensure_bucket(creds, "warehouse")
        upload(creds, "warehouse", "pupils.parquet", build_demo_pupils(base / "data", n=300))
        yield creds


@pytest.fixture
def s3_site(home: Path, db_url: str, seaweed) -> Iterator[Site]:
    """A site whose credential sets are right ("default"), point where nothing listens ("dead"),
    or hold a wrong secret ("wrong"), with one pupils source on S3 per set."""
    from controller.config import load_settings
    from controller.platform import Platform

    sets = {"default": seaweed, "dead": seaweed.model_copy(update={"endpoint": f"http://127.0.0.1:{free_port()}"}),
            "wrong": seaweed.model_copy(update={"secret_key": "not-the-secret-0123456789"})}
    settings = load_settings(home, database_url=db_url, checkpoint_interval_seconds=0, reconcile_seconds=0,
                             s3={name: creds.model_dump() | {"organisations": ["demo-rennes"]}
                                 for name, creds in sets.items()})
    with Platform(settings) as platform:
        site = Site(platform)
        for name in sets:
            document = example(PUPILS) | {"id": f"eleves-s3-{name}", "access_modes": ["pseudonymised"], "connector": {
                "kind": "s3", "bucket": "warehouse", "key": "pupils.parquet", "format": "parquet", "credentials": name}}
            assert site.client.post("/api/v1/sources", json=document, headers=site.headers("alice")).status_code == 201
        yield site


@pytest.mark.parametrize("credential_set,status,code", [("dead", 502, "unreachable"), ("wrong", 502, "unauthorised")])
def test_a_warehouse_that_cannot_be_reached_or_refuses_the_keys_fails_the_view_cleanly(
    s3_site: Site, credential_set: str, status: int, code: str
) -> None:
    source = f"eleves-s3-{credential_set}"
    answer = s3_site.client.post("/api/v1/views", json={"source": source, "project": "projet-a", "mode": "pseudonymised"},
                                 headers=s3_site.headers("admin"))
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == f"warehouse_{code}" and error["source"] == source and source in error["message"]
    assert "not-the-secret" not in answer.text
    assert no_view_left(s3_site)
    [failure] = failures(s3_site)
    assert failure["details"]["error"] == code and failure["details"]["source"] == source
    # The same source through the right keys builds: the failure was the warehouse's, not the view's.
    good = s3_site.client.post("/api/v1/views", json={"source": "eleves-s3-default", "project": "projet-a",
                                                       "mode": "pseudonymised"}, headers=s3_site.headers("admin"))
    assert good.status_code == 201 and good.json()["row_count"] == 300


def test_cli_view_build(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from controller.cli import app

    runner = CliRunner()
    home = tmp_path / "home"
    seeded = runner.invoke(app, ["demo", "--home", str(home), "--no-serve", "--pupils", "300"])
    remove_bubbles(home)  # the demo's bubble is not what this test is about
    assert seeded.exit_code == 0, seeded.output
    built = runner.invoke(app, ["view", "build", PUPILS, "--mode", "aggregated", "--project", "p1", "--home", str(home),
                                "--param", 'dimensions=["sex"]', "--param", 'measures=["grade_maths"]'])
    assert built.exit_code == 0, built.output
    assert '"mode": "aggregated"' in built.output
    bad = runner.invoke(app, ["view", "build", PUPILS, "--mode", "raw", "--project", "p1", "--home", str(home)])
    assert bad.exit_code == 1 and "does not allow 'raw'" in bad.output
