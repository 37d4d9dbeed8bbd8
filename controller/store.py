"""Platform state: SQLAlchemy 2 models, engine set-up, and Alembic migrations.

SQLite is the embedded default, PostgreSQL the production store; the same models and
migrations serve both. The audit tables live here too so that a state change and the event
recording it commit in one transaction (see controller.audit.log).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

SeqType = BigInteger().with_variant(Integer, "sqlite")  # INTEGER PRIMARY KEY is SQLite's rowid


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """Fixed-width UTC timestamps, so that string order is time order in every database."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(300))
    homepage: Mapped[str | None] = mapped_column(String(500))
    email: Mapped[str | None] = mapped_column(String(320))
    created_at: Mapped[str] = mapped_column(String(32))


class User(Base):
    __tablename__ = "users"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    organisation: Mapped[str | None] = mapped_column(ForeignKey("organisations.id"))
    roles: Mapped[list[str]]
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[str] = mapped_column(String(32))


class SourceRow(Base):
    __tablename__ = "sources"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    publisher: Mapped[str] = mapped_column(ForeignKey("organisations.id"), index=True)
    sensitivity: Mapped[str] = mapped_column(String(16), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    title: Mapped[str] = mapped_column(String(300))
    themes: Mapped[str] = mapped_column(String(500), doc="'|EDUC|SOCI|' so a LIKE finds one theme")
    search_text: Mapped[str] = mapped_column(Text)
    document: Mapped[dict[str, Any]]
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    retired_at: Mapped[str | None] = mapped_column(String(32))


class AuditEvent(Base):
    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(SeqType, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128))
    action: Mapped[str] = mapped_column(String(64))
    subject_type: Mapped[str] = mapped_column(String(32))
    subject_id: Mapped[str] = mapped_column(String(128))
    decision_id: Mapped[str | None] = mapped_column(String(64))
    policy_revision: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[str] = mapped_column(Text, doc="canonical JSON of the details object")
    leaf_hash: Mapped[bytes] = mapped_column(LargeBinary(32))
    chain_hash: Mapped[bytes] = mapped_column(LargeBinary(32))

    __table_args__ = (
        Index("ix_audit_events_ts", "ts"),
        Index("ix_audit_events_actor", "actor"),
        Index("ix_audit_events_action", "action"),
        Index("ix_audit_events_subject", "subject_type", "subject_id"),
    )


class Checkpoint(Base):
    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    size: Mapped[int] = mapped_column(BigInteger)
    root: Mapped[bytes] = mapped_column(LargeBinary(32))
    chain_head: Mapped[bytes] = mapped_column(LargeBinary(32))
    origin: Mapped[str] = mapped_column(String(200))
    ts: Mapped[str] = mapped_column(String(32))
    key_id: Mapped[str] = mapped_column(String(16))
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    title: Mapped[str] = mapped_column(String(300))
    description: Mapped[str] = mapped_column(Text, default="")
    purpose: Mapped[str] = mapped_column(String(64))
    legal_basis: Mapped[str | None] = mapped_column(String(64))
    dpia_reference: Mapped[str | None] = mapped_column(String(200))
    start_date: Mapped[str] = mapped_column(String(10))
    end_date: Mapped[str] = mapped_column(String(10))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    version: Mapped[int] = mapped_column(Integer)


class ProjectMember(Base):
    __tablename__ = "project_members"

    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), primary_key=True)
    username: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)
    role: Mapped[str] = mapped_column(String(16))


class DecisionRecord(Base):
    """Every policy decision, with the hash of its input (the input itself in DecisionInput)."""

    __tablename__ = "decisions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    package: Mapped[str] = mapped_column(String(32))
    revision: Mapped[str] = mapped_column(String(64))
    input_sha256: Mapped[str] = mapped_column(ForeignKey("decision_inputs.sha256"))
    result: Mapped[dict[str, Any]]
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[str] = mapped_column(String(32))


class DecisionInput(Base):
    __tablename__ = "decision_inputs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    document: Mapped[dict[str, Any]]


