"""Request-scoped dependencies: the platform, a read session, and the caller."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from catalog.vocab import Role
from controller.auth import Principal
from controller.errors import ApiError, forbidden
from controller.platform import Platform

# Most bodies are a few fields: 64 KiB unless an endpoint declares more (`max_body_size`); the
# site's `max_body_bytes` bounds every request besides.
SMALL_BODY_BYTES = 64 * 1024
# Bodies that may list up to a few thousand column names or paths, or hold long free text.
LIST_BODY_BYTES = 512 * 1024
bearer = HTTPBearer(auto_error=False, description="An embedded API token or an OpenID Connect access token")


def platform(request: Request) -> Platform:
    return request.app.state.platform


def session(request: Request) -> Iterator[Session]:
    with request.app.state.platform.sessions() as s:
        yield s


def optional_principal(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> Principal | None:
    if credentials is None:
        return None
    caller = request.app.state.platform.authenticate(credentials.credentials)
    request.state.principal = caller  # for error handlers, which answer by who asks
    return caller


def principal(caller: Principal | None = Depends(optional_principal)) -> Principal:
    if caller is None:
        raise ApiError(401, "unauthenticated", "this endpoint needs a bearer token")
    return caller


def require(*roles: Role) -> Callable[[Principal], Principal]:
    names = " or ".join(r.value for r in roles)

    def check(caller: Principal = Depends(principal)) -> Principal:
        if not caller.has(*roles):
            raise forbidden(f"this needs the {names} role")
        return caller

    return check
