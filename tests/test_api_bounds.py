"""What any caller can send, sent: numbers beyond 64 bits, YAML values JSON cannot hold, deep
nesting, alias bombs, oversized bodies, control characters, floods of gateway denials. Each is
refused with a 4xx naming what is wrong and changes nothing, or is counted instead of logged
one by one. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
import yaml
from sqlalchemy import select

from conftest import Site, example
from controller.api.sources import SOURCE_BODY_BYTES
from controller.audit.log import Event
from controller.store import AuditEvent, SourceRow

PUPILS = "eleves-synthetiques"
HUGE = 2**64


def post_yaml(site: Site, text: str, user: str = "alice"):
    return site.client.post("/api/v1/sources", content=text.encode(),
                            headers=site.headers(user, **{"Content-Type": "application/yaml"}))


def put_yaml(site: Site, text: str, user: str = "alice"):
    return site.client.put(f"/api/v1/sources/{PUPILS}", content=text.encode(),
                           headers=site.headers(user, **{"Content-Type": "application/yaml"}))


def pupils_yaml(**changes) -> str:
    return yaml.safe_dump({**example(PUPILS), **changes}, allow_unicode=True)


def events(site: Site, prefix: str) -> list[AuditEvent]:
    with site.platform.sessions() as s:
        return list(s.scalars(select(AuditEvent).where(AuditEvent.action.startswith(prefix)).order_by(AuditEvent.seq)))


# -- item 7: an event exists if and only if its change does ------------------------------------
def test_a_number_beyond_64_bits_registers_nothing_and_records_nothing(site: Site) -> None:
    """The attack of issue 11: a YAML integer >= 2**64 used to register the source with no
    `source.registered` event (the event could not be encoded after the change was made)."""
    before = site.counts()
    answer = post_yaml(site, pupils_yaml().replace("number_of_records: 5000", f"number_of_records: {HUGE}"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "number_of_records"
    assert site.counts() == before


def test_a_number_beyond_64_bits_updates_nothing_and_records_nothing(site: Site) -> None:
    assert post_yaml(site, pupils_yaml()).status_code == 201
    before = site.counts()
    answer = put_yaml(site, pupils_yaml().replace("number_of_records: 5000", f"number_of_records: {HUGE}"))
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "number_of_records", answer.text
    assert site.counts() == before
    with site.platform.sessions() as s:
        assert s.get(SourceRow, PUPILS).version == 1
    assert [e.action for e in events(site, "source.")] == ["source.registered"]


def test_the_same_body_in_range_is_registered_with_its_event(site: Site) -> None:
    answer = post_yaml(site, pupils_yaml(number_of_records=2**62))
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "number_of_records"  # past 10**15
    answer = post_yaml(site, pupils_yaml(number_of_records=10**15))
    assert answer.status_code == 201, answer.text
    assert [e.subject_id for e in events(site, "source.registered")] == [PUPILS]


# -- the source document parser: only what JSON can carry ---------------------------------------
YAML_WITHOUT_JSON_FORM = [
    ("nan", "number_of_records: .nan", "number_of_records"),
    ("infinity", "number_of_records: .inf", "number_of_records"),
    ("huge negative", f"number_of_records: -{HUGE}", "number_of_records"),
    ("a date for a number", "number_of_records: 2022-09-01", "number_of_records"),
    ("binary", "provenance: !!binary aGVsbG8=", "provenance"),
    ("a set", "keywords: !!set {a, b}", "keywords"),
    ("a key that is not text", "1: one", "body"),
]


@pytest.mark.parametrize("label,line,field", YAML_WITHOUT_JSON_FORM, ids=[c[0] for c in YAML_WITHOUT_JSON_FORM])
def test_yaml_values_without_a_json_form_are_refused_naming_the_field(site: Site, label, line, field) -> None:
    document = pupils_yaml().replace("number_of_records: 5000\n", "")
    before = site.counts()
    answer = post_yaml(site, document + line + "\n")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert site.counts() == before


def test_a_yaml_date_where_text_is_expected_is_taken_as_its_iso_text(site: Site) -> None:
    body = example(PUPILS)
    body["temporal"] = {"start": "2022-09-01"}
    text = yaml.safe_dump(body, allow_unicode=True).replace("start: '2022-09-01'", "start: 2022-09-01")
    assert "start: 2022-09-01" in text
    created = post_yaml(site, text)
    assert created.status_code == 201, created.text
    assert created.json()["spec"]["temporal"] == {"start": "2022-09-01"}


def test_deep_yaml_nesting_is_refused_not_a_crash(site: Site) -> None:
    """5,000 levels used to raise RecursionError in PyYAML's constructor: a 500."""
    before = site.counts()
    answer = post_yaml(site, "description: " + "[" * 5000 + "]" * 5000 + "\n")
    assert answer.status_code in (400, 422), answer.text  # libyaml's own limit (1,000) or ours
    answer = post_yaml(site, "description: " + "[" * 100 + "]" * 100 + "\n")
    assert answer.status_code == 422, answer.text
    assert "nested deeper than 32 levels" in answer.json()["error"]["message"]
    deep_json = site.client.post("/api/v1/sources", content=b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}",
                                 headers=site.headers("alice", **{"Content-Type": "application/json"}))
    assert deep_json.status_code == 422 and "nested deeper" in deep_json.json()["error"]["message"]
    assert site.counts() == before


