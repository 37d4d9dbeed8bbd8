"""Whose warehouse a source may name: the rule as a pure function, and the attack of one
organisation's provider on another's warehouse, through the API, at registration, at use and
at start. API tests run on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from catalog.synthetic import build_demo_pupils
from conftest import Site, example
from connectors.location import FileLocation, HttpLocation, PostgresqlLocation, S3Location
from connectors.ownership import Refusal, refusal, refused_sources, url_refusal
from controller.api.app import create_app
from controller.config import Settings, load_settings
from controller.platform import Platform
from controller.store import AuditEvent

A, B = "demo-rennes", "autre-academie"
HOME = Path("/srv/bulles")


def site_settings(**values: Any) -> Settings:
    """Settings as literal objects: what the rule is given, nothing read from a file."""
    return Settings(home=HOME, **values)


KEYS = {"endpoint": "http://127.0.0.1:8333", "access_key": "AK", "secret_key": "SK"}
SETTINGS = site_settings(
    s3={"rennes": {**KEYS, "organisations": [A]},
        "default": {**KEYS, "organisations": [B]},
        "partage": {**KEYS, "organisations": [A, B], "buckets": ["commun", "eleves/rennes/"]}},
    databases={"rectorat": {"url": "postgresql://ro@db/entrepot", "organisations": [A]},
               "scolarite": {"url": "postgresql://ro@db/scol", "organisations": [A], "schemas": ["eleves"]}},
    file_roots={"autre": {"path": "/srv/autre", "organisations": [B]}},
    http_hosts={"data.education.gouv.fr": ["*"], "entrepot.ac-rennes.fr": [A], "mixte.example.org": ["*"],
                "mixte.example.org:8443": [A]},
)


def s3(**location: Any) -> S3Location:
    return S3Location(kind="s3", **{"bucket": "eleves", "key": "pupils.parquet", **location})


@pytest.mark.parametrize("location, organisation, expected", [
    # credential sets: one's own, another's, one that does not exist, the default one
    (s3(credentials="rennes"), A, None),
    (s3(credentials="rennes"), B, Refusal("connector.credentials",
                                          "organisation 'autre-academie' has no S3 credential set 'rennes' on this site")),
    (s3(), B, None),  # 'default' is B's
    (s3(), A, Refusal("connector.credentials",
                      "organisation 'demo-rennes' has no S3 credential set 'default' on this site")),
    # a shared set, narrowed to buckets and directories
    (s3(credentials="partage", bucket="commun", key="a/b.csv"), B, None),
    (s3(credentials="partage", key="rennes/pupils.parquet"), A, None),
    (s3(credentials="partage", key=None, prefix="rennes/2024/"), B, None),
    (s3(credentials="partage", bucket="autre", key="x.csv"), A, Refusal(
        "connector.bucket", "credential set 'partage' does not cover bucket 'autre' (it covers commun, eleves/rennes/)")),
    (s3(credentials="partage", key="nantes/pupils.parquet"), A, Refusal(
        "connector.key", "credential set 'partage' does not cover 'nantes/pupils.parquet' in bucket 'eleves' "
                         "(it covers commun, eleves/rennes/)")),
    (s3(credentials="partage", key="rennes-et-nantes/pupils.parquet"), A, Refusal(  # a directory, not a string prefix
        "connector.key", "credential set 'partage' does not cover 'rennes-et-nantes/pupils.parquet' in bucket "
                         "'eleves' (it covers commun, eleves/rennes/)")),
    (s3(credentials="partage", key=None, prefix="rennes"), A, Refusal(  # would also list rennes-et-nantes/
        "connector.prefix", "credential set 'partage' does not cover 'rennes' in bucket 'eleves' "
                            "(it covers commun, eleves/rennes/)")),
    (s3(credentials="partage", key="rennes/../nantes/pupils.parquet"), A, Refusal(
        "connector.key", "credential set 'partage' does not cover 'rennes/../nantes/pupils.parquet' in bucket "
                         "'eleves' (it covers commun, eleves/rennes/)")),
    # databases, and schemas
    (PostgresqlLocation(kind="postgresql", database="rectorat", query="SELECT 1"), A, None),
    (PostgresqlLocation(kind="postgresql", database="rectorat", table="t"), B, Refusal(
        "connector.database", "organisation 'autre-academie' has no database 'rectorat' on this site")),
    (PostgresqlLocation(kind="postgresql", database="ailleurs", table="t"), B, Refusal(
        "connector.database", "organisation 'autre-academie' has no database 'ailleurs' on this site")),
    (PostgresqlLocation(kind="postgresql", database="scolarite", table="eleves.inscriptions"), A, None),
    (PostgresqlLocation(kind="postgresql", database="scolarite", table="inscriptions"), A, Refusal(
        "connector.table", "database 'scolarite' is limited to tables of schemas eleves: give the table as "
                           "schema.table in one of them")),
    (PostgresqlLocation(kind="postgresql", database="scolarite", table="rh.salaires"), A, Refusal(
        "connector.table", "database 'scolarite' is limited to tables of schemas eleves: give the table as "
                           "schema.table in one of them")),
    (PostgresqlLocation(kind="postgresql", database="scolarite", query="SELECT * FROM rh.salaires"), A, Refusal(
        "connector.query", "database 'scolarite' is limited to tables of schemas eleves: name a table, not a query")),
    # file roots: the built-in ones are the demo organisation's
    (FileLocation(kind="file", root="warehouse", path="pupils.parquet"), A, None),
    (FileLocation(kind="file", root="warehouse", path="pupils.parquet"), B, Refusal(
        "connector.root", "organisation 'autre-academie' has no file root 'warehouse' on this site")),
    (FileLocation(kind="file", root="demo", path="opendata/x.csv"), B, Refusal(
        "connector.root", "organisation 'autre-academie' has no file root 'demo' on this site")),
    (FileLocation(kind="file", root="autre", path="x.csv"), B, None),
    # HTTP hosts: open to all, owned, unlisted; a port entry decides before its host's
    (HttpLocation(kind="http", url="https://data.education.gouv.fr/api/x.csv"), B, None),
    (HttpLocation(kind="http", url="https://DATA.education.gouv.fr:443/api/x.csv"), B, None),
    (HttpLocation(kind="http", url="https://entrepot.ac-rennes.fr/eleves.csv"), A, None),
    (HttpLocation(kind="http", url="https://entrepot.ac-rennes.fr/eleves.csv"), B, Refusal(
        "connector.url", "this site does not open host 'entrepot.ac-rennes.fr' to organisation 'autre-academie'")),
    (HttpLocation(kind="http", url="https://ailleurs.example.org/eleves.csv"), A, Refusal(
        "connector.url", "this site does not open host 'ailleurs.example.org' to organisation 'demo-rennes'")),
    (HttpLocation(kind="http", url="https://data.education.gouv.fr@entrepot.ac-rennes.fr/eleves.csv"), B, Refusal(
        "connector.url", "this site does not open host 'entrepot.ac-rennes.fr' to organisation 'autre-academie'")),
    (HttpLocation(kind="http", url="https://mixte.example.org/x.csv"), B, None),
    (HttpLocation(kind="http", url="https://mixte.example.org:8443/x.csv"), B, Refusal(
        "connector.url", "this site does not open host 'mixte.example.org:8443' to organisation 'autre-academie'")),
    (HttpLocation(kind="http", url="https://mixte.example.org:8443/x.csv"), A, None),
])
def test_the_rule(location: Any, organisation: str, expected: Refusal | None) -> None:
    assert refusal(location, organisation, SETTINGS) == expected


def test_a_refusal_says_the_same_whether_another_organisation_has_the_location_or_nobody_does() -> None:
    """What B is told must not reveal what A has: a set, database, root or host of A's is
    refused in the very words used for one that does not exist."""
    nothing = site_settings()
    for owned in (s3(credentials="rennes"), PostgresqlLocation(kind="postgresql", database="rectorat", table="t"),
                  FileLocation(kind="file", root="warehouse", path="pupils.parquet"),
                  HttpLocation(kind="http", url="https://entrepot.ac-rennes.fr/eleves.csv")):
        absent = site_settings(file_roots={"warehouse": {"path": "/x", "organisations": []}})
        assert refusal(owned, B, SETTINGS) == refusal(owned, B, nothing if owned.kind != "file" else absent)


def test_redirect_targets_are_checked_by_the_same_rule() -> None:
    hosts = SETTINGS.http_hosts
    assert url_refusal("https://data.education.gouv.fr/x", B, hosts) is None
    assert url_refusal("http://entrepot.ac-rennes.fr/x", B, hosts) == Refusal(
        "connector.url", "this site does not open host 'entrepot.ac-rennes.fr' to organisation 'autre-academie'")
    assert url_refusal("http://[::1", B, hosts) is not None  # unparsable: refused, not an error


def test_refused_sources_lists_what_breaks_the_rule() -> None:
    stored = [("a", A, {"kind": "s3", "bucket": "eleves", "key": "k", "credentials": "rennes"}),
              ("b", B, {"kind": "s3", "bucket": "eleves", "key": "k", "credentials": "rennes"}),
              ("c", B, {"kind": "file", "root": "autre", "path": "x.csv", "format": "csv"}),
              ("d", A, {"kind": "ftp", "host": "old.example.org"})]
    assert refused_sources(stored, SETTINGS) == [
        ("b", Refusal("connector.credentials",
                      "organisation 'autre-academie' has no S3 credential set 'rennes' on this site")),
        ("d", Refusal("connector", "the stored location is no longer a valid one"))]


@pytest.mark.parametrize("values, problem", [
    ({"s3": {"x": {**KEYS, "buckets": ["Not A Bucket"]}}}, "not a bucket name"),
    ({"s3": {"x": {**KEYS, "buckets": ["eleves/../rh"]}}}, "not a bucket name"),
    ({"databases": {"x": {"url": "postgresql://db/x", "schemas": ["rh; drop"]}}}, "not schema names"),
    ({"databases": {"x": "postgresql://db/x"}}, "databases.x"),
    ({"http_hosts": {"data.education.gouv.fr/api": ["*"]}}, "host or host:port"),
    ({"http_hosts": {"data.education.gouv.fr:http": ["*"]}}, "host or host:port"),
    ({"http_hosts": {"data.education.gouv.fr": []}}, "organisations it is open to"),
])
def test_ownership_settings_that_make_no_sense_are_refused_at_start(values: dict, problem: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=problem):
        site_settings(**values)


# -- the attack, through the API -----------------------------------------------------------------

OPEN_PUPILS = "eleves-ouvertes"


def open_pupils(connector: dict[str, Any], publisher: str = B) -> dict[str, Any]:
    """The pupils, declared open by a provider who wants them given out raw at once: no column
    is an identifier any more, the licence is open, the sensitivity says there is nothing to protect."""
    body = example("eleves-synthetiques")
    for column in body["schema"]:
        column["role"] = "attribute"
    return body | {"id": OPEN_PUPILS, "publisher": publisher, "sensitivity": "open", "access_rights": "PUBLIC",
                   "licence": "https://www.etalab.gouv.fr/licence-ouverte-open-licence/", "legal_basis": None,
                   "personal_data_categories": [], "access_modes": ["raw"], "applicable_legislation": [],
                   "connector": connector}


A_LOCATIONS = {
    "credentials": {"kind": "s3", "bucket": "eleves", "key": "pupils.parquet", "format": "parquet",
                    "credentials": "rennes"},
    "database": {"kind": "postgresql", "database": "rectorat", "table": "scolarite.eleves"},
    "root": {"kind": "file", "root": "warehouse", "path": "pupils.parquet", "format": "parquet"},
    "url": {"kind": "http", "url": "https://entrepot.ac-rennes.fr/eleves.parquet", "format": "parquet"},
}


def ownership_settings(home: Path, db_url: str, **changes: Any) -> Settings:
    values: dict[str, Any] = {
        "s3": {"rennes": {**KEYS, "organisations": [A]}},
        "databases": {"rectorat": {"url": "postgresql://ro@127.0.0.1:1/entrepot", "organisations": [A]}},
        "http_hosts": {"entrepot.ac-rennes.fr": [A]},
        "file_roots": {"autre": {"path": str(home / "autre"), "organisations": [B]}},
    }
    return load_settings(home, database_url=db_url, checkpoint_interval_seconds=0, reconcile_seconds=0,
                         **(values | changes))


@pytest.fixture
def owned_site(home: Path, db_url: str) -> Iterator[Site]:
    build_demo_pupils(home / "warehouse", n=500)  # demo-rennes's pupils, in its own root
    with Platform(ownership_settings(home, db_url)) as platform:
        yield Site(platform)


def events(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)))


@pytest.mark.parametrize("field", sorted(A_LOCATIONS))
def test_a_provider_cannot_register_an_open_source_on_another_organisations_warehouse(
        owned_site: Site, field: str) -> None:
    """olivier (autre-academie) names demo-rennes's location in an open source: refused at the
    door, naming the field, in words that do not tell whether demo-rennes has that location."""
    before = owned_site.counts()
    answer = owned_site.client.post("/api/v1/sources", json=open_pupils(A_LOCATIONS[field]),
                                    headers=owned_site.headers("olivier"))
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert error["code"] == "validation_error" and error["field"] == f"connector.{field}"
    assert owned_site.counts() == before  # nothing stored, no event
    # The same answer for a location nobody has, but for the name asked.
    name = {"credentials": "rennes", "database": "rectorat", "root": "warehouse", "url": "entrepot.ac-rennes.fr"}[field]
    ghost = {"credentials": "nulle-part", "database": "nulle-part", "root": "nulle-part", "url": "nulle-part.example"}
    elsewhere = dict(A_LOCATIONS[field])
    if field == "url":
        elsewhere["url"] = "https://nulle-part.example/eleves.parquet"
    else:
        elsewhere[field] = ghost[field]
    other = owned_site.client.post("/api/v1/sources", json=open_pupils(elsewhere), headers=owned_site.headers("olivier"))
    assert other.status_code == 422
    assert other.json()["error"]["message"].replace(ghost[field], "?") == error["message"].replace(name, "?")
    # The owner may.
    own = owned_site.client.post("/api/v1/sources", json=open_pupils(A_LOCATIONS[field], publisher=A),
                                 headers=owned_site.headers("alice"))
    assert own.status_code == 201, own.text


def test_a_provider_cannot_move_a_source_onto_another_organisations_warehouse(owned_site: Site) -> None:
    mine = {"kind": "file", "root": "autre", "path": "pupils.parquet", "format": "parquet"}
    assert owned_site.client.post("/api/v1/sources", json=open_pupils(mine),
                                  headers=owned_site.headers("olivier")).status_code == 201
    before = owned_site.counts()
    moved = owned_site.client.put(f"/api/v1/sources/{OPEN_PUPILS}", json=open_pupils(A_LOCATIONS["root"]),
                                  headers=owned_site.headers("olivier"))
    assert moved.status_code == 422 and moved.json()["error"]["field"] == "connector.root"
    assert owned_site.counts() == before
    current = owned_site.client.get(f"/api/v1/sources/{OPEN_PUPILS}", headers=owned_site.headers("olivier")).json()
    assert current["version"] == 1 and current["spec"]["connector"] == mine


def _project_and_grant(site: Site, client: TestClient) -> str:
    today = dt.date.today()
    assert client.post("/api/v1/projects", headers=site.headers("bruno"), json={
        "id": "projet-b", "title": "Élèves", "purpose": "research", "legal_basis": "public_task",
        "dpia_reference": "AIPD-1", "start_date": today.isoformat(),
        "end_date": (today + dt.timedelta(days=90)).isoformat()}).status_code == 201
    asked = client.post("/api/v1/projects/projet-b/access-requests", headers=site.headers("bruno"),
                        json={"source": OPEN_PUPILS, "justification": "Étude"}).json()
    assert asked["status"] == "granted" and asked["mode"] == "raw", asked
    return asked["grant"]


def test_a_location_taken_away_after_registration_is_refused_at_use_and_reported_at_start(
        home: Path, db_url: str, caplog: pytest.LogCaptureFixture) -> None:
    """autre-academie's root holds the pupils; its open source is registered, granted at once
    and viewed. Then the operator gives the root to demo-rennes alone: at the next start the
    source is reported, and its probe, its view and a bubble needing it are all refused."""
    (home / "autre").mkdir(parents=True)
    build_demo_pupils(home / "autre", n=500)
    location = {"kind": "file", "root": "autre", "path": "pupils.parquet", "format": "parquet"}
    with Platform(ownership_settings(home, db_url)) as platform:
        site = Site(platform)
        assert site.client.post("/api/v1/sources", json=open_pupils(location),
                                headers=site.headers("olivier")).status_code == 201
        grant = _project_and_grant(site, site.client)
        built = site.client.post("/api/v1/views", json={"grant": grant}, headers=site.headers("bruno"))
        assert built.status_code == 201 and built.json()["row_count"] == 500
        assert events(platform, "source.locations_refused") == []  # nothing to report while allowed

    taken = {"autre": {"path": str(home / "autre"), "organisations": [A]}}
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="controller.platform"), \
            Platform(ownership_settings(home, db_url, file_roots=taken)) as platform:
        [reported] = events(platform, "source.locations_refused")
        assert reported.actor == "system:platform"
        assert json.loads(reported.details) == {"sources": [{"source": OPEN_PUPILS, "field": "connector.root"}]}
        warned = [r.getMessage() for r in caplog.records if r.name == "controller.platform"]
        assert warned and f"{OPEN_PUPILS} (connector.root)" in warned[0] and str(home) not in warned[0]
        client = TestClient(create_app(platform), raise_server_exceptions=False)

        probed = client.get(f"/api/v1/sources/{OPEN_PUPILS}/probe", headers=site.headers("olivier"))
        assert probed.status_code == 409, probed.text
        assert probed.json()["error"]["code"] == "warehouse_location_refused"
        assert probed.json()["error"]["field"] == "connector.root"
        [refused_probe] = events(platform, "source.probe_refused")
        assert refused_probe.subject_id == OPEN_PUPILS and refused_probe.actor == "user:olivier"
        assert json.loads(refused_probe.details) | {"incident": "-"} == {
            "publisher": B, "error": "location_refused", "field": "connector.root", "incident": "-"}

        viewed = client.post("/api/v1/views", json={"grant": grant}, headers=site.headers("bruno"))
        assert viewed.status_code == 409, viewed.text  # even though the view was built before
        error = viewed.json()["error"]
        assert error["code"] == "warehouse_location_refused" and error["field"] == "connector.root"
        assert "autre" not in error["message"] and str(home) not in viewed.text  # the researcher learns no location
        [failed] = events(platform, "view.failed")
        details = json.loads(failed.details)
        assert details["error"] == "location_refused" and details["field"] == "connector.root"
        assert details["incident"] == error["incident"]

        if os.geteuid() == 0:  # where the local runtime runs: a bubble needing the grant cannot start
            assert platform.bubbles is not None, platform.bubbles_unavailable
            started = client.post("/api/v1/bubbles", json={"project": "projet-b"}, headers=site.headers("bruno"))
            assert started.status_code == 502, started.text
            [bubble] = client.get("/api/v1/bubbles", params={"project": "projet-b"}, headers=site.headers("bruno")).json()
            assert bubble["state"] == "failed" and "not one its organisation may use" in bubble["reason"]
        # The source stays in the catalog.
        assert client.get(f"/api/v1/sources/{OPEN_PUPILS}").json()["status"] == "active"
        assert len(events(platform, "source.locations_refused")) == 1  # once per start, not per request
        assert pq.read_table(home / "autre" / "pupils.parquet").num_rows == 500
