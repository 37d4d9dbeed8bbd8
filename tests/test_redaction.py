"""What errors and documents reveal, and to whom: a researcher whose views fail learns the
source, the problem and an incident id, never the bucket, key, endpoint, host or a value read;
the provider's probe and the server's log have the detail. Locations are shown to the source's
organisation's providers and admins only, wherever a source document is echoed. Against a
real SeaweedFS; API tests on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from conftest import ROOT, Site, example
from controller import accounts
from controller.audit.canonical import canonical
from controller.config import S3Credentials, load_settings
from controller.platform import Platform
from controller.store import AuditEvent, DecisionInput, DecisionRecord

OPENDATA = ROOT / "catalog" / "demo" / "opendata"
EFFECTIFS = "fr-en-ecoles-effectifs-nb_classes"
BUCKET, MISSING_BUCKET = "eleves-rennes", "seau-inexistant-rennes"
KEY, MISSING_KEY = "exports/effectifs-2022.csv", "exports/effectifs-2023-absent.csv"
VALUE = "ecole.0350122T@ac-rennes.fr"  # a cell where a number of classes is declared
BAD_ROW = 1500  # deep in the file: past what a probe reads (64 KiB)
SOURCES = {  # source id -> (bucket, key): a bad cell value, a missing object, a wrong bucket
    "effectifs-valeur": (BUCKET, KEY),
    "effectifs-absent": (BUCKET, MISSING_KEY),
    "effectifs-seau": (MISSING_BUCKET, KEY),
}


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Credentials]:
    from connectors.seaweed import SeaweedFS, ensure_bucket, upload

    base = tmp_path_factory.mktemp("redaction")
    lines = (OPENDATA / f"{EFFECTIFS}.csv").read_bytes().split(b"\n")
    cells = lines[BAD_ROW].split(b";")
    cells[11] = VALUE.encode()  # "Nombre total de classes", declared int64
    lines[BAD_ROW] = b";".join(cells)
    (base / "bad.csv").write_bytes(b"\n".join(lines))
    with SeaweedFS(base / "seaweed") as server:
        creds = server.credentials()
        ensure_bucket(creds, BUCKET)
        upload(creds, BUCKET, KEY, base / "bad.csv")
        yield creds


@pytest.fixture
def s3_site(home: Path, db_url: str, seaweed: S3Credentials) -> Iterator[Site]:
    """demo-rennes's warehouse, three open sources on it that fail, and two more users: a
    researcher of demo-rennes itself, and an auditor who is also one of its providers."""
    owned = seaweed.model_dump() | {"organisations": ["demo-rennes"]}
    settings = load_settings(home, database_url=db_url, checkpoint_interval_seconds=0, reconcile_seconds=0,
                             s3={"rennes": owned})
    with Platform(settings) as platform:
        site = Site(platform)
        for username, roles in (("rita", ["researcher"]), ("paul", ["auditor", "provider"])):
            _, site.tokens[username] = accounts.add_user(platform, "test", username, roles, "demo-rennes")
        for source_id, (bucket, key) in SOURCES.items():
            body = example(EFFECTIFS) | {"id": source_id, "connector": {
                "kind": "s3", "bucket": bucket, "key": key, "format": "csv", "credentials": "rennes"}}
            answer = site.client.post("/api/v1/sources", json=body, headers=site.headers("alice"))
            assert answer.status_code == 201, answer.text
        yield site


def secrets_of(creds: S3Credentials) -> list[str]:
    """Everything a researcher must not read: where the data is, and the value in it."""
    return [BUCKET, MISSING_BUCKET, KEY, MISSING_KEY, "exports/", creds.endpoint.removeprefix("http://"),
            VALUE, "0350122T", "ac-rennes.fr"]


def revealed(text: str, creds: S3Credentials) -> list[str]:
    return [s for s in secrets_of(creds) if s in text]


def grant(site: Site, source_id: str) -> tuple[str, str, str]:
    """A project of bruno's with one raw grant on the source: (project, grant, decision)."""
    today = dt.date.today()
    project = f"p-{source_id}"
    assert site.client.post("/api/v1/projects", headers=site.headers("bruno"), json={
        "id": project, "title": "Classes", "purpose": "research", "legal_basis": "public_task",
        "dpia_reference": "AIPD-1", "start_date": today.isoformat(),
        "end_date": (today + dt.timedelta(days=60)).isoformat()}).status_code == 201
    asked = site.client.post(f"/api/v1/projects/{project}/access-requests", headers=site.headers("bruno"),
                             json={"source": source_id, "justification": "Taille des classes"}).json()
    assert asked["status"] == "granted", asked
    return project, asked["grant"], asked["decision_id"]


