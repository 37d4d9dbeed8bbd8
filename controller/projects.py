"""Projects: purpose, legal basis, DPIA, members, dates. A project's end bounds everything
granted to it; researchers see and change only their own projects."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from catalog.fields import Line, Text
from catalog.model import SOURCE_ID, FieldError
from catalog.vocab import LegalBasis, Purpose, Role
from controller.accounts import USERNAME
from controller.audit.log import Event
from controller.auth import Principal
from controller.errors import ApiError, forbidden, not_found
from controller.platform import Platform
from controller.store import Grant, Project, ProjectMember, User, iso, utcnow

OWNER, MEMBER = "owner", "member"
MAX_MEMBERS = 100
ACTIVE_GRANT = "active"  # controller.access.ACTIVE; access depends on projects, not the reverse


class Member(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(pattern=USERNAME)
    role: Literal["owner", "member"] = MEMBER


class _Dates(BaseModel):
    @model_validator(mode="after")
    def _ordered(self) -> Any:
        start, end = getattr(self, "start_date", None), getattr(self, "end_date", None)
        if start and end and end < start:
            raise ValueError("end_date is before start_date")
        return self


class ProjectSpec(_Dates):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: str = Field(pattern=SOURCE_ID, description="A public name: it appears in URLs and in what providers "
                    "and reviewers see; a name already taken answers 409 whoever asks")
    title: Line = Field(min_length=1, max_length=300)
    description: Text = Field("", max_length=20000)
    purpose: Purpose
    legal_basis: LegalBasis | None = None
    dpia_reference: Line | None = Field(None, min_length=1, max_length=200)
    start_date: dt.date
    end_date: dt.date
    members: list[Member] = Field([], max_length=MAX_MEMBERS)


class ProjectChanges(_Dates):
    """What an owner may change. The purpose may not: grants were decided on it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: Line | None = Field(None, min_length=1, max_length=300)
    description: Text | None = Field(None, max_length=20000)
    legal_basis: LegalBasis | None = None
    dpia_reference: Line | None = Field(None, min_length=1, max_length=200)
    end_date: dt.date | None = None
    members: list[Member] | None = Field(None, max_length=MAX_MEMBERS)

    @model_validator(mode="after")
    def _kept(self) -> "ProjectChanges":
        """Only the legal basis and the DPIA reference may be removed (null); the rest is changed."""
        for name in ("title", "description", "end_date", "members"):
            if name in self.model_fields_set and getattr(self, name) is None:
                raise FieldError(name, "cannot be removed; give a new value")
        return self


def _members(session: Session, project_id: str) -> list[dict[str, str]]:
    rows = session.scalars(select(ProjectMember).where(ProjectMember.project_id == project_id)
                           .order_by(ProjectMember.username))
    return [{"username": m.username, "role": m.role} for m in rows]


def view(session: Session, project: Project) -> dict[str, Any]:
    return {"id": project.id, "title": project.title, "description": project.description, "purpose": project.purpose,
            "legal_basis": project.legal_basis, "dpia_reference": project.dpia_reference,
            "start_date": project.start_date, "end_date": project.end_date, "members": _members(session, project.id),
            "created_by": project.created_by, "created_at": project.created_at, "updated_at": project.updated_at,
            "version": project.version}


def role_of(session: Session, project_id: str, username: str) -> str | None:
    member = session.get(ProjectMember, (project_id, username))
    return member.role if member else None


def get_visible(session: Session, principal: Principal, project_id: str) -> Project:
    """The project, if the caller may see it (members, admins, auditors); 404 otherwise, so
    that outsiders cannot even learn which projects exist."""
    project = session.get(Project, project_id)
    if project is None or not (principal.has(Role.admin, Role.auditor) or role_of(session, project_id, principal.username)):
        raise not_found("project", project_id)
    return project


def _check_members(members: list[Member], owner: str) -> list[Member]:
    seen = {m.username for m in members}
    if len(seen) != len(members):
        raise ApiError(422, "validation_error", "members: a user is listed twice", field="members")
    if owner not in seen:
        members = [Member(username=owner, role=OWNER), *members]
    if len(members) > MAX_MEMBERS:
        raise ApiError(422, "validation_error", f"members: at most {MAX_MEMBERS} members", field="members")
    return members


def _require_users(session: Session, platform: Platform, members: list[Member]) -> None:
    """Members are users of this site who may sign in: an embedded user not disabled, or one
    declared in the configuration. With OpenID Connect the provider holds the directory, which
    this site cannot list: names are then taken as given."""
    if platform.settings.auth_mode != "embedded":
        return
    known = {u.username for u in platform.settings.users}
    wanted = [m.username for m in members if m.username not in known]
    enabled = set(session.scalars(select(User.username).where(User.username.in_(wanted), User.disabled.is_(False))))
    for index, member in enumerate(members):
        if member.username in wanted and member.username not in enabled:
            raise ApiError(422, "validation_error", f"members.{index}.username: '{member.username}' is not an "
                           "enabled user of this site", field=f"members.{index}.username")


