"""Views through the API: each mode's guarantee, atomic and idempotent materialisation, audit
events, and failures that leave nothing behind. Runs on SQLite and PostgreSQL state."""

from __future__ import annotations

import hashlib
from pathlib import Path

import hypothesis.strategies as st
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings as hsettings

from catalog.synthetic import build_demo_pupils
from conftest import Site, example, remove_bubbles
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


def test_an_empty_source_is_refused(pupils_site: Site) -> None:
    path = pupils_site.platform.settings.home / "warehouse" / "pupils.parquet"
    table = pq.read_table(path)
    pq.write_table(table.slice(0, 0), path)
    answer = build(pupils_site, mode="pseudonymised")
    assert answer.status_code == 409 and answer.json()["error"]["code"] == "warehouse_empty"
    root = pupils_site.platform.settings.home / "views"
    assert list(root.iterdir()) == []


def test_probe_reports_the_warehouse_schema(pupils_site: Site) -> None:
    probe = pupils_site.client.get(f"/api/v1/sources/{PUPILS}/probe", headers=pupils_site.headers("alice")).json()
    assert probe["rows"] == 2000 and probe["exact"] and probe["missing"] == []
    assert pupils_site.client.get(f"/api/v1/sources/{PUPILS}/probe", headers=pupils_site.headers("olivier")).status_code == 403


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