class AccessRequest(Base):
    __tablename__ = "access_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id"), index=True)
    publisher: Mapped[str] = mapped_column(String(64), index=True)
    requester: Mapped[str] = mapped_column(String(64))
    columns: Mapped[list[str]]
    justification: Mapped[str] = mapped_column(Text)
    requested_mode: Mapped[str | None] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    decision_id: Mapped[str] = mapped_column(ForeignKey("decisions.id"))
    mode: Mapped[str | None] = mapped_column(String(16))
    parameters: Mapped[dict[str, Any]]
    expiry: Mapped[str | None] = mapped_column(String(10))
    reasons: Mapped[list[str]]
    reviewers: Mapped[list[str]]
    reviews: Mapped[list[str]] = mapped_column(JSON, doc="[{reviewer, organisation, verdict, comment, at}]")
    created_at: Mapped[str] = mapped_column(String(32))
    decided_at: Mapped[str | None] = mapped_column(String(32))


class Grant(Base):
    __tablename__ = "grants"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    request_id: Mapped[str] = mapped_column(ForeignKey("access_requests.id"), unique=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    source_id: Mapped[str] = mapped_column(ForeignKey("sources.id"), index=True)
    publisher: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    columns: Mapped[list[str]]
    parameters: Mapped[dict[str, Any]]
    expiry: Mapped[str] = mapped_column(String(10))
    decision_id: Mapped[str] = mapped_column(ForeignKey("decisions.id"))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[str] = mapped_column(String(32))
    revoked_at: Mapped[str | None] = mapped_column(String(32))
    revoked_by: Mapped[str | None] = mapped_column(String(64))
    revoke_reason: Mapped[str | None] = mapped_column(Text)


class Bubble(Base):
    """A project's bubble: desired state here, the sandbox in a runtime (see controller.bubbles)."""

    __tablename__ = "bubbles"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    reason: Mapped[str | None] = mapped_column(Text)
    runtime: Mapped[str] = mapped_column(String(16))
    profile: Mapped[dict[str, Any]]
    views: Mapped[list[str]] = mapped_column(JSON, doc="[{name, view, grant, source, mode}]")
    decision_id: Mapped[str] = mapped_column(ForeignKey("decisions.id"))
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[str] = mapped_column(String(32))
    started_at: Mapped[str | None] = mapped_column(String(32))
    expires_at: Mapped[str | None] = mapped_column(String(32))
    ended_at: Mapped[str | None] = mapped_column(String(32))


class UsedTicket(Base):
    """A gateway ticket already used (controller.gateway), kept until it would have expired so
    that no controller process of the site, now or after a restart, lets it in again."""

    __tablename__ = "used_tickets"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[str] = mapped_column(String(32), index=True)


class ExportRequest(Base):
    """A request to take files out of a bubble, through checks, policy and review (controller.exports)."""

    __tablename__ = "export_requests"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id"), index=True)
    bubble_id: Mapped[str] = mapped_column(ForeignKey("bubbles.id"), index=True)
    requester: Mapped[str] = mapped_column(String(64), index=True)
    justification: Mapped[str] = mapped_column(Text)
    paths: Mapped[list[str]] = mapped_column(JSON, doc="what was asked for, files or folders of the outbox")
    state: Mapped[str] = mapped_column(String(20), index=True)
    round: Mapped[int] = mapped_column(Integer)
    files: Mapped[list[str]] = mapped_column(JSON, doc="[{path, size, sha256, stored, type}] of this round")
    findings: Mapped[list[str]] = mapped_column(JSON)
    decision_id: Mapped[str | None] = mapped_column(ForeignKey("decisions.id"))
    decision: Mapped[dict[str, Any]] = mapped_column(JSON, doc="{action, reviewers, organisations, reasons, revision}")
    votes: Mapped[list[str]] = mapped_column(JSON, doc="[{round, reviewer, organisation, vote, comment, at}]")
    history: Mapped[list[str]] = mapped_column(JSON, doc="[{state, at, by, note}]")
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[str] = mapped_column(String(32))
    released_at: Mapped[str | None] = mapped_column(String(32))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the single writer; FULL makes each commit survive power loss.
    # isolation_level=None hands transaction control to SQLAlchemy so SAVEPOINTs work.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Writers ask for "BEGIN IMMEDIATE" (execution option) so they queue on the lock up front
    # instead of failing when a deferred transaction tries to upgrade.
    conn.exec_driver_sql(conn.get_execution_options().get("sqlite_begin", "BEGIN"))


def writer_engine(engine: Engine) -> Engine:
    return engine.execution_options(sqlite_begin="BEGIN IMMEDIATE")


def make_engine(url: str, **kwargs: Any) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    return create_engine(url, pool_pre_ping=True, **kwargs)


def make_sessionmaker(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).parent / "migrations"))
    cfg.attributes["engine"] = engine
    return cfg


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision; safe to run at every start."""
    command.upgrade(alembic_config(engine), "head")
