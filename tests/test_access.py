"""Projects and the access workflow through the API, decided by the real Rego policies.
Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from conftest import Site, example
from catalog.synthetic import build_demo_pupils

PUPILS, IPS = "eleves-synthetiques", "fr-en-ips-colleges-ap2022"
TODAY = dt.date.today()


def project_body(pid: str = "projet-a", **changes) -> dict:
    return {"id": pid, "title": "Absentéisme et réussite", "purpose": "research", "legal_basis": "public_task",
            "dpia_reference": "AIPD-2026-07", "start_date": (TODAY - dt.timedelta(days=30)).isoformat(),
            "end_date": (TODAY + dt.timedelta(days=200)).isoformat(), **changes}


@pytest.fixture
def catalog_site(site: Site) -> Site:
    build_demo_pupils(site.platform.settings.home / "warehouse", n=600)
    for name in (PUPILS, IPS):
        assert site.client.post("/api/v1/sources", json=example(name), headers=site.headers("alice")).status_code == 201
    return site


def create(site: Site, user: str = "bruno", **changes):
    return site.client.post("/api/v1/projects", json=project_body(**changes), headers=site.headers(user))


def ask(site: Site, source: str, project: str = "projet-a", user: str = "bruno", **body):
    payload = {"source": source, "justification": "Étude de l'absentéisme au collège", **body}
    return site.client.post(f"/api/v1/projects/{project}/access-requests", json=payload, headers=site.headers(user))


# -- projects --------------------------------------------------------------------------------
def test_a_researcher_creates_a_project_and_only_members_see_it(catalog_site: Site) -> None:
    from controller import accounts

    accounts.add_user(catalog_site.platform, "test", "carla", ["researcher"], "labo")
    created = create(catalog_site, members=[{"username": "carla", "role": "member"}])
    assert created.status_code == 201, created.text
    assert created.json()["members"] == [{"username": "bruno", "role": "owner"}, {"username": "carla", "role": "member"}]
    assert [p["id"] for p in catalog_site.client.get("/api/v1/projects", headers=catalog_site.headers("bruno")).json()] == ["projet-a"]
    assert catalog_site.client.get("/api/v1/projects", headers=catalog_site.headers("olivier")).json() == []
    assert catalog_site.client.get("/api/v1/projects/projet-a", headers=catalog_site.headers("olivier")).status_code == 404
    assert catalog_site.client.get("/api/v1/projects/projet-a", headers=catalog_site.headers("david")).status_code == 200


@pytest.mark.parametrize("changes,status,field", [
    ({"purpose": "marketing"}, 422, "purpose"),
    ({"legal_basis": "because"}, 422, "legal_basis"),
    ({"end_date": "2000-01-01"}, 422, "body"),
    ({"id": "Not An Id"}, 422, "id"),
    ({"members": [{"username": "x", "role": "boss"}]}, 422, "members.0"),
])
def test_bad_projects_are_refused_and_nothing_is_stored(catalog_site: Site, changes: dict, status: int, field: str) -> None:
    before = catalog_site.counts()
    answer = create(catalog_site, **changes)
    assert answer.status_code == status and answer.json()["error"]["field"].startswith(field), answer.json()
    assert catalog_site.counts() == before


def test_only_researchers_create_and_only_owners_change(catalog_site: Site) -> None:
    assert create(catalog_site, user="alice").status_code == 403
    create(catalog_site, members=[{"username": "chloe", "role": "member"}])
    assert create(catalog_site).status_code == 409
    patch = lambda user, body: catalog_site.client.patch("/api/v1/projects/projet-a", json=body,  # noqa: E731
                                                         headers=catalog_site.headers(user))
    assert patch("olivier", {"title": "x"}).status_code == 404
    assert patch("chloe", {"title": "x"}).status_code == 403
    assert patch("bruno", {"purpose": "teaching"}).status_code == 422  # the purpose never changes
    changed = patch("bruno", {"title": "Nouveau titre"})
    assert changed.status_code == 200 and changed.json()["version"] == 2


# -- the decisions of the default policy -----------------------------------------------------
def test_open_data_is_granted_raw_at_once_within_the_project(catalog_site: Site) -> None:
    create(catalog_site)
    answer = ask(catalog_site, IPS)
    assert answer.status_code == 201, answer.text
    decided = answer.json()
    assert (decided["status"], decided["mode"]) == ("granted", "raw") and decided["grant"]
    grant = catalog_site.client.get(f"/api/v1/grants/{decided['grant']}", headers=catalog_site.headers("bruno")).json()
    assert grant["status"] == "active" and grant["expiry"] <= project_body()["end_date"]


def test_personal_data_is_pseudonymised_pending_the_providers_review(catalog_site: Site) -> None:
    create(catalog_site)
    decided = ask(catalog_site, PUPILS, columns=["ine", "sex", "level", "grade_maths"]).json()
    assert (decided["status"], decided["mode"], decided["grant"]) == ("pending_review", "pseudonymised", None)
    assert decided["parameters"]["pseudonymised"] == ["ine"]
    assert decided["reviewers"][0]["organisation"] == "demo-rennes"
    request_id = decided["id"]
    review = lambda user, verdict="approve": catalog_site.client.post(  # noqa: E731
        f"/api/v1/access-requests/{request_id}/review", json={"verdict": verdict, "comment": "ok"},
        headers=catalog_site.headers(user))
    before = catalog_site.counts()
    assert review("olivier").status_code == 404  # another organisation: as if there were no such request
    assert review("bruno").status_code == 403  # the requester is no provider
    assert catalog_site.counts() == before
    approved = review("alice")
    assert approved.status_code == 200 and approved.json()["status"] == "granted" and approved.json()["grant"]
    assert review("alice", "reject").status_code == 409  # already decided
    # the grant drives the view: pseudonymised, built for the project's members
    view = catalog_site.client.post("/api/v1/views", json={"grant": approved.json()["grant"]},
                                    headers=catalog_site.headers("bruno"))
    assert view.status_code == 201, view.text
    assert view.json()["mode"] == "pseudonymised" and view.json()["grant"] == approved.json()["grant"]
    assert catalog_site.client.post("/api/v1/views", json={"grant": approved.json()["grant"]},
                                    headers=catalog_site.headers("olivier")).status_code == 404


def test_a_purpose_the_source_does_not_allow_gets_a_more_closed_mode(catalog_site: Site) -> None:
    create(catalog_site, purpose="teaching")
    decided = ask(catalog_site, PUPILS, columns=["sex", "level", "grade_maths"]).json()
    assert decided["status"] == "granted" and decided["mode"] in ("aggregated", "synthetic")
    assert any(r.startswith("purpose_not_allowed") for r in decided["reasons"])


def test_without_legal_basis_personal_modes_are_refused_but_anonymous_ones_offered(catalog_site: Site) -> None:
    create(catalog_site, legal_basis=None, dpia_reference=None)
    before = catalog_site.counts()
    refused = ask(catalog_site, PUPILS, mode="pseudonymised")
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "legal_basis"
    assert catalog_site.counts() == before
    offered = ask(catalog_site, PUPILS).json()
    assert offered["status"] == "granted" and offered["mode"] in ("aggregated", "synthetic")


def test_bad_requests_change_nothing(catalog_site: Site) -> None:
    create(catalog_site)
    before = catalog_site.counts()
    assert ask(catalog_site, PUPILS, columns=["sex", "shoe_size"]).json()["error"]["field"] == "columns.1"
    assert ask(catalog_site, PUPILS, user="chloe").status_code == 404  # not a member: the project is invisible
    assert ask(catalog_site, "nope").status_code == 404
    assert ask(catalog_site, PUPILS, mode="teleported").status_code == 422
    assert ask(catalog_site, PUPILS, justification="").status_code == 422
    assert catalog_site.counts() == before


def test_a_member_who_is_not_owner_may_ask(catalog_site: Site) -> None:
    create(catalog_site, members=[{"username": "chloe", "role": "member"}])
    assert ask(catalog_site, IPS, user="chloe").status_code == 201


def test_concurrent_reviews_of_one_request_exactly_one_wins(catalog_site: Site) -> None:
    create(catalog_site)
    request_id = ask(catalog_site, PUPILS, columns=["ine", "sex"]).json()["id"]
    from controller import accounts

    _, other_token = accounts.add_user(catalog_site.platform, "test", "aline", ["provider"], "demo-rennes")
    catalog_site.tokens["aline"] = other_token
    statuses: list[int] = []

    def go(user: str, verdict: str) -> None:
        statuses.append(catalog_site.client.post(f"/api/v1/access-requests/{request_id}/review",
                                                 json={"verdict": verdict}, headers=catalog_site.headers(user)).status_code)

    threads = [threading.Thread(target=go, args=(u, v)) for u, v in
               [("alice", "approve"), ("aline", "reject"), ("alice", "reject"), ("aline", "approve")]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200, 409, 409, 409]
    final = catalog_site.client.get(f"/api/v1/access-requests/{request_id}", headers=catalog_site.headers("bruno")).json()
    assert final["status"] in ("granted", "rejected") and len(final["reviews"]) == 1


def test_revocation_by_the_provider_ends_the_grant(catalog_site: Site) -> None:
    create(catalog_site)
    grant_id = ask(catalog_site, IPS).json()["grant"]
    revoke = lambda user: catalog_site.client.post(f"/api/v1/grants/{grant_id}/revoke",  # noqa: E731
                                                   json={"reason": "fin du partenariat"}, headers=catalog_site.headers(user))
    assert revoke("olivier").status_code in (403, 404)
    assert revoke("bruno").status_code == 403
    revoked = revoke("alice")
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    assert revoke("alice").status_code == 409
    view = catalog_site.client.post("/api/v1/views", json={"grant": grant_id}, headers=catalog_site.headers("bruno"))
    assert view.status_code == 409 and view.json()["error"]["code"] == "grant_revoked"


def test_shortening_the_project_shortens_its_grants(catalog_site: Site) -> None:
    create(catalog_site)
    grant_id = ask(catalog_site, IPS).json()["grant"]
    new_end = (TODAY + dt.timedelta(days=10)).isoformat()
    catalog_site.client.patch("/api/v1/projects/projet-a", json={"end_date": new_end}, headers=catalog_site.headers("bruno"))
    assert catalog_site.client.get(f"/api/v1/grants/{grant_id}", headers=catalog_site.headers("bruno")).json()["expiry"] == new_end


def test_every_decision_is_recorded_with_its_input_revision_and_audit_event(catalog_site: Site) -> None:
    from controller.policy import input_digest

    create(catalog_site)
    decided = ask(catalog_site, PUPILS, columns=["ine", "sex"]).json()
    # An admin sees the input whole (auditors see its locations withheld: tests/test_redaction.py).
    record = catalog_site.client.get(f"/api/v1/decisions/{decided['decision_id']}", headers=catalog_site.headers("admin")).json()
    assert record["input_sha256"] == input_digest(record["input"])
    assert record["revision"] == catalog_site.platform.policy.revision and record["result"]["status"] == "pending_review"
    events = catalog_site.client.get("/api/v1/audit/events", params={"action": "access.requested"},
                                     headers=catalog_site.headers("david")).json()["items"]
    assert events[-1]["decision_id"] == decided["decision_id"]
    assert events[-1]["policy_revision"] == record["revision"]
    assert events[-1]["details"]["input_sha256"] == record["input_sha256"]
    loaded = catalog_site.client.get("/api/v1/audit/events", params={"action": "policy.loaded"},
                                     headers=catalog_site.headers("david")).json()["items"]
    assert loaded and loaded[-1]["subject"]["id"] == record["revision"]
    assert loaded[-1]["seq"] < events[-1]["seq"]  # the revision is on record before it decides
    assert catalog_site.client.get(f"/api/v1/decisions/{decided['decision_id']}",
                                   headers=catalog_site.headers("bruno")).status_code == 403


# -- four eyes -------------------------------------------------------------------------------
def test_nobody_reviews_an_access_request_of_a_project_they_belong_to(catalog_site: Site) -> None:
    """A user who is both provider of the source's organisation and researcher cannot approve their
    own request, nor one of a project they are (or were, when it was decided) a member of."""
    from controller import accounts

    site = catalog_site
    for user, roles in (("paula", ["provider", "researcher"]), ("piotr", ["provider"]), ("prune", ["provider"])):
        _, site.tokens[user] = accounts.add_user(site.platform, "test", user, roles, "demo-rennes")
    members = [{"username": "piotr", "role": "member"}, {"username": "prune", "role": "member"}]
    assert create(site, user="paula", members=members).status_code == 201
    request_id = ask(site, PUPILS, user="paula", columns=["ine", "sex"]).json()["id"]
    assert site.client.patch("/api/v1/projects/projet-a", json={"members": members[:1]},
                             headers=site.headers("paula")).status_code == 200  # prune leaves the project

    def review(user: str):
        return site.client.post(f"/api/v1/access-requests/{request_id}/review",
                                json={"verdict": "approve", "comment": "ok"}, headers=site.headers(user))

    before = site.counts()
    for user in ("paula", "piotr", "prune"):  # the requester, a member, a member when it was decided
        refused = review(user)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "member_review", (user, refused.text)
    assert site.counts() == before
    pending = site.client.get(f"/api/v1/access-requests/{request_id}", headers=site.headers("paula")).json()
    assert pending["status"] == "pending_review" and pending["reviews"] == [] and pending["grant"] is None
    approved = review("alice")  # a provider of the organisation outside the project
    assert approved.status_code == 200 and approved.json()["status"] == "granted"

    # Revoking only takes access away: a provider who belongs to the project may do it at once.
    revoked = site.client.post(f"/api/v1/grants/{approved.json()['grant']}/revoke", json={"reason": "fin"},
                               headers=site.headers("piotr"))
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
