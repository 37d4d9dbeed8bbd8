"""Who is calling: embedded API tokens or OpenID Connect bearer tokens, one `Principal` either way.

Embedded tokens are 256-bit random strings; only their SHA-256 is stored (a slow hash buys
nothing against a secret of that entropy, and a fast one keeps every request cheap).
"""

from __future__ import annotations

import hashlib
import hmac
import base64
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from catalog.vocab import Role
from controller.config import OidcSettings, Settings
from controller.errors import ApiError
from controller.store import User

TOKEN_PREFIX = "blt_"


@dataclass(frozen=True)
class Principal:
    username: str
    roles: frozenset[Role]
    organisation: str | None = None
    via: str = "token"

    def has(self, *roles: Role) -> bool:
        return bool(self.roles.intersection(roles))

    @property
    def actor(self) -> str:
        return f"user:{self.username}"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def derived_token(master: bytes, username: str) -> str:
    """A demo user's token, recomputable from the master secret so it can be shown at each start."""
    mac = hmac.new(master, f"bulles demo token:{username}".encode(), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).decode().rstrip("=")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _unauthenticated(message: str, code: str = "unauthenticated") -> ApiError:
    return ApiError(401, code, message)


def _roles(values: Iterable[Any], source: str) -> frozenset[Role]:
    known = {r.value for r in Role}
    roles = frozenset(Role(v) for v in values if isinstance(v, str) and v in known)
    if not roles:
        raise ApiError(403, "no_role", f"{source} carries no bulles role ({', '.join(sorted(known))})")
    return roles


class EmbeddedAuthenticator:
    def __init__(self, settings: Settings, sessions: sessionmaker) -> None:
        self._configured = {u.token_sha256: u for u in settings.users}
        self._sessions = sessions

    def __call__(self, token: str) -> Principal:
        digest = hash_token(token)
        configured = self._configured.get(digest)
        if configured is not None:
            return Principal(configured.username, _roles(configured.roles, "this user"), configured.organisation)
        with self._sessions() as session:
            user = session.scalars(select(User).where(User.token_sha256 == digest)).first()
        if user is None or user.disabled:
            raise _unauthenticated("unknown or revoked token", "invalid_token")
        return Principal(user.username, _roles(user.roles, "this user"), user.organisation)


def _claim(claims: dict[str, Any], path: str) -> Any:
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class OidcAuthenticator:
    """Bearer JWTs from an OpenID Connect provider (Keycloak is typical), keys from its JWKS."""

    def __init__(self, oidc: OidcSettings, jwks_client: jwt.PyJWKClient | None = None) -> None:
        self._oidc = oidc
        # The key *set* is cached for `lifespan` seconds; no per-kid cache (cache_keys=True is an
        # lru_cache that never expires), so a key the provider withdraws stops being trusted.
        self._jwks = jwks_client or jwt.PyJWKClient(oidc.jwks_url, cache_keys=False, lifespan=300, timeout=10)

    def __call__(self, token: str) -> Principal:
        oidc = self._oidc
        try:
            key = self._jwks.get_signing_key_from_jwt(token).key
            claims = jwt.decode(
                token,
                key,
                algorithms=oidc.algorithms,
                audience=oidc.audience,
                issuer=oidc.issuer,
                leeway=oidc.leeway_seconds,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _unauthenticated("token has expired", "token_expired") from None
        except jwt.InvalidAudienceError:
            raise _unauthenticated("token is not meant for this platform (audience)", "invalid_token") from None
        except jwt.InvalidIssuerError:
            raise _unauthenticated("token comes from an unknown issuer", "invalid_token") from None
        except jwt.PyJWKClientError as exc:
            raise _unauthenticated(f"token signing key not found: {exc}", "invalid_token") from None
        except jwt.InvalidTokenError as exc:
            raise _unauthenticated(f"invalid token: {exc}", "invalid_token") from None
        raw_roles = _claim(claims, oidc.roles_claim)
        if isinstance(raw_roles, str):
            raw_roles = raw_roles.split()
        if raw_roles is not None and not isinstance(raw_roles, list):
            raise ApiError(403, "no_role", f"the token's '{oidc.roles_claim}' claim is not a list of roles")
        roles = _roles(raw_roles or [], f"the token's '{oidc.roles_claim}' claim")
        username = _claim(claims, oidc.username_claim) or claims["sub"]
        return Principal(str(username), roles, _organisation(_claim(claims, oidc.organisation_claim)), via="oidc")


def _organisation(value: Any) -> str | None:
    """A string, or a one-member list or object (Keycloak's organization claim is an object keyed
    by alias); anything else names no single organisation, so the caller gets none."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, (list, dict)) and len(value) == 1:
        only = next(iter(value))
        return only if isinstance(only, str) and only else None
    return None


Authenticator = Callable[[str], Principal]


def make_authenticator(settings: Settings, sessions: sessionmaker) -> Authenticator:
    if settings.auth_mode == "oidc":
        if settings.oidc is None:
            raise ValueError("auth_mode is 'oidc' but the 'oidc' settings are missing")
        return OidcAuthenticator(settings.oidc)
    return EmbeddedAuthenticator(settings, sessions)
