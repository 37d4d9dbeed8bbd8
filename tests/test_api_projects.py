"""Projects and the ids outsiders can probe: reviews and revocations answer strangers as if
the id did not exist; members are users of the site, in bounded number; what grants were
decided on stays; a change that cannot be stored is a 4xx. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from conftest import Site, example
from test_access import IPS, PUPILS, project_body
from controller import accounts
from controller.projects import MAX_MEMBERS


@pytest.fixture
def asked(site: Site) -> tuple[Site, str, str]:
    """A pending request on the pupils (personal) and a grant on the IPS (open), both of bruno's
    project; zoe is a researcher outside it."""
    for name in (PUPILS, IPS):
        assert site.client.post("/api/v1/sources", json=example(name), headers=site.headers("alice")).status_code == 201
    _, site.tokens["zoe"] = accounts.add_user(site.platform, "test", "zoe", ["researcher"], "labo")
    assert site.client.post("/api/v1/projects", json=project_body(), headers=site.headers("bruno")).status_code == 201

    def ask(source: str) -> dict:
        answer = site.client.post("/api/v1/projects/projet-a/access-requests", headers=site.headers("bruno"),
                                  json={"source": source, "justification": "Étude"})
        assert answer.status_code == 201, answer.text
        return answer.json()

    pending, granted = ask(PUPILS), ask(IPS)
    assert pending["status"] == "pending_review" and granted["status"] == "granted"
    return site, pending["id"], granted["grant"]


def _same_as_missing(site: Site, path: str, real: str, missing: str, user: str, body: dict) -> None:
    seen = site.client.post(path.format(real), json=body, headers=site.headers(user))
    absent = site.client.post(path.format(missing), json=body, headers=site.headers(user))
    assert seen.status_code == absent.status_code == 404, (user, seen.text)
    assert seen.json()["error"]["message"].replace(real, "ID") == absent.json()["error"]["message"].replace(missing, "ID")
    assert seen.json().keys() == absent.json().keys()


@pytest.mark.parametrize("user", ["olivier", "zoe", "chloe"])
def test_strangers_cannot_tell_a_request_or_a_grant_exists(asked, user: str) -> None:
    """Reviews and revocations used to answer 403 naming the publisher for an existing id and
    404 for an unknown one: an oracle of which ids exist, and whose they are."""
    site, request_id, grant_id = asked
    before = site.counts()
    _same_as_missing(site, "/api/v1/access-requests/{}/review", request_id, "r-00000000000000000000", user,
                     {"verdict": "approve", "comment": "ok"})
    _same_as_missing(site, "/api/v1/grants/{}/revoke", grant_id, "g-00000000000000000000", user, {"reason": "x"})
    assert site.counts() == before


def test_those_who_may_see_a_request_are_told_why_they_may_not_review_it(asked) -> None:
    site, request_id, grant_id = asked
    for user in ("bruno", "david"):  # a member of the project, an auditor: they see it listed
        answer = site.client.post(f"/api/v1/access-requests/{request_id}/review", headers=site.headers(user),
                                  json={"verdict": "approve", "comment": "ok"})
        assert answer.status_code == 403, (user, answer.text)
    assert site.client.post(f"/api/v1/grants/{grant_id}/revoke", headers=site.headers("alice"),
                            json={"reason": "fin"}).status_code == 200


def test_a_project_name_is_public_and_a_taken_one_reveals_nothing_else(asked) -> None:
    """Project ids are names researchers choose and share (URLs, requests seen by providers):
    a taken name answers 409 to anyone, and nothing more about the project."""
    site, _, _ = asked
    taken = site.client.post("/api/v1/projects", json=project_body(title="Autre"), headers=site.headers("zoe"))
    assert taken.status_code == 409 and taken.json()["error"]["code"] == "project_exists"
    assert "Absentéisme" not in taken.text and "bruno" not in taken.text
    assert site.client.get("/api/v1/projects/projet-a", headers=site.headers("zoe")).status_code == 404


# -- members ----------------------------------------------------------------------------------------
def test_members_must_be_enabled_users_of_the_site(asked) -> None:
    """20,000 unknown members used to be accepted on a project."""
    site, _, _ = asked
    accounts.set_disabled(site.platform, "test", "zoe", True)
    before = site.counts()
    crowd = [{"username": f"u{i:05d}", "role": "member"} for i in range(20_000)]
    answer = site.client.patch("/api/v1/projects/projet-a", json={"members": crowd}, headers=site.headers("bruno"))
    assert answer.status_code in (413, 422), answer.text
    too_many = [{"username": f"u{i:03d}", "role": "member"} for i in range(MAX_MEMBERS + 1)]
    answer = site.client.patch("/api/v1/projects/projet-a", json={"members": too_many}, headers=site.headers("bruno"))
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "members"
    unknown = site.client.patch("/api/v1/projects/projet-a", headers=site.headers("bruno"),
                                json={"members": [{"username": "bruno", "role": "owner"},
                                                  {"username": "nobody", "role": "member"}]})
    assert unknown.status_code == 422 and unknown.json()["error"]["field"] == "members.1.username"
    disabled = site.client.post("/api/v1/projects", headers=site.headers("bruno"),
                                json=project_body("projet-b", members=[{"username": "zoe", "role": "member"}]))
    assert disabled.status_code == 422 and disabled.json()["error"]["field"] == "members.0.username"
    assert site.counts() == before
    ok = site.client.patch("/api/v1/projects/projet-a", headers=site.headers("bruno"),
                           json={"members": [{"username": "bruno", "role": "owner"}, {"username": "chloe"}]})
    assert ok.status_code == 200, ok.text


# -- what cannot be removed -------------------------------------------------------------------------
@pytest.mark.parametrize("field", ["title", "description", "end_date", "members"])
def test_removing_a_required_field_is_a_422_not_a_500(asked, field: str) -> None:
    site, _, _ = asked
    before = site.counts()
    answer = site.client.patch("/api/v1/projects/projet-a", json={field: None}, headers=site.headers("bruno"))
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == field
    assert site.counts() == before


@pytest.mark.parametrize("field", ["legal_basis", "dpia_reference"])
def test_what_active_grants_were_decided_on_is_not_removed(asked, field: str) -> None:
    site, _, grant_id = asked
    before = site.counts()
    answer = site.client.patch("/api/v1/projects/projet-a", json={field: None}, headers=site.headers("bruno"))
    assert answer.status_code == 409, answer.text
    assert answer.json()["error"] == {**answer.json()["error"], "code": "grants_rely_on_it", "field": field, "grants": 1}
    assert site.counts() == before
    assert site.client.post(f"/api/v1/grants/{grant_id}/revoke", headers=site.headers("alice"),
                            json={"reason": "fin"}).status_code == 200
    removed = site.client.patch("/api/v1/projects/projet-a", json={field: None}, headers=site.headers("bruno"))
    assert removed.status_code == 200 and removed.json()[field] is None


def test_control_characters_are_refused_in_project_fields(asked) -> None:
    site, _, _ = asked
    for changes, field in (({"title": "a\x00b"}, "title"), ({"dpia_reference": "AIPD\r\n2026"}, "dpia_reference"),
                           ({"description": "a\u202eb"}, "description")):
        answer = site.client.patch("/api/v1/projects/projet-a", json=changes, headers=site.headers("bruno"))
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, answer.text
    assert site.client.patch("/api/v1/projects/projet-a", json={"description": "deux\nlignes"},
                             headers=site.headers("bruno")).status_code == 200