def events(site: Site, action: str) -> list[dict[str, Any]]:
    with site.platform.sessions() as session:
        rows = session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq))
        return [json.loads(r.details) for r in rows]


EXPECTED = {  # source -> (status, code, what the public message says)
    "effectifs-valeur": (409, "warehouse_schema_mismatch", "column 'Nombre total de classes' holds a value that is "
                                                           "not of its declared type"),
    "effectifs-absent": (502, "warehouse_not_found", "the source's object does not exist"),
    "effectifs-seau": (502, "warehouse_not_found", "the source's bucket does not exist"),
}
DETAIL = {  # what the provider's probe (with a full scan for the value) says
    "effectifs-valeur": VALUE,
    "effectifs-absent": f"no object '{MISSING_KEY}' in bucket '{BUCKET}'",
    "effectifs-seau": f"no bucket '{MISSING_BUCKET}'",
}


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_a_researcher_s_failed_view_names_the_problem_never_the_location_or_the_value(
        s3_site: Site, seaweed: S3Credentials, source_id: str, caplog: pytest.LogCaptureFixture) -> None:
    _, grant_id, _ = grant(s3_site, source_id)
    with caplog.at_level(logging.WARNING, logger="bulles.warehouse"):
        answer = s3_site.client.post("/api/v1/views", json={"grant": grant_id}, headers=s3_site.headers("bruno"))
    status, code, public = EXPECTED[source_id]
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["source"] == source_id
    assert error["message"] == f"source '{source_id}': {public} (incident {error['incident']})"
    assert revealed(answer.text, seaweed) == []
    # The incident id leads to the detail in the server's log, and the event records it (only).
    [failure] = events(s3_site, "view.failed")
    assert failure["incident"] == error["incident"] and revealed(json.dumps(failure), seaweed) == []
    logged = [r.getMessage() for r in caplog.records if error["incident"] in r.getMessage()]
    assert logged and DETAIL[source_id] in logged[0]


@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_the_provider_s_probe_and_admins_get_the_detail(s3_site: Site, source_id: str) -> None:
    for user in ("alice", "admin"):
        probed = s3_site.client.get(f"/api/v1/sources/{source_id}/probe", params={"scan": True},
                                    headers=s3_site.headers(user))
        status, code, _ = EXPECTED[source_id]
        assert probed.status_code == status and probed.json()["error"]["code"] == code, probed.text
        assert DETAIL[source_id] in probed.json()["error"]["message"]
    # Without the scan, the bad value lies beyond what the probe reads: the file is reachable.
    if source_id == "effectifs-valeur":
        quick = s3_site.client.get(f"/api/v1/sources/{source_id}/probe", headers=s3_site.headers("alice"))
        assert quick.status_code == 200 and "scanned_rows" not in quick.json()
    # Others may not probe: not a researcher of the organisation, not another organisation's provider.
    for user in ("rita", "bruno", "olivier", "david"):
        refused = s3_site.client.get(f"/api/v1/sources/{source_id}/probe", headers=s3_site.headers(user))
        assert refused.status_code == 403, (user, refused.text)


def test_a_clean_scan_reports_the_rows_read(s3_site: Site, seaweed: S3Credentials, home: Path) -> None:
    good = example(EFFECTIFS) | {"id": "effectifs-sain", "connector": {"kind": "file", "root": "demo",
                                                                       "path": f"opendata/{EFFECTIFS}.csv", "format": "csv"}}
    assert s3_site.client.post("/api/v1/sources", json=good, headers=s3_site.headers("alice")).status_code == 201
    probed = s3_site.client.get("/api/v1/sources/effectifs-sain/probe", params={"scan": True},
                                headers=s3_site.headers("alice")).json()
    assert probed["scanned_rows"] == good["number_of_records"]


@pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")
@pytest.mark.parametrize("source_id", sorted(SOURCES))
def test_a_bubble_that_cannot_start_keeps_only_the_public_reason(
        s3_site: Site, seaweed: S3Credentials, source_id: str) -> None:
    project, _, _ = grant(s3_site, source_id)
    assert s3_site.platform.bubbles is not None, s3_site.platform.bubbles_unavailable
    started = s3_site.client.post("/api/v1/bubbles", json={"project": project}, headers=s3_site.headers("bruno"))
    assert started.status_code == 502, started.text
    assert revealed(started.text, seaweed) == [] and EXPECTED[source_id][2] in started.text
    [bubble] = s3_site.client.get("/api/v1/bubbles", params={"project": project}, headers=s3_site.headers("bruno")).json()
    assert bubble["state"] == "failed" and EXPECTED[source_id][2] in bubble["reason"]
    assert revealed(bubble["reason"], seaweed) == []
    [failed] = events(s3_site, "bubble.failed")
    assert revealed(json.dumps(failed), seaweed) == []  # the log holds no location nor value either


# -- locations ------------------------------------------------------------------------------------


def test_locations_are_shown_to_the_organisation_s_providers_and_admins_only(
        s3_site: Site, seaweed: S3Credentials) -> None:
    source = "effectifs-valeur"
    full = {"kind": "s3", "bucket": BUCKET, "key": KEY, "format": "csv", "credentials": "rennes", "endpoint": None}
    for user in ("alice", "admin", "paul"):
        shown = s3_site.client.get(f"/api/v1/sources/{source}", headers=s3_site.headers(user)).json()
        assert {k: v for k, v in shown["spec"]["connector"].items() if v is not None} == \
               {k: v for k, v in full.items() if v is not None}, user
    for user in ("rita", "bruno", "olivier", "david", "chloe", None):
        headers = s3_site.headers(user) if user else {}
        shown = s3_site.client.get(f"/api/v1/sources/{source}", headers=headers).json()
        assert shown["spec"]["connector"] == {"kind": "s3"}, user
        listed = s3_site.client.get("/api/v1/sources", headers=headers).json()
        assert revealed(json.dumps(listed), seaweed) == [], user


def test_auditors_read_decision_inputs_with_locations_redacted(s3_site: Site, seaweed: S3Credentials) -> None:
    _, _, decision_id = grant(s3_site, "effectifs-valeur")
    with s3_site.platform.sessions() as session:
        record = session.get(DecisionRecord, decision_id)
        stored = session.get(DecisionInput, record.input_sha256).document
    assert stored["source"]["connector"]["bucket"] == BUCKET  # the policy saw the whole document
    seen = {user: s3_site.client.get(f"/api/v1/decisions/{decision_id}", headers=s3_site.headers(user))
            for user in ("david", "admin", "paul")}
    audited = seen["david"].json()
    assert seen["david"].status_code == 200 and audited["input"]["source"]["connector"] == {"kind": "s3"}
    assert revealed(seen["david"].text, seaweed) == []
    assert audited["input"] | {"source": stored["source"]} == stored  # only the location is withheld
    assert seen["admin"].json()["input"] == stored and seen["paul"].json()["input"] == stored
    # What is stored, and its hash, did not change.
    with s3_site.platform.sessions() as session:
        again = session.get(DecisionInput, record.input_sha256).document
    assert again == stored and hashlib.sha256(canonical(again)).hexdigest() == record.input_sha256
    assert audited["input_sha256"] == record.input_sha256


def test_no_other_echo_of_a_source_shows_its_location(s3_site: Site, seaweed: S3Credentials) -> None:
    """The catalog's DCAT-AP, access requests, grants and the audit log, as a researcher and an
    auditor read them after the access workflow and a failed view."""
    _, grant_id, _ = grant(s3_site, "effectifs-valeur")
    s3_site.client.post("/api/v1/views", json={"grant": grant_id}, headers=s3_site.headers("bruno"))
    for user in ("bruno", "david"):
        for path in ("/api/v1/catalog", "/api/v1/sources/effectifs-valeur/dcat", "/api/v1/access-requests",
                     "/api/v1/grants", f"/api/v1/grants/{grant_id}", "/api/v1/audit/events?limit=500"):
            answer = s3_site.client.get(path, headers=s3_site.headers(user))
            assert answer.status_code in (200, 403), (path, answer.status_code)
            assert revealed(answer.text, seaweed) == [], (user, path)
