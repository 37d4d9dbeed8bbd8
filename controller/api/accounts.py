"""Who am I, organisations, and embedded-mode users (admins only)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from catalog.fields import Line
from catalog.vocab import Role
from controller import accounts
from controller.api.deps import SMALL_BODY_BYTES, platform, principal, require, session
from controller.auth import Principal
from controller.errors import ApiError, not_found
from controller.platform import Platform
from controller.store import Organisation

router = APIRouter(prefix="/api/v1", tags=["accounts"], max_body_size=SMALL_BODY_BYTES)
admin = require(Role.admin)


class OrganisationBody(BaseModel):
    id: Line = Field(max_length=64)
    name: Line = Field(min_length=1, max_length=300)
    homepage: Line | None = Field(None, pattern=r"^https?://\S+$", max_length=500)
    email: Line | None = Field(None, max_length=320)


class UserBody(BaseModel):
    username: Line = Field(max_length=64)
    roles: list[Line] = Field(min_length=1, max_length=len(Role))
    organisation: Line | None = Field(None, max_length=64)


class DisableBody(BaseModel):
    disabled: bool


@router.get("/whoami", summary="The authenticated caller")
def whoami(caller: Principal = Depends(principal)) -> dict[str, Any]:
    return {"username": caller.username, "roles": sorted(caller.roles), "organisation": caller.organisation,
            "via": caller.via}


@router.get("/organisations", summary="Organisations of this site: the catalog's publishers (public, like the catalog)")
def organisations(db: Session = Depends(session)) -> list[dict[str, Any]]:
    return accounts.list_organisations(db)


@router.get("/organisations/{org_id}", summary="One organisation (public, like the catalog)")
def organisation(org_id: str, db: Session = Depends(session)) -> dict[str, Any]:
    org = db.get(Organisation, org_id)
    if org is None:
        raise not_found("organisation", org_id)
    return accounts.org_view(org)


@router.post("/organisations", status_code=201, summary="Declare an organisation")
async def add_organisation(body: OrganisationBody, caller: Principal = Depends(admin),
                           site: Platform = Depends(platform)) -> dict[str, Any]:
    return await run_in_threadpool(accounts.add_organisation, site, caller.actor, body.id, body.name,
                                   body.homepage, body.email)


def _embedded_only(site: Platform) -> None:
    if site.settings.auth_mode != "embedded":
        raise ApiError(409, "not_embedded", "users are managed by the OpenID Connect provider on this site")


@router.get("/users", summary="Embedded-mode users")
def users(_: Principal = Depends(admin), db: Session = Depends(session),
          site: Platform = Depends(platform)) -> list[dict[str, Any]]:
    _embedded_only(site)
    return accounts.list_users(db)


@router.post("/users", status_code=201, summary="Create a user; the token is shown only in this answer")
async def add_user(body: UserBody, caller: Principal = Depends(admin), site: Platform = Depends(platform)) -> dict[str, Any]:
    _embedded_only(site)
    view, token = await run_in_threadpool(accounts.add_user, site, caller.actor, body.username, body.roles,
                                          body.organisation)
    return {**view, "token": token}


@router.post("/users/{username}/token", summary="Replace a user's token; the new one is shown only here")
async def rotate(username: str, caller: Principal = Depends(admin), site: Platform = Depends(platform)) -> dict[str, str]:
    _embedded_only(site)
    token = await run_in_threadpool(accounts.rotate_token, site, caller.actor, username)
    return {"username": username, "token": token}


@router.post("/users/{username}/disabled", summary="Disable or re-enable a user")
async def disable(username: str, body: Annotated[DisableBody, Body()], caller: Principal = Depends(admin),
                  site: Platform = Depends(platform)) -> dict[str, Any]:
    _embedded_only(site)
    return await run_in_threadpool(accounts.set_disabled, site, caller.actor, username, body.disabled)
