"""The catalog through the API: registration, ownership, bad input, updates, retirement, search.
Runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import copy
import json
import threading

import pytest
import yaml

from conftest import Site, example
from controller.api.sources import SOURCE_BODY_BYTES
from controller.config import FileRoot

PUPILS = "eleves-synthetiques"
IPS = "fr-en-ips-colleges-ap2022"


def post(site: Site, body: dict | str, user: str = "alice", content_type: str = "application/json"):
    content = body if isinstance(body, str) else json.dumps(body)
    return site.client.post("/api/v1/sources", content=content,
                            headers=site.headers(user, **{"Content-Type": content_type}))


def test_provider_registers_from_yaml_and_json(site: Site) -> None:
    yaml_body = yaml.safe_dump(example(PUPILS), allow_unicode=True)
    created = post(site, yaml_body, content_type="application/yaml")
    assert created.status_code == 201, created.text
    assert created.json()["version"] == 1 and created.json()["status"] == "active"
    assert post(site, example(IPS)).status_code == 201
    got = site.client.get(f"/api/v1/sources/{PUPILS}").json()
    assert got["spec"]["schema"][0] == {"name": "ine", "type": "string", "role": "identifier",
                                        "description": got["spec"]["schema"][0]["description"]}
    events = site.client.get("/api/v1/audit/events", params={"action": "source.registered"},
                             headers=site.headers("david")).json()["items"]
    assert [(e["actor"], e["subject"]["id"]) for e in events] == [("user:alice", PUPILS), ("user:alice", IPS)]
    assert len(events[0]["details"]["document_sha256"]) == 64


def test_connector_location_is_shown_only_to_the_owner(site: Site) -> None:
    post(site, example(PUPILS))
    anonymous = site.client.get(f"/api/v1/sources/{PUPILS}").json()["spec"]["connector"]
    other = site.client.get(f"/api/v1/sources/{PUPILS}", headers=site.headers("olivier")).json()["spec"]["connector"]
    owner = site.client.get(f"/api/v1/sources/{PUPILS}", headers=site.headers("alice")).json()["spec"]["connector"]
    assert anonymous == other == {"kind": "file"}
    assert owner["path"] == "pupils.parquet"


def _bad(mutate):
    body = copy.deepcopy(example(PUPILS))
    mutate(body)
    return body


BAD_INPUT = [
    ("missing title", _bad(lambda b: b.pop("title")), 422, "title"),
    ("mistyped records", _bad(lambda b: b.update(number_of_records="many")), 422, "number_of_records"),
    ("negative records", _bad(lambda b: b.update(number_of_records=-1)), 422, "number_of_records"),
    ("unknown column role", _bad(lambda b: b["schema"][2].update(role="secret")), 422, "schema.2.role"),
    ("unknown column type", _bad(lambda b: b["schema"][0].update(type="varchar")), 422, "schema.0.type"),
    ("duplicate column", _bad(lambda b: b["schema"].append(dict(b["schema"][0]))), 422, "schema.13.name"),
    ("unknown field", _bad(lambda b: b.update(colour="blue")), 422, "colour"),
    ("unknown purpose", _bad(lambda b: b.update(allowed_purposes=["marketing"])), 422, "allowed_purposes.0"),
    ("personal without legal basis", _bad(lambda b: b.pop("legal_basis")), 422, "legal_basis"),
    ("personal but public", _bad(lambda b: b.update(access_rights="PUBLIC")), 422, "access_rights"),
    ("bad retention", _bad(lambda b: b.update(retention="5 years")), 422, "retention"),
    ("bad id", _bad(lambda b: b.update(id="Élèves!")), 422, "id"),
    ("path escaping its root", _bad(lambda b: b["connector"].update(path="../../etc/shadow")), 422, "connector"),
    ("unknown connector", _bad(lambda b: b.update(connector={"kind": "ftp", "path": "x"})), 422, "connector"),
    ("generalising an identifier", _bad(lambda b: b["schema"][0].update(generalisation={"to": "year"})), 422,
     "schema.0"),
    ("unknown publisher", _bad(lambda b: b.update(publisher="nobody")), 403, None),
]


@pytest.mark.parametrize("label,body,status,field", BAD_INPUT, ids=[b[0] for b in BAD_INPUT])
def test_bad_input_is_refused_with_the_field_named_and_nothing_stored(site: Site, label, body, status, field) -> None:
    before = site.counts()
    answer = post(site, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] and error["message"]
    if field is not None:
        assert error["field"].startswith(field), error
    assert site.counts() == before


@pytest.mark.parametrize("content,content_type,code", [
    ("title: [unclosed", "application/yaml", "invalid_yaml"),
    ("{not json", "application/json", "invalid_json"),
    ("", "application/json", "empty_body"),
    ("- a\n- list\n", "application/yaml", "validation_error"),
    ("<source/>", "application/xml", "unsupported_media_type"),
])
def test_unparseable_bodies_are_client_errors(site: Site, content: str, content_type: str, code: str) -> None:
    before = site.counts()
    answer = post(site, content, content_type=content_type)
    assert 400 <= answer.status_code < 500 and answer.json()["error"]["code"] == code
    assert site.counts() == before


def test_invalid_yaml_names_the_line(site: Site) -> None:
    answer = post(site, "id: x\ntitle: ok\n  bad: indent\n", content_type="application/yaml")
    assert "line 3" in answer.json()["error"]["message"]


def test_oversized_payload_is_refused(site: Site) -> None:
    before = site.counts()
    body = example(PUPILS)
    body["description"] = "x" * (site.platform.settings.max_body_bytes + 10)
    answer = post(site, body)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"
    assert site.counts() == before


def test_oversized_streamed_payload_without_length_is_refused(site: Site) -> None:
    """No Content-Length (chunked): the limit is enforced on the bytes as they arrive, the body
    is not read to its end, and nothing is stored."""
    import asyncio

    import httpx

    from controller.api.app import create_app

    limit, chunk = SOURCE_BODY_BYTES, 16 * 1024
    total = limit // chunk + 20
    sent: list[int] = []

    async def body():
        yield b'{"id": "eleves-synthetiques", "description": "'
        for i in range(total):
            sent.append(i)
            yield b"x" * chunk
        yield b'"}'

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(site.platform))
        async with httpx.AsyncClient(transport=transport, base_url="http://bulles.test") as client:
            request = client.build_request("POST", "/api/v1/sources", content=body(),
                                           headers=site.headers("alice", **{"Content-Type": "application/json"}))
            assert "content-length" not in request.headers and request.headers["transfer-encoding"] == "chunked"
            return await client.send(request)

    before = site.counts()
    answer = asyncio.run(run())
    assert answer.status_code == 413 and answer.headers["content-type"] == "application/json"
    assert answer.json()["error"]["code"] == "payload_too_large"
    assert str(limit) in answer.json()["error"]["message"]
    assert len(sent) <= limit // chunk + 1 < total  # refused as soon as the limit was passed
    assert site.counts() == before

    # the same through the synchronous test client, with a plain generator
    generated = site.client.post("/api/v1/sources", content=(b"x" * chunk for _ in range(total)),
                                 headers=site.headers("alice", **{"Content-Type": "application/json"}))
    assert generated.status_code == 413 and generated.json()["error"]["code"] == "payload_too_large"
    assert site.counts() == before


def test_duplicate_identifier_is_a_conflict(site: Site) -> None:
    assert post(site, example(PUPILS)).status_code == 201
    before = site.counts()
    again = post(site, example(PUPILS))
    assert again.status_code == 409 and again.json()["error"]["field"] == "id"
    assert site.counts() == before


def test_concurrent_registrations_of_one_id_store_it_once(site: Site) -> None:
    statuses: list[int] = []

    def register() -> None:
        statuses.append(post(site, example(PUPILS)).status_code)

    threads = [threading.Thread(target=register) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [409] * 7
    assert site.counts()[0] == 1


def test_only_the_owning_organisation_may_register_or_change(site: Site) -> None:
    before = site.counts()
    for user in ("olivier", "bruno", "admin"):
        assert post(site, example(PUPILS), user=user).status_code == 403
    assert site.client.post("/api/v1/sources", json=example(PUPILS)).status_code == 401
    assert site.counts() == before
    post(site, example(PUPILS))
    before = site.counts()
    changed = example(PUPILS) | {"title": "Hijacked"}
    put = site.client.put(f"/api/v1/sources/{PUPILS}", json=changed, headers=site.headers("olivier"))
    assert put.status_code == 403
    moved = example(PUPILS) | {"publisher": "autre-academie"}  # claiming it for one's own organisation
    assert site.client.put(f"/api/v1/sources/{PUPILS}", json=moved, headers=site.headers("olivier")).status_code == 422
    retire = site.client.post(f"/api/v1/sources/{PUPILS}/retire", json={"reason": "x"}, headers=site.headers("olivier"))
    assert retire.status_code == 403
    assert site.counts() == before
    assert site.client.get(f"/api/v1/sources/{PUPILS}").json()["spec"]["title"] != "Hijacked"


def test_update_bumps_the_version_and_honours_if_match(site: Site) -> None:
    post(site, example(PUPILS))
    changed = example(PUPILS) | {"title": "Élèves synthétiques (v2)"}
    ok = site.client.put(f"/api/v1/sources/{PUPILS}", json=changed, headers=site.headers("alice", **{"If-Match": "1"}))
    assert ok.status_code == 200 and ok.json()["version"] == 2
    before = site.counts()
    stale = site.client.put(f"/api/v1/sources/{PUPILS}", json=example(PUPILS),
                            headers=site.headers("alice", **{"If-Match": "1"}))
    assert stale.status_code == 412 and stale.json()["error"]["current"] == 2
    moved = site.client.put(f"/api/v1/sources/{PUPILS}", json=example(PUPILS) | {"publisher": "autre-academie"},
                            headers=site.headers("alice"))
    assert moved.status_code == 403
    other_id = site.client.put(f"/api/v1/sources/{PUPILS}", json=example(IPS), headers=site.headers("alice"))
    assert other_id.status_code == 422 and other_id.json()["error"]["field"] == "id"
    assert site.counts() == before
    assert site.client.get(f"/api/v1/sources/{PUPILS}").json()["spec"]["title"].endswith("(v2)")


def test_updates_and_retirements_are_audited(site: Site) -> None:
    post(site, example(PUPILS))
    v1 = site.client.get(f"/api/v1/sources/{PUPILS}").json()
    changed = example(PUPILS) | {"title": "Élèves synthétiques (v2)"}
    assert site.client.put(f"/api/v1/sources/{PUPILS}", json=changed, headers=site.headers("alice")).status_code == 200
    # refused changes leave no event
    assert site.client.put(f"/api/v1/sources/{PUPILS}", json=changed, headers=site.headers("olivier")).status_code == 403
    assert site.client.put(f"/api/v1/sources/{PUPILS}", json=changed,
                           headers=site.headers("alice", **{"If-Match": "1"})).status_code == 412
    assert site.client.post(f"/api/v1/sources/{PUPILS}/retire", json={"reason": "x"},
                            headers=site.headers("olivier")).status_code == 403
    retired = site.client.post(f"/api/v1/sources/{PUPILS}/retire", json={"reason": "superseded by the 2026 extract"},
                               headers=site.headers("alice"))
    assert retired.status_code == 200
    assert site.client.post(f"/api/v1/sources/{PUPILS}/retire", json={"reason": "again"},
                            headers=site.headers("alice")).status_code == 409

    events = site.client.get("/api/v1/audit/events", params={"subject_type": "source", "subject_id": PUPILS},
                             headers=site.headers("david")).json()["items"]
    assert [(e["action"], e["actor"]) for e in events] == [
        ("source.registered", "user:alice"), ("source.updated", "user:alice"), ("source.retired", "user:alice")]
    registered, updated, retire = (e["details"] for e in events)
    assert updated == {"publisher": "demo-rennes", "sensitivity": "personal", "version": 2,
                       "document_sha256": updated["document_sha256"]}
    assert len(updated["document_sha256"]) == 64 and updated["document_sha256"] != registered["document_sha256"]
    assert registered["version"] == v1["version"] == 1
    assert retire == {"publisher": "demo-rennes", "reason": "superseded by the 2026 extract", "version": 2}
    only = site.client.get("/api/v1/audit/events", params={"action": "source.updated"},
                           headers=site.headers("david")).json()["items"]
    assert [e["subject"]["id"] for e in only] == [PUPILS]


def test_retired_sources_are_kept_hidden_by_default_and_frozen(site: Site) -> None:
    post(site, example(PUPILS))
    post(site, example(IPS))
    retired = site.client.post(f"/api/v1/sources/{IPS}/retire", json={"reason": "superseded"},
                               headers=site.headers("alice"))
    assert retired.status_code == 200 and retired.json()["status"] == "retired"
    assert [i["id"] for i in site.client.get("/api/v1/sources").json()["items"]] == [PUPILS]
    everything = site.client.get("/api/v1/sources", params={"status": "all"}).json()
    assert everything["total"] == 2
    again = site.client.post(f"/api/v1/sources/{IPS}/retire", json={"reason": "x"}, headers=site.headers("alice"))
    assert again.status_code == 409
    frozen = site.client.put(f"/api/v1/sources/{IPS}", json=example(IPS), headers=site.headers("alice"))
    assert frozen.status_code == 409
    assert site.client.get("/api/v1/sources/nope").status_code == 404


def test_search_folds_accents_ranks_titles_first_and_filters(site: Site) -> None:
    for name in (PUPILS, IPS, "fr-en-annuaire-education", "fr-en-ips_ecoles", "fr-en-ecoles-effectifs-nb_classes"):
        assert post(site, example(name)).status_code == 201
    found = site.client.get("/api/v1/sources", params={"q": "eleves"}).json()  # "élèves", folded
    assert {PUPILS, "fr-en-ecoles-effectifs-nb_classes"} <= {i["id"] for i in found["items"]}
    ranked = site.client.get("/api/v1/sources", params={"q": "Élèves absentéisme"}).json()
    assert [i["id"] for i in ranked["items"]] == [PUPILS]
    ulis = site.client.get("/api/v1/sources", params={"q": "ulis"}).json()["items"]
    # a keyword of the effectifs source, only a column name of the annuaire: keyword ranks first
    assert [i["id"] for i in ulis][:2] == ["fr-en-ecoles-effectifs-nb_classes", "fr-en-annuaire-education"]
    ips = site.client.get("/api/v1/sources", params={"q": "position sociale"}).json()
    assert {i["id"] for i in ips["items"]} == {IPS, "fr-en-ips_ecoles"}
    personal = site.client.get("/api/v1/sources", params={"sensitivity": "personal"}).json()
    assert [i["id"] for i in personal["items"]] == [PUPILS]
    soci = site.client.get("/api/v1/sources", params={"theme": "SOCI"}).json()
    assert IPS in {i["id"] for i in soci["items"]}
    none = site.client.get("/api/v1/sources", params={"q": "zzzz_no_such_thing %"}).json()
    assert none["total"] == 0
    by_publisher = site.client.get("/api/v1/sources", params={"publisher": "autre-academie"}).json()
    assert by_publisher["total"] == 0
    page = site.client.get("/api/v1/sources", params={"limit": 2, "offset": 1}).json()
    assert page["total"] == 5 and len(page["items"]) == 2
    assert site.client.get("/api/v1/sources", params={"sensitivity": "secret"}).status_code == 422
    assert site.client.get("/api/v1/sources", params={"limit": 0}).status_code == 422


def test_search_by_publisher_returns_exactly_that_organisations_sources(site: Site) -> None:
    assert post(site, example(PUPILS)).status_code == 201
    assert post(site, example(IPS)).status_code == 201
    # The same open data, in a file root of the other organisation's own.
    settings = site.platform.settings
    settings.file_roots["autre"] = FileRoot(path=settings.file_root("demo"), organisations=["autre-academie"])
    theirs = example(IPS) | {"id": "ips-colleges-autre-academie", "publisher": "autre-academie",
                             "connector": example(IPS)["connector"] | {"root": "autre"}}
    created = post(site, theirs, user="olivier")
    assert created.status_code == 201, created.text
    other = site.client.get("/api/v1/sources", params={"publisher": "autre-academie"}).json()
    assert other["total"] == 1 and [i["id"] for i in other["items"]] == ["ips-colleges-autre-academie"]
    ours = site.client.get("/api/v1/sources", params={"publisher": "demo-rennes"}).json()
    assert ours["total"] == 2 and {i["id"] for i in ours["items"]} == {PUPILS, IPS}
    # combined with the text query: both IPS sources match "position sociale", one per publisher
    both = site.client.get("/api/v1/sources", params={"q": "position sociale"}).json()
    assert {i["id"] for i in both["items"]} == {IPS, "ips-colleges-autre-academie"}
    one = site.client.get("/api/v1/sources", params={"q": "position sociale", "publisher": "autre-academie"}).json()
    assert [i["id"] for i in one["items"]] == ["ips-colleges-autre-academie"]
    assert site.client.get("/api/v1/sources", params={"publisher": "nobody"}).json()["total"] == 0


def test_system_endpoints(site: Site) -> None:
    assert site.client.get("/healthz").json() == {"status": "ok"}
    ready = site.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    post(site, example(PUPILS))
    metrics = site.client.get("/metrics", headers=site.headers("admin")).text
    assert 'bulles_http_requests_total{method="POST",route="/api/v1/sources",status="201"} 1.0' in metrics
    assert "bulles_audit_appends_total" in metrics
    spec = site.client.get("/api/v1/openapi.json").json()
    assert "/api/v1/sources" in spec["paths"] and "SourceSpec" in spec["components"]["schemas"]
    assert site.client.get("/docs").status_code == 200
    missing = site.client.get("/api/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_readiness_fails_when_the_audit_writer_is_stopped(site: Site) -> None:
    site.platform.audit.close()
    ready = site.client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["audit_log"] != "ok"