def test_a_yaml_alias_bomb_is_refused_before_it_expands(site: Site) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    bomb = "\n".join(lines) + "\ndescription: *a8\n"  # 10**9 values once expanded, 600 bytes as written
    answer = post_yaml(site, bomb)
    assert answer.status_code == 422, answer.text
    assert "more than 100,000 values" in answer.json()["error"]["message"]
    recursive = post_yaml(site, "description: &d [*d]\n")
    assert recursive.status_code == 422 and "contains it" in recursive.json()["error"]["message"]


def test_the_role_is_checked_before_the_body_is_parsed(site: Site, monkeypatch) -> None:
    """A researcher posting a huge YAML to /sources gets 403 before any parse."""
    import controller.api.sources as api

    parsed: list[bytes] = []
    monkeypatch.setattr(api, "parse_document", lambda raw, kind: parsed.append(raw) or {})
    for answer in (post_yaml(site, "[" * 100_000, user="bruno"), put_yaml(site, "x: [", user="bruno"),
                   site.client.post(f"/api/v1/sources/{PUPILS}/retire", json={"reason": "x"},
                                    headers=site.headers("bruno"))):
        assert answer.status_code == 403, answer.text
    assert parsed == []


def test_source_documents_are_parsed_off_the_event_loop(site: Site, monkeypatch) -> None:
    import controller.api.sources as api

    loops: list[bool] = []
    real = api.parse_document

    def watched(raw: bytes, kind: str):
        try:
            asyncio.get_running_loop()
            loops.append(True)
        except RuntimeError:
            loops.append(False)
        return real(raw, kind)

    monkeypatch.setattr(api, "parse_document", watched)
    assert post_yaml(site, pupils_yaml()).status_code == 201
    assert loops == [False]  # no event loop in the thread that parsed: a worker thread


def test_each_endpoint_has_its_own_body_limit(site: Site) -> None:
    big = pupils_yaml(description="x" * (SOURCE_BODY_BYTES + 1))
    answer = post_yaml(site, big)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "payload_too_large"
    assert str(SOURCE_BODY_BYTES) in answer.json()["error"]["message"]
    small = site.client.post("/api/v1/access-requests/r-x/review", headers=site.headers("alice"),
                             json={"verdict": "approve", "comment": "x" * (100 * 1024)})
    assert small.status_code == 413 and str(64 * 1024) in small.json()["error"]["message"]


# -- control characters ---------------------------------------------------------------------------
def _with(mutate):
    body = copy.deepcopy(example(PUPILS))
    mutate(body)
    return body


