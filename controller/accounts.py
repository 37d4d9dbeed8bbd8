"""Organisations and embedded-mode users. A token is shown once, at creation or rotation."""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.model import ORG_ID
from catalog.vocab import Role
from controller.audit.log import Event
from controller.auth import hash_token, new_token
from controller.errors import ApiError, not_found
from controller.platform import Platform
from controller.store import Organisation, User, iso, utcnow

USERNAME = r"^[a-z][a-z0-9._-]{1,63}$"


def org_view(org: Organisation) -> dict[str, Any]:
    return {"id": org.id, "name": org.name, "homepage": org.homepage, "email": org.email}


def user_view(user: User) -> dict[str, Any]:
    return {"username": user.username, "roles": user.roles, "organisation": user.organisation,
            "disabled": user.disabled, "created_at": user.created_at}


def add_organisation(
    platform: Platform, actor: str, org_id: str, name: str, homepage: str | None = None, email: str | None = None
) -> dict[str, Any]:
    if not re.fullmatch(ORG_ID, org_id):
        raise ApiError(422, "validation_error", f"id: '{org_id}' must match {ORG_ID}", field="id")
    if not name.strip():
        raise ApiError(422, "validation_error", "name: must not be empty", field="name")

    def apply(session: Session) -> dict[str, Any]:
        if session.get(Organisation, org_id) is not None:
            raise ApiError(409, "organisation_exists", f"id: organisation '{org_id}' already exists", field="id")
        org = Organisation(id=org_id, name=name.strip(), homepage=homepage, email=email, created_at=iso(utcnow()))
        session.add(org)
        return org_view(org)

    event = Event(actor, "organisation.created", "organisation", org_id, {"name": name.strip()})
    return platform.audit.append(event, apply).result


def _check_user(username: str, roles: list[str], organisation: str | None) -> list[str]:
    if not re.fullmatch(USERNAME, username):
        raise ApiError(422, "validation_error", f"username: '{username}' must match {USERNAME}", field="username")
    if not roles:
        raise ApiError(422, "validation_error", "roles: give at least one role", field="roles")
    known = {r.value for r in Role}
    for index, role in enumerate(roles):
        if role not in known:
            raise ApiError(422, "validation_error", f"roles.{index}: unknown role '{role}'", field=f"roles.{index}")
    if Role.provider.value in roles and not organisation:
        raise ApiError(422, "validation_error", "organisation: a provider belongs to an organisation", field="organisation")
    return sorted(set(roles))


def add_user(
    platform: Platform, actor: str, username: str, roles: list[str], organisation: str | None = None,
    token: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Create a user; returns its view and its token (the only time the token exists in clear)."""
    roles = _check_user(username, roles, organisation)
    token = token or new_token()

    def apply(session: Session) -> dict[str, Any]:
        if session.get(User, username) is not None:
            raise ApiError(409, "user_exists", f"username: user '{username}' already exists", field="username")
        if organisation is not None and session.get(Organisation, organisation) is None:
            raise ApiError(422, "validation_error", f"organisation: '{organisation}' does not exist", field="organisation")
        user = User(username=username, roles=roles, organisation=organisation, token_sha256=hash_token(token),
                    disabled=False, created_at=iso(utcnow()))
        session.add(user)
        return user_view(user)

    event = Event(actor, "user.created", "user", username, {"roles": roles, "organisation": organisation})
    return platform.audit.append(event, apply).result, token


def rotate_token(platform: Platform, actor: str, username: str) -> str:
    token = new_token()

    def apply(session: Session) -> None:
        user = session.get(User, username, with_for_update=True)
        if user is None:
            raise not_found("user", username)
        user.token_sha256 = hash_token(token)

    platform.audit.append(Event(actor, "user.token_rotated", "user", username), apply)
    return token


def set_disabled(platform: Platform, actor: str, username: str, disabled: bool) -> dict[str, Any]:
    def apply(session: Session) -> dict[str, Any]:
        user = session.get(User, username, with_for_update=True)
        if user is None:
            raise not_found("user", username)
        user.disabled = disabled
        return user_view(user)

    action = "user.disabled" if disabled else "user.enabled"
    return platform.audit.append(Event(actor, action, "user", username), apply).result


def list_users(session: Session) -> list[dict[str, Any]]:
    return [user_view(u) for u in session.scalars(select(User).order_by(User.username))]


def list_organisations(session: Session) -> list[dict[str, Any]]:
    return [org_view(o) for o in session.scalars(select(Organisation).order_by(Organisation.id))]
