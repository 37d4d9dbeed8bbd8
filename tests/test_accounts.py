"""Embedded-mode accounts: users, roles and API tokens, through the HTTP API and the CLI.

API tests take the `site` fixture and so run on SQLite and PostgreSQL; the CLI tests work on
a home's default SQLite database, as the CLI does.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from typer.testing import CliRunner

from controller.api.app import create_app
from controller.cli import app as cli
from controller.config import load_settings
from controller.platform import Platform
from controller.store import AuditEvent, User

if TYPE_CHECKING:
    from conftest import Site

NON_ADMINS = ["alice", "olivier", "bruno", "chloe", "david"]


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


def _state(site: Site) -> tuple[int, int, int]:
    """(sources, audit events, users) stored: what 'nothing stored' is checked against."""
    with site.platform.sessions() as s:
        users = s.scalar(select(func.count()).select_from(User)) or 0
    return (*site.counts(), users)


def _user_rows(site: Site) -> list[User]:
    with site.platform.sessions() as s:
        return list(s.scalars(select(User)))


def _audit_rows(site: Site) -> list[AuditEvent]:
    with site.platform.sessions() as s:
        return list(s.scalars(select(AuditEvent).order_by(AuditEvent.seq)))


def _whoami(site: Site, token: str) -> Any:
    return site.client.get("/api/v1/whoami", headers=_bearer(token))


def _assert_secret_nowhere(site: Site, token: str) -> None:
    """The clear token is in no column of the users table nor of any audit event."""
    for user in _user_rows(site):
        for column in User.__table__.columns:
            assert token not in str(getattr(user, column.key)), (user.username, column.key)
    for event in _audit_rows(site):
        for column in AuditEvent.__table__.columns:
            value = getattr(event, column.key)
            text = value.hex() if isinstance(value, bytes) else str(value)
            assert token not in text, (event.seq, column.key)


# -- creating a user ------------------------------------------------------------------------------

def test_admin_creates_a_user_whose_token_is_shown_once_and_stored_hashed(site: Site) -> None:
    sources, events, users = _state(site)
    response = site.client.post("/api/v1/users", headers=site.headers("admin"),
                                json={"username": "emma", "roles": ["researcher", "reviewer"], "organisation": "labo"})
    assert response.status_code == 201, response.text
    created = response.json()
    token = created.pop("token")
    assert token.startswith("blt_") and len(token) >= 40
    assert created["username"] == "emma"
    assert created["roles"] == ["researcher", "reviewer"]
    assert created["organisation"] == "labo"
    assert created["disabled"] is False
    assert "token_sha256" not in created
    assert _state(site) == (sources, events + 1, users + 1)

    response = _whoami(site, token)
    assert response.status_code == 200, response.text
    assert response.json() == {"username": "emma", "roles": ["researcher", "reviewer"], "organisation": "labo",
                               "via": "token"}

    [row] = [u for u in _user_rows(site) if u.username == "emma"]
    assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
    _assert_secret_nowhere(site, token)

    # The listing shows who exists, never a token nor a hash of one.
    response = site.client.get("/api/v1/users", headers=site.headers("admin"))
    assert response.status_code == 200, response.text
    listed = response.json()
    assert [u["username"] for u in listed] == sorted(["alice", "olivier", "bruno", "chloe", "david", "admin", "emma"])
    assert all(set(u) == {"username", "roles", "organisation", "disabled", "created_at"} for u in listed)
    for secret in [token, *site.tokens.values(), *(u.token_sha256 for u in _user_rows(site))]:
        assert secret not in response.text


def test_only_admins_manage_users_and_organisations(site: Site) -> None:
    before = _state(site)
    for username in NON_ADMINS:
        headers = site.headers(username)
        calls = [
            site.client.post("/api/v1/users", headers=headers, json={"username": "zoe", "roles": ["admin"]}),
            site.client.post("/api/v1/organisations", headers=headers, json={"id": "pirate", "name": "Pirate"}),
            site.client.get("/api/v1/users", headers=headers),
            site.client.post("/api/v1/users/admin/token", headers=headers),
            site.client.post("/api/v1/users/admin/disabled", headers=headers, json={"disabled": True}),
        ]
        for response in calls:
            assert response.status_code == 403, (username, response.request.url, response.text)
            assert _error(response)["code"] == "forbidden"
    assert _state(site) == before
    assert _whoami(site, site.tokens["admin"]).status_code == 200  # admin's token was not rotated away


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic YWRtaW46YWRtaW4="}, {"Authorization": "Bearer"}],
                         ids=["no header", "basic scheme", "empty bearer"])
def test_without_a_bearer_token_the_answer_is_401_with_a_challenge(site: Site, headers: dict[str, str]) -> None:
    before = _state(site)
    for method, path, body in [
        ("GET", "/api/v1/whoami", None),
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"username": "zoe", "roles": ["admin"]}),
        ("POST", "/api/v1/organisations", {"id": "pirate", "name": "Pirate"}),
        ("GET", "/api/v1/audit/events", None),
    ]:
        response = site.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.text)
        assert _error(response)["code"] == "unauthenticated"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert _state(site) == before


def test_an_unknown_token_is_refused_even_where_reading_is_open(site: Site) -> None:
    forged = "blt_" + "A" * 43
    for path in ("/api/v1/whoami", "/api/v1/sources"):
        response = site.client.get(path, headers=_bearer(forged))
        assert response.status_code == 401, (path, response.text)
        assert _error(response)["code"] == "invalid_token"
        assert response.headers["WWW-Authenticate"] == "Bearer"
    # The stored hash is not a token either.
    [alice] = [u for u in _user_rows(site) if u.username == "alice"]
    assert _whoami(site, alice.token_sha256).status_code == 401


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"username": "zoe", "roles": ["wizard"]}, 422, "validation_error", "roles.0"),
    ({"username": "zoe", "roles": ["researcher", "root"], "organisation": "labo"}, 422, "validation_error", "roles.1"),
    ({"username": "zoe", "roles": []}, 422, "validation_error", "roles"),
    ({"username": "zoe"}, 422, "validation_error", "roles"),
    ({"username": "Zoe Martin", "roles": ["researcher"]}, 422, "validation_error", "username"),
    ({"username": "../zoe", "roles": ["researcher"]}, 422, "validation_error", "username"),
    ({"username": "z", "roles": ["researcher"]}, 422, "validation_error", "username"),
    ({"username": "zoe", "roles": ["provider"]}, 422, "validation_error", "organisation"),
    ({"username": "zoe", "roles": ["researcher"], "organisation": "nowhere"}, 422, "validation_error", "organisation"),
    ({"username": "bruno", "roles": ["admin"]}, 409, "user_exists", "username"),
], ids=["unknown role", "second role unknown", "no role", "roles missing", "space in username",
        "path in username", "one-letter username", "provider without organisation", "unknown organisation",
        "duplicate username"])
def test_bad_user_requests_name_the_field_and_store_nothing(
    site: Site, body: dict[str, Any], status: int, code: str, field: str
) -> None:
    before = _state(site)
    rows_before = {u.username: (u.roles, u.organisation, u.token_sha256, u.disabled) for u in _user_rows(site)}
    response = site.client.post("/api/v1/users", headers=site.headers("admin"), json=body)
    assert response.status_code == status, response.text
    error = _error(response)
    assert (error["code"], error["field"]) == (code, field)
    assert error["message"].startswith(f"{field}:")
    assert "token" not in response.json()
    assert _state(site) == before
    assert {u.username: (u.roles, u.organisation, u.token_sha256, u.disabled) for u in _user_rows(site)} == rows_before
    # The existing user kept their identity and token.
    assert _whoami(site, site.tokens["bruno"]).json()["roles"] == ["researcher"]


def test_bad_organisation_requests_store_nothing(site: Site) -> None:
    before = _state(site)
    for body, status, field in [
        ({"id": "Labo Rennes", "name": "x"}, 422, "id"),
        ({"id": "labo2", "name": ""}, 422, "name"),
        ({"id": "labo2", "name": "Labo", "homepage": "javascript:alert(1)"}, 422, "homepage"),
        ({"id": "labo", "name": "Again"}, 409, "id"),
    ]:
        response = site.client.post("/api/v1/organisations", headers=site.headers("admin"), json=body)
        assert response.status_code == status, (body, response.text)
        assert _error(response)["field"] == field, body
    assert _state(site) == before


# -- tokens and disabling -------------------------------------------------------------------------

def test_rotating_a_token_revokes_the_old_one(site: Site) -> None:
    old = site.tokens["bruno"]
    response = site.client.post("/api/v1/users/bruno/token", headers=site.headers("admin"))
    assert response.status_code == 200, response.text
    assert response.json()["username"] == "bruno"
    new = response.json()["token"]
    assert new.startswith("blt_") and new != old

    response = _whoami(site, old)
    assert response.status_code == 401
    assert _error(response)["code"] == "invalid_token"
    assert _whoami(site, new).json()["username"] == "bruno"
    assert _whoami(site, site.tokens["alice"]).json()["username"] == "alice"  # nobody else affected
    [row] = [u for u in _user_rows(site) if u.username == "bruno"]
    assert row.token_sha256 == hashlib.sha256(new.encode()).hexdigest()
    _assert_secret_nowhere(site, new)

    before = _state(site)
    response = site.client.post("/api/v1/users/nobody/token", headers=site.headers("admin"))
    assert response.status_code == 404
    assert _error(response)["code"] == "not_found"
    assert _state(site) == before


def test_a_disabled_user_is_refused_until_re_enabled(site: Site) -> None:
    token = site.tokens["bruno"]
    response = site.client.post("/api/v1/users/bruno/disabled", headers=site.headers("admin"), json={"disabled": True})
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is True

    for path in ("/api/v1/whoami", "/api/v1/sources"):  # not even as an anonymous reader
        response = site.client.get(path, headers=_bearer(token))
        assert response.status_code == 401, (path, response.text)
        assert _error(response)["code"] == "invalid_token"
    listed = {u["username"]: u for u in site.client.get("/api/v1/users", headers=site.headers("admin")).json()}
    assert listed["bruno"]["disabled"] is True
    assert listed["alice"]["disabled"] is False

    response = site.client.post("/api/v1/users/bruno/disabled", headers=site.headers("admin"), json={"disabled": False})
    assert response.status_code == 200, response.text
    assert response.json()["disabled"] is False
    assert _whoami(site, token).json()["username"] == "bruno"

    response = site.client.post("/api/v1/users/nobody/disabled", headers=site.headers("admin"), json={"disabled": True})
    assert response.status_code == 404
    response = site.client.post("/api/v1/users/bruno/disabled", headers=site.headers("admin"), json={"disabled": "nope"})
    assert response.status_code == 422
    assert _error(response)["field"] == "disabled"


# -- roles on the audit API and the audit trail of account changes --------------------------------

def test_only_auditors_read_the_audit_log(site: Site) -> None:
    for username in ("alice", "olivier", "bruno", "chloe", "admin"):
        response = site.client.get("/api/v1/audit/events", headers=site.headers(username))
        assert response.status_code == 403, (username, response.text)
        assert _error(response)["code"] == "forbidden"
    response = site.client.get("/api/v1/audit/events", headers=site.headers("david"))
    assert response.status_code == 200, response.text
    assert len(response.json()["items"]) == _state(site)[1]


def test_each_account_change_is_in_the_audit_log(site: Site) -> None:
    admin = site.headers("admin")
    assert site.client.post("/api/v1/organisations", headers=admin,
                            json={"id": "inspe", "name": "INSPE de Bretagne"}).status_code == 201
    response = site.client.post("/api/v1/users", headers=admin,
                                json={"username": "emma", "roles": ["researcher"], "organisation": "inspe"})
    assert response.status_code == 201
    token = response.json()["token"]
    assert site.client.post("/api/v1/users/emma/token", headers=admin).status_code == 200
    assert site.client.post("/api/v1/users/emma/disabled", headers=admin, json={"disabled": True}).status_code == 200
    assert site.client.post("/api/v1/users/emma/disabled", headers=admin, json={"disabled": False}).status_code == 200
    # Refused changes leave no trace.
    assert site.client.post("/api/v1/users", headers=admin, json={"username": "emma", "roles": ["admin"]}).status_code == 409
    assert site.client.post("/api/v1/users", headers=site.headers("bruno"),
                            json={"username": "eve", "roles": ["admin"]}).status_code == 403

    def events(**params: str) -> list[dict[str, Any]]:
        response = site.client.get("/api/v1/audit/events", headers=site.headers("david"), params=params)
        assert response.status_code == 200, response.text
        return response.json()["items"]

    users = events(action="user.", actor="user:admin")
    assert [(e["action"], e["subject"]) for e in users] == [
        ("user.created", {"type": "user", "id": "emma"}),
        ("user.token_rotated", {"type": "user", "id": "emma"}),
        ("user.disabled", {"type": "user", "id": "emma"}),
        ("user.enabled", {"type": "user", "id": "emma"}),
    ]
    assert users[0]["details"] == {"roles": ["researcher"], "organisation": "inspe"}
    assert [e["seq"] for e in users] == sorted(e["seq"] for e in users)
    # The prefix filter is a prefix on the action, not a substring match on anything.
    assert all(e["action"].startswith("user.") for e in events(action="user."))
    assert events(action="user") == []

    [org] = events(action="organisation.", actor="user:admin")
    assert (org["action"], org["subject"]) == ("organisation.created", {"type": "organisation", "id": "inspe"})
    assert org["details"] == {"name": "INSPE de Bretagne"}
    _assert_secret_nowhere(site, token)


# -- the CLI --------------------------------------------------------------------------------------

@pytest.fixture
def cli_home(home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("BULLES_HOME", "BULLES_DATABASE_URL", "BULLES_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    return home


def _run(*args: str) -> Any:
    return CliRunner().invoke(cli, list(args))


def test_cli_user_add_prints_a_token_that_authenticates(cli_home: Path) -> None:
    result = _run("org", "add", "labo", "--name", "Laboratoire", "--home", str(cli_home))
    assert result.exit_code == 0, result.output
    result = _run("user", "add", "carla", "--role", "researcher", "--org", "labo", "--home", str(cli_home))
    assert result.exit_code == 0, result.output
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("blt_")
    assert (cli_home / "state.db").exists()

    settings = load_settings(cli_home, checkpoint_interval_seconds=0)
    assert settings.db_url == f"sqlite:///{cli_home / 'state.db'}"
    with Platform(settings) as platform:
        client = TestClient(create_app(platform), raise_server_exceptions=False)
        response = client.get("/api/v1/whoami", headers=_bearer(token))
        assert response.status_code == 200, response.text
        assert response.json() == {"username": "carla", "roles": ["researcher"], "organisation": "labo",
                                   "via": "token"}
        with platform.sessions() as s:
            row = s.get(User, "carla")
            assert row.token_sha256 == hashlib.sha256(token.encode()).hexdigest()
            event = s.scalars(select(AuditEvent).where(AuditEvent.action == "user.created")).one()
            assert event.actor.startswith("cli:") and event.subject_id == "carla"
            assert token not in event.details

    # `user token` rotates: the printed token replaces the old one.
    result = _run("user", "token", "carla", "--home", str(cli_home))
    assert result.exit_code == 0, result.output
    new = result.stdout.strip().splitlines()[-1]
    with Platform(settings) as platform:
        client = TestClient(create_app(platform), raise_server_exceptions=False)
        assert client.get("/api/v1/whoami", headers=_bearer(token)).status_code == 401
        assert client.get("/api/v1/whoami", headers=_bearer(new)).json()["username"] == "carla"


def test_cli_user_add_errors_exit_non_zero_and_store_nothing(cli_home: Path) -> None:
    result = _run("user", "add", "zoe", "--role", "wizard", "--home", str(cli_home))
    assert result.exit_code != 0
    assert "unknown role 'wizard'" in result.output
    assert "blt_" not in result.output

    result = _run("user", "add", "zoe", "--role", "researcher", "--org", "nowhere", "--home", str(cli_home))
    assert result.exit_code != 0
    assert "'nowhere' does not exist" in result.output

    with Platform(load_settings(cli_home, checkpoint_interval_seconds=0)) as platform, platform.sessions() as s:
        assert s.scalar(select(func.count()).select_from(User)) == 0
        assert s.scalar(select(func.count()).select_from(AuditEvent)) == 0


def test_cli_error_messages_are_printed_verbatim(cli_home: Path) -> None:
    result = _run("user", "add", "Zoe", "--role", "researcher", "--home", str(cli_home))
    assert result.exit_code != 0
    assert "^[a-z][a-z0-9._-]{1,63}$" in result.output
