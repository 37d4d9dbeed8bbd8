"""OpenID Connect bearer tokens, end to end.

A fake identity provider generates a real RSA key and serves its JWKS over HTTP on the
loopback; tokens are signed with PyJWT exactly as Keycloak would sign them; everything is
checked through the HTTP API of a platform in `auth_mode: oidc`, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import jwt.api_jwk
import jwt.jwk_set_cache
import jwt.jwks_client
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from controller import accounts
from controller.api.app import create_app
from controller.config import load_settings
from controller.platform import Platform
from controller.store import AuditEvent, SourceRow, User

ROOT = Path(__file__).resolve().parents[1]
PUPILS_YAML = ROOT / "catalog" / "examples" / "eleves-synthetiques.yaml"
AUDIENCE = "bulles"
_DROP = object()  # a claim value meaning "leave this claim out"


def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "RS256"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class FakeIdp:
    """An OpenID Connect provider reduced to what a resource server uses: a JWKS URL and signed tokens."""

    def __init__(self) -> None:
        self.key = _rsa_key()
        self.kid = "idp-key-1"
        self.jwks: dict[str, Any] = {"keys": [_jwk(self.key, self.kid)]}
        self.requests: list[str] = []  # paths asked of the server, in order
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                idp.requests.append(self.path)
                if self.path != "/jwks":
                    self.send_error(404)
                    return
                body = json.dumps(idp.jwks).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.issuer = f"{self.base}/realms/bulles"
        self.jwks_url = f"{self.base}/jwks"
        self._thread = threading.Thread(target=self.server.serve_forever, name="fake-idp", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count("/jwks")

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """A Keycloak-like access token for alice.martin, provider at demo-rennes."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": [AUDIENCE, "account"],
            "sub": "2f0c6f1e-5d6b-4d7e-9a51-1c2b3d4e5f60",
            "exp": now + 300,
            "iat": now,
            "typ": "Bearer",
            "preferred_username": "alice.martin",
            "realm_access": {"roles": ["provider", "offline_access", "uma_authorization"]},
            "organisation": "demo-rennes",
        }
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not _DROP}

    def token(self, key: rsa.RSAPrivateKey | None = None, kid: str | None = None, **overrides: Any) -> str:
        return jwt.encode(self.claims(**overrides), key or self.key, algorithm="RS256",
                          headers={"kid": kid or self.kid})

    def unsigned(self, header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
        """A token assembled by hand, for the forgeries PyJWT refuses to produce."""
        head = _b64(json.dumps(header).encode())
        body = _b64(json.dumps(claims).encode())
        return f"{head}.{body}.{_b64(signature)}"

    def public_pem(self) -> bytes:
        return self.key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture
def idp() -> Iterator[FakeIdp]:
    server = FakeIdp()
    try:
        yield server
    finally:
        server.close()


class OidcSite:
    def __init__(self, platform: Platform, idp: FakeIdp) -> None:
        self.platform, self.idp = platform, idp
        self.client = TestClient(create_app(platform), raise_server_exceptions=False)

    def get(self, path: str, token: str) -> Any:
        return self.client.get(path, headers={"Authorization": f"Bearer {token}"})

    def state(self) -> tuple[int, int, int]:
        """(sources, audit events, users) stored."""
        with self.platform.sessions() as s:
            return tuple(s.scalar(select(func.count()).select_from(t)) or 0  # type: ignore[return-value]
                         for t in (SourceRow, AuditEvent, User))


@pytest.fixture
def oidc(home: Path, db_url: str, idp: FakeIdp) -> Iterator[OidcSite]:
    settings = load_settings(
        home, database_url=db_url, checkpoint_interval_seconds=0, auth_mode="oidc",
        oidc={"issuer": idp.issuer, "audience": AUDIENCE, "jwks_url": idp.jwks_url,
              "roles_claim": "realm_access.roles", "organisation_claim": "organisation"},
    )
    with Platform(settings) as platform:
        yield OidcSite(platform, idp)


def _error(response: Any) -> dict[str, Any]:
    return response.json()["error"]


# -- accepted ---------------------------------------------------------------------------------

def test_valid_token_gives_the_callers_identity(oidc: OidcSite) -> None:
    response = oidc.get("/api/v1/whoami", oidc.idp.token())
    assert response.status_code == 200, response.text
    assert response.json() == {"username": "alice.martin", "roles": ["provider"],
                               "organisation": "demo-rennes", "via": "oidc"}


def test_roles_are_read_from_the_nested_claim_and_unknown_ones_ignored(oidc: OidcSite) -> None:
    token = oidc.idp.token(preferred_username="bruno.durand", aud=AUDIENCE, organisation="labo",
                           realm_access={"roles": ["reviewer", "default-roles-bulles", "researcher"]})
    response = oidc.get("/api/v1/whoami", token)
    assert response.status_code == 200, response.text
    assert response.json() == {"username": "bruno.durand", "roles": ["researcher", "reviewer"],
                               "organisation": "labo", "via": "oidc"}


def test_without_preferred_username_the_subject_names_the_caller(oidc: OidcSite) -> None:
    token = oidc.idp.token(preferred_username=_DROP, organisation=_DROP, realm_access={"roles": ["auditor"]})
    response = oidc.get("/api/v1/whoami", token)
    assert response.status_code == 200, response.text
    assert response.json() == {"username": oidc.idp.claims()["sub"], "roles": ["auditor"],
                               "organisation": None, "via": "oidc"}


# -- refused ----------------------------------------------------------------------------------

def _hs256_with_public_key(idp: FakeIdp) -> str:
    """The classic key-confusion attack: HMAC the token with the (public) RSA key as the secret."""
    header = {"alg": "HS256", "typ": "JWT", "kid": idp.kid}
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(idp.claims(realm_access={"roles": ["admin"]})).encode())
    mac = hmac.new(idp.public_pem(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


REFUSED: dict[str, tuple[Callable[[FakeIdp], str], str]] = {
    "expired": (lambda idp: idp.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200), "token_expired"),
    "another key, same kid": (lambda idp: idp.token(key=_rsa_key()), "invalid_token"),
    "wrong audience": (lambda idp: idp.token(aud="account"), "invalid_token"),
    "no audience": (lambda idp: idp.token(aud=_DROP), "invalid_token"),
    "wrong issuer": (lambda idp: idp.token(iss=f"{idp.base}/realms/other"), "invalid_token"),
    "unknown kid": (lambda idp: idp.token(key=_rsa_key(), kid="attacker-key"), "invalid_token"),
    "unknown kid, right key": (lambda idp: idp.token(kid="attacker-key"), "invalid_token"),
    "no expiry": (lambda idp: idp.token(exp=_DROP), "invalid_token"),
    "no subject": (lambda idp: idp.token(sub=_DROP), "invalid_token"),
    "not yet valid": (lambda idp: idp.token(nbf=int(time.time()) + 3600), "invalid_token"),
    "alg none": (lambda idp: idp.unsigned({"alg": "none", "typ": "JWT", "kid": idp.kid},
                                          idp.claims(realm_access={"roles": ["admin"]})), "invalid_token"),
    "HS256 with the public key as secret": (_hs256_with_public_key, "invalid_token"),
    "signature stripped": (lambda idp: idp.token().rsplit(".", 1)[0] + ".", "invalid_token"),
    "claims tampered": (lambda idp: ".".join([idp.token().split(".")[0],
                                              _b64(json.dumps(idp.claims(realm_access={"roles": ["admin"]})).encode()),
                                              idp.token().split(".")[2]]), "invalid_token"),
    "garbage": (lambda idp: "not-a-jwt", "invalid_token"),
    "embedded-style token": (lambda idp: "blt_" + "A" * 43, "invalid_token"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_bad_tokens_are_refused_with_401(oidc: OidcSite, case: str) -> None:
    make, code = REFUSED[case]
    before = oidc.state()
    response = oidc.get("/api/v1/whoami", make(oidc.idp))
    assert response.status_code == 401, response.text
    assert _error(response)["code"] == code
    assert response.headers["WWW-Authenticate"] == "Bearer"
    # Refused for what is wrong with it, not because the provider is unreachable: a good token passes.
    assert oidc.get("/api/v1/whoami", oidc.idp.token()).status_code == 200
    # A bad token is no anonymous caller either, even where anonymous reading is allowed.
    assert oidc.get("/api/v1/sources", make(oidc.idp)).status_code == 401
    assert oidc.state() == before


@pytest.mark.parametrize("claims", [
    {"realm_access": _DROP},
    {"realm_access": {"roles": []}},
    {"realm_access": {"roles": ["offline_access", "uma_authorization", "Admin", "superuser"]}},
    {"realm_access": {"other": ["admin"]}},
    {"realm_access": _DROP, "roles": ["admin"]},  # a bulles role elsewhere than the configured claim
    {"realm_access": {"roles": {"admin": 1}}},  # an object is not a list of roles
    {"realm_access": {"roles": 7}},
], ids=["no claim", "empty", "only unknown roles", "no roles key", "role in another claim", "object", "number"])
def test_a_token_without_a_bulles_role_is_forbidden(oidc: OidcSite, claims: dict[str, Any]) -> None:
    response = oidc.get("/api/v1/whoami", oidc.idp.token(**claims))
    assert response.status_code == 403, response.text
    assert _error(response)["code"] == "no_role"
    assert "realm_access.roles" in _error(response)["message"]


@pytest.mark.parametrize("claim,expected", [
    ("demo-rennes", "demo-rennes"),
    (["demo-rennes"], "demo-rennes"),
    ({"demo-rennes": {"id": "42"}}, "demo-rennes"),  # Keycloak's organization claim
    (["demo-rennes", "labo"], None),  # two organisations name no single one
    (12, None),
])
def test_the_organisation_claim_names_one_organisation_or_none(oidc: OidcSite, claim: Any, expected: Any) -> None:
    response = oidc.get("/api/v1/whoami", oidc.idp.token(organisation=claim))
    assert response.status_code == 200 and response.json()["organisation"] == expected


@pytest.mark.parametrize("oidc_settings,message", [
    ({"issuer": "http://idp.example.org/realms/x", "jwks_url": "https://idp.example.org/jwks"}, "https"),
    ({"issuer": "https://idp.example.org/realms/x", "jwks_url": "http://idp.example.org/jwks"}, "https"),
    ({"issuer": "https://idp.example.org/realms/x", "jwks_url": "https://idp.example.org/jwks",
      "algorithms": ["HS256"]}, "algorithms"),
    ({"issuer": "https://idp.example.org/realms/x", "jwks_url": "https://idp.example.org/jwks",
      "algorithms": ["none"]}, "algorithms"),
])
def test_unsafe_oidc_settings_are_refused(home: Path, oidc_settings: dict[str, Any], message: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        load_settings(home, auth_mode="oidc", oidc={"audience": AUDIENCE, **oidc_settings})


# -- acting with an OIDC identity ---------------------------------------------------------------

def test_provider_token_registers_a_source_of_its_own_organisation(oidc: OidcSite) -> None:
    accounts.add_organisation(oidc.platform, "test", "demo-rennes", "Demo")
    accounts.add_organisation(oidc.platform, "test", "autre-academie", "Autre")
    document = PUPILS_YAML.read_bytes()
    yaml_headers = {"Content-Type": "application/yaml"}

    # Same token shape, another organisation: refused, nothing stored.
    before = oidc.state()
    stranger = oidc.idp.token(preferred_username="olivier", organisation="autre-academie")
    response = oidc.client.post("/api/v1/sources", content=document,
                                headers={**yaml_headers, "Authorization": f"Bearer {stranger}"})
    assert response.status_code == 403, response.text
    assert oidc.state() == before

    response = oidc.client.post("/api/v1/sources", content=document,
                                headers={**yaml_headers, "Authorization": f"Bearer {oidc.idp.token()}"})
    assert response.status_code == 201, response.text
    assert response.json()["id"] == "eleves-synthetiques"
    assert response.json()["spec"]["publisher"] == "demo-rennes"
    sources, events, _ = oidc.state()
    assert (sources, events) == (before[0] + 1, before[1] + 1)

    auditor = oidc.idp.token(preferred_username="david", organisation=_DROP, realm_access={"roles": ["auditor"]})
    response = oidc.client.get("/api/v1/audit/events", params={"action": "source.registered"},
                               headers={"Authorization": f"Bearer {auditor}"})
    assert response.status_code == 200, response.text
    [event] = response.json()["items"]
    assert event["actor"] == "user:alice.martin"
    assert event["subject"] == {"type": "source", "id": "eleves-synthetiques"}
    assert event["details"]["publisher"] == "demo-rennes"


def test_embedded_user_endpoints_answer_409_in_oidc_mode(oidc: OidcSite) -> None:
    admin = oidc.idp.token(preferred_username="root", organisation=_DROP, realm_access={"roles": ["admin"]})
    headers = {"Authorization": f"Bearer {admin}"}
    assert oidc.client.get("/api/v1/whoami", headers=headers).json()["roles"] == ["admin"]
    before = oidc.state()
    calls = [
        ("GET", "/api/v1/users", None),
        ("POST", "/api/v1/users", {"username": "zoe", "roles": ["researcher"]}),
        ("POST", "/api/v1/users/zoe/token", None),
        ("POST", "/api/v1/users/zoe/disabled", {"disabled": True}),
    ]
    for method, path, body in calls:
        response = oidc.client.request(method, path, json=body, headers=headers)
        assert response.status_code == 409, (method, path, response.text)
        assert _error(response)["code"] == "not_embedded", (method, path)
    assert oidc.state() == before

    # Still admin-only: a non-admin OIDC caller is told so before anything else.
    response = oidc.client.post("/api/v1/users", json={"username": "zoe", "roles": ["researcher"]},
                                headers={"Authorization": f"Bearer {oidc.idp.token()}"})
    assert response.status_code == 403


def test_organisations_are_managed_by_an_oidc_admin(oidc: OidcSite) -> None:
    admin = oidc.idp.token(preferred_username="root", organisation=_DROP, realm_access={"roles": ["admin"]})
    response = oidc.client.post("/api/v1/organisations", json={"id": "labo", "name": "Laboratoire"},
                                headers={"Authorization": f"Bearer {admin}"})
    assert response.status_code == 201, response.text
    with oidc.platform.sessions() as s:
        event = s.scalars(select(AuditEvent).where(AuditEvent.action == "organisation.created")).one()
    assert (event.actor, event.subject_id) == ("user:root", "labo")


# -- the key set --------------------------------------------------------------------------------

def test_jwks_is_fetched_from_the_provider_once_then_cached(oidc: OidcSite) -> None:
    idp = oidc.idp
    assert idp.jwks_fetches == 0  # nothing fetched before the first token arrives
    assert oidc.get("/api/v1/whoami", idp.token()).status_code == 200
    assert idp.requests == ["/jwks"]
    for name in ("alice.martin", "bruno", "chloe"):
        assert oidc.get("/api/v1/whoami", idp.token(preferred_username=name)).status_code == 200
    assert idp.jwks_fetches == 1


def test_a_key_removed_from_the_jwks_stops_being_accepted(oidc: OidcSite, monkeypatch: pytest.MonkeyPatch) -> None:
    """Key rotation at the provider: once the cached key set has expired, the withdrawn key is refused."""
    clock = FakeClock()
    for module in (jwt.jwk_set_cache, jwt.api_jwk, jwt.jwks_client):  # PyJWT's key caches only
        monkeypatch.setattr(module, "time", clock)
    idp = oidc.idp
    old = idp.token()
    assert oidc.get("/api/v1/whoami", old).status_code == 200

    new_key, new_kid = _rsa_key(), "idp-key-2"
    idp.jwks = {"keys": [_jwk(new_key, new_kid)]}
    clock.offset += 60  # within the key set's lifetime (300 s): the cached set still answers
    assert oidc.get("/api/v1/whoami", old).status_code == 200
    assert idp.jwks_fetches == 1

    clock.offset += 300  # past it
    response = oidc.get("/api/v1/whoami", old)
    assert response.status_code == 401, response.text
    assert _error(response)["code"] == "invalid_token"
    assert oidc.get("/api/v1/whoami", idp.token(key=new_key, kid=new_kid)).status_code == 200
    assert idp.jwks_fetches == 2


class FakeClock:
    """Stands in for the `time` module inside PyJWT: monotonic time plus an offset we move."""

    def __init__(self) -> None:
        self.offset = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.offset

    def time(self) -> float:
        return time.time() + self.offset