CONTROL = [
    ("NUL in the title", _with(lambda b: b.update(title="Élèves\x00")), "title"),
    ("line break in the title", _with(lambda b: b.update(title="Élèves\nsynthétiques")), "title"),
    ("right-to-left override in the title", _with(lambda b: b.update(title="Élèves \u202etxt.exe")), "title"),
    ("NUL in a column name", _with(lambda b: b["schema"][1].update(name="sex\x00")), "schema.1.name"),
    ("NUL in a file path", _with(lambda b: b["connector"].update(path="pupils\x00.parquet")), "connector.path"),
    ("escape in a keyword", _with(lambda b: b.update(keywords=["\x1b[31mrouge"])), "keywords.0"),
]


@pytest.mark.parametrize("label,body,field", CONTROL, ids=[c[0] for c in CONTROL])
def test_control_characters_are_refused_in_every_text_field(site: Site, label, body, field) -> None:
    before = site.counts()
    answer = site.client.post("/api/v1/sources", json=body, headers=site.headers("alice"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert "control character" in answer.json()["error"]["message"]
    assert site.counts() == before


def test_line_breaks_are_kept_in_free_text(site: Site) -> None:
    created = site.client.post("/api/v1/sources", json=_with(lambda b: b.update(description="Ligne 1\n\tLigne 2")),
                               headers=site.headers("alice"))
    assert created.status_code == 201, created.text


def test_control_characters_are_refused_in_export_requests(site: Site) -> None:
    """Found by the fuzz on PostgreSQL: a NUL in the bubble id of an export request was a 500."""
    for body, field in (({"bubble": "b-\x00", "paths": ["a.csv"], "justification": "x"}, "bubble"),
                        ({"bubble": "b-1", "paths": ["a\x00.csv"], "justification": "x"}, "paths.0"),
                        ({"bubble": "b-1", "paths": ["a.csv"], "justification": "x\x00"}, "justification")):
        answer = site.client.post("/api/v1/exports", json=body, headers=site.headers("bruno"))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text


@pytest.mark.parametrize("url", ["/api/v1/sources/eleves%00", "/api/v1/sources?q=%00", "/api/v1/sources?publisher=a%0Ab",
                                 "/api/v1/projects/p%00", "/bubbles/b-%00/api/status"])
def test_control_characters_in_a_url_are_refused_before_routing(site: Site, url: str) -> None:
    answer = site.client.get(url, headers=site.headers("bruno"))
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_url", answer.text


# -- numbers outside what the platform holds ------------------------------------------------------
@pytest.mark.parametrize("url,user", [
    (f"/api/v1/sources?offset={2**63}", None),
    (f"/api/v1/sources?offset={10**9 + 1}", None),
    (f"/api/v1/audit/events?after_seq={2**63}", "david"),
    (f"/api/v1/audit/events/{HUGE}", "david"),
    (f"/api/v1/audit/events/1/proof?checkpoint={2**63}", "david"),
    (f"/api/v1/audit/consistency?first=1&second={HUGE}", "david"),
])
def test_numbers_beyond_their_bounds_in_a_url_are_422(site: Site, url: str, user: str | None) -> None:
    answer = site.client.get(url, headers=site.headers(user) if user else {})
    assert answer.status_code == 422, answer.text


SEEDS = [-1, "abc", 1.5, {}, HUGE, True]


@pytest.mark.parametrize("seed", SEEDS, ids=[repr(s) for s in SEEDS])
def test_a_bad_synthetic_seed_is_a_422_naming_it(site: Site, seed) -> None:
    assert site.client.post("/api/v1/sources", json=example(PUPILS), headers=site.headers("alice")).status_code == 201
    before = site.counts()
    answer = site.client.post("/api/v1/views", headers=site.headers("admin"), json={
        "source": PUPILS, "mode": "synthetic", "project": "p", "parameters": {"seed": seed}})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "parameters.seed"
    assert site.counts() == before


@pytest.mark.parametrize("mode,parameters,field", [
    ("synthetic", {"size": HUGE}, "parameters.size"),
    ("synthetic", {"size": 0}, "parameters.size"),
    ("synthetic", {"k": 3}, "parameters.k"),
    ("aggregated", {"dimensions": ["sex"], "measures": 5}, "parameters.measures"),
    ("aggregated", {"dimensions": "sex"}, "parameters.dimensions"),
    ("aggregated", {"dimensions": ["sex"], "threshold": 2**70}, "parameters.threshold"),
    ("generalised", {"k": "five"}, "parameters.k"),
    ("pseudonymised", {"seed": 1}, "parameters.seed"),
])
def test_view_parameters_are_checked_per_mode(site: Site, mode: str, parameters: dict, field: str) -> None:
    assert site.client.post("/api/v1/sources", json=example(PUPILS), headers=site.headers("alice")).status_code == 201
    answer = site.client.post("/api/v1/views", headers=site.headers("admin"), json={
        "source": PUPILS, "mode": mode, "project": "p", "parameters": parameters})
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


@pytest.mark.parametrize("resources,field", [
    ({"memory_mb": HUGE}, "resources.memory_mb"),
    ({"disk_mb": 2**63}, "resources.disk_mb"),
    ({"cpu": "Infinity"}, "resources.cpu"),
    ({"lifetime_hours": "NaN"}, "resources.lifetime_hours"),
])
def test_bubble_resources_beyond_their_bounds_are_422(site: Site, resources: dict, field: str) -> None:
    raw = json.dumps({"project": "p", "resources": resources}).replace('"Infinity"', "Infinity").replace('"NaN"', "NaN")
    answer = site.client.post("/api/v1/bubbles", content=raw,
                              headers=site.headers("bruno", **{"Content-Type": "application/json"}))
    if answer.status_code == 503:
        pytest.skip("no bubble runtime on this machine: the body is checked after the runtime")
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field


# -- the gateway's denials are counted, not logged one by one -------------------------------------
def test_anonymous_gateway_requests_are_aggregated_not_logged_one_by_one(site: Site) -> None:
    """Anonymous requests used to write one `gateway.denied` event each: a flood of the log."""
    for i in range(150):
        assert site.client.get(f"/bubbles/b-{i:04d}/api/status").status_code == 404
    assert site.client.get("/bubbles/b-0000/api/status", headers=site.headers("alice")).status_code == 404
    denied = events(site, "gateway.denied")
    assert [e.actor for e in denied] == ["anonymous", "user:alice"]  # the first of each, at once
    site.client.app.state.gate.attempts.flush()
    site.platform.audit.append(Event("user:t", "test.barrier", "thing", "x"))  # the counts were queued before it
    summaries = [json.loads(e.details) for e in events(site, "gateway.denied")[2:]]
    assert [(s["count"], s["path"]) for s in summaries] == [(149, "api/status")]


# -- metrics and organisations --------------------------------------------------------------------
def test_metrics_need_an_admin_or_the_metrics_token(site: Site) -> None:
    assert site.client.get("/metrics").status_code == 401
    assert site.client.get("/metrics", headers=site.headers("bruno")).status_code == 403
    assert site.client.get("/metrics", headers=site.headers("admin")).status_code == 200
    assert site.client.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401


def test_the_metrics_token_opens_metrics_and_nothing_else(home, db_url) -> None:
    from fastapi.testclient import TestClient

    from controller.api.app import create_app
    from controller.auth import hash_token
    from controller.config import load_settings
    from controller.platform import Platform

    settings = load_settings(home, database_url=db_url, checkpoint_interval_seconds=0, reconcile_seconds=0,
                             runtime="none", metrics_token_sha256=hash_token("scrape-me"))
    with Platform(settings) as platform:
        client = TestClient(create_app(platform))
        scraper = {"Authorization": "Bearer scrape-me"}
        assert client.get("/metrics", headers=scraper).status_code == 200
        assert "bulles_http_requests_total" in client.get("/metrics", headers=scraper).text
        assert client.get("/api/v1/whoami", headers=scraper).status_code == 401


def test_organisations_are_public_catalog_metadata(site: Site) -> None:
    listed = site.client.get("/api/v1/organisations")
    assert listed.status_code == 200
    assert {o["id"] for o in listed.json()} == {"demo-rennes", "autre-academie", "labo"}
    assert site.client.get("/api/v1/organisations/labo").json()["name"] == "Laboratoire"