def active_grants(session: Session, project_id: str, today: str) -> int:
    return session.scalar(select(func.count()).select_from(Grant).where(
        Grant.project_id == project_id, Grant.status == ACTIVE_GRANT, Grant.expiry >= today)) or 0


def create(platform: Platform, principal: Principal, spec: ProjectSpec) -> dict[str, Any]:
    if not principal.has(Role.researcher):
        raise forbidden("only researchers create projects")
    members = _check_members([Member(username=principal.username, role=OWNER)] + [
        m for m in spec.members if m.username != principal.username], principal.username)

    def apply(session: Session) -> dict[str, Any]:
        if session.get(Project, spec.id) is not None:
            raise ApiError(409, "project_exists", f"id: the name '{spec.id}' is taken; choose another", field="id")
        _require_users(session, platform, spec.members)
        now = iso(utcnow())
        project = Project(id=spec.id, title=spec.title, description=spec.description, purpose=spec.purpose.value,
                          legal_basis=spec.legal_basis.value if spec.legal_basis else None,
                          dpia_reference=spec.dpia_reference, start_date=spec.start_date.isoformat(),
                          end_date=spec.end_date.isoformat(), created_by=principal.username, created_at=now,
                          updated_at=now, version=1)
        session.add(project)
        session.add_all(ProjectMember(project_id=spec.id, username=m.username, role=m.role) for m in members)
        session.flush()
        return view(session, project)

    event = Event(principal.actor, "project.created", "project", spec.id, {
        "purpose": spec.purpose.value, "legal_basis": spec.legal_basis.value if spec.legal_basis else None,
        "dpia_reference": spec.dpia_reference, "end_date": spec.end_date.isoformat(),
        "members": [m.model_dump() for m in members]})
    return platform.audit.append(event, apply).result


def change(platform: Platform, principal: Principal, project_id: str, changes: ProjectChanges) -> dict[str, Any]:
    provided = changes.model_dump(exclude_unset=True)
    if not provided:
        raise ApiError(422, "validation_error", "body: nothing to change", field="body")

    def apply(session: Session) -> dict[str, Any]:
        project = get_visible(session, principal, project_id)
        if role_of(session, project_id, principal.username) != OWNER:
            raise forbidden("only the project's owners change it")
        removed = sorted(k for k in ("legal_basis", "dpia_reference") if k in provided and provided[k] is None
                         and getattr(project, k) is not None)
        if removed:
            relying = active_grants(session, project_id, utcnow().date().isoformat())
            if relying:
                raise ApiError(409, "grants_rely_on_it", f"{removed[0]}: {relying} active grant(s) of project "
                               f"'{project_id}' were decided on it; it cannot be removed while they last",
                               field=removed[0], grants=relying)
        for name in ("title", "description", "dpia_reference"):
            if name in provided:
                setattr(project, name, provided[name])
        if "legal_basis" in provided:
            project.legal_basis = provided["legal_basis"].value if provided["legal_basis"] else None
        if "end_date" in provided:
            end = provided["end_date"]
            if end is None or end.isoformat() < project.start_date:
                raise ApiError(422, "validation_error", "end_date: must be on or after start_date", field="end_date")
            project.end_date = end.isoformat()
            # The end bounds every grant: shortening the project shortens them.
            session.execute(update(Grant).where(Grant.project_id == project_id, Grant.expiry > project.end_date)
                            .values(expiry=project.end_date))
        if "members" in provided:
            members = _check_members(changes.members or [], principal.username)
            if not any(m.role == OWNER for m in members):
                raise ApiError(422, "validation_error", "members: a project keeps at least one owner", field="members")
            _require_users(session, platform, changes.members or [])
            session.query(ProjectMember).filter(ProjectMember.project_id == project_id).delete()
            session.add_all(ProjectMember(project_id=project_id, username=m.username, role=m.role) for m in members)
        project.version += 1
        project.updated_at = iso(utcnow())
        session.flush()
        return view(session, project)

    event_details = {k: (v.isoformat() if isinstance(v, dt.date) else v) for k, v in
                     changes.model_dump(mode="json", exclude_unset=True).items()}
    changed = platform.audit.append(Event(principal.actor, "project.changed", "project", project_id, event_details),
                                    apply).result
    if "end_date" in provided:
        platform.cancel_closed_exports(f"the new end of project {project_id}")
    return changed


def visible(session: Session, principal: Principal) -> list[dict[str, Any]]:
    query = select(Project).order_by(Project.id)
    if not principal.has(Role.admin, Role.auditor):
        query = query.join(ProjectMember).where(ProjectMember.username == principal.username)
    return [view(session, p) for p in session.scalars(query)]
