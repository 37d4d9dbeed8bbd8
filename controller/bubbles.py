"""Bubbles: a project's Jupyter, provisioned under policy, watched until it ends.

Lifecycle: requested → provisioning → running → stopped → deleted, or failed. The controller
holds the desired state (the `bubbles` table) and a runtime holds sandboxes; `reconcile`
brings the two together: it ends what expired (profile lifetime, project end, a grant expired
or revoked), marks failed and wipes what died, adopts running sandboxes after a controller
restart and removes any sandbox the table does not account for. Every transition is an audit
event; a deletion lists each file removed with its hash.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import logging
import threading
import time
import uuid
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session

from catalog.fields import Line
from controller import access, projects, sources, views
from controller.access import _record_decision
from controller.audit.log import Event
from catalog.vocab import Role
from controller.auth import Principal
from controller.errors import ApiError, not_found
from controller.home import master_secret
from controller.runtimes.base import RUNNING, Endpoint, Removed, Runtime, RuntimeFailure, SandboxSpec
from controller.store import Bubble, Grant, Project, iso, utcnow

log = logging.getLogger(__name__)

PROVISIONING, STOPPED, DELETED, FAILED = "provisioning", "stopped", "deleted", "failed"
LIVE = (PROVISIONING, RUNNING)
HELD = (PROVISIONING, RUNNING, STOPPED)  # states in which the runtime may hold something


class Resources(BaseModel):
    """What a bubble asks for; the policy clamps it to the site's maxima. The bounds here only
    keep a request within what the policy and the record can hold (finite, 64-bit)."""

    model_config = ConfigDict(extra="forbid")

    cpu: float | None = Field(None, gt=0, le=1024, allow_inf_nan=False)
    memory_mb: int | None = Field(None, gt=0, le=1 << 24)
    disk_mb: int | None = Field(None, gt=0, le=1 << 30)
    lifetime_hours: float | None = Field(None, gt=0, le=24 * 366, allow_inf_nan=False)


class BubbleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    project: Line = Field(min_length=1, max_length=64)
    resources: Resources = Resources()
    parameters: dict[Line, dict[Line, Any]] = Field(
        {}, max_length=100,
        description="Per grant id: what the mode leaves open (dimensions of an aggregate, size of a sample)")


def jupyter_token(secret: bytes, bubble_id: str) -> str:
    """Derived, never stored: a restarted controller finds the same token again."""
    return hmac.new(secret, b"bulles/jupyter/" + bubble_id.encode(), hashlib.sha256).hexdigest()


def base_url(bubble_id: str) -> str:
    return f"/bubbles/{bubble_id}/"


def profile_input(project: dict[str, Any], grants: list[dict[str, Any]], requested: dict[str, Any],
                  now: str) -> dict[str, Any]:
    """What `bulles.bubble` sees; pure."""
    return {"now": now, "project": {k: project[k] for k in ("id", "start_date", "end_date")},
            "grants": [{k: g[k] for k in ("id", "source", "sensitivity", "mode", "expiry")} for g in grants],
            "requested": {k: v for k, v in requested.items() if v is not None}}


def expires_at(started: dt.datetime, lifetime_hours: float, last_day: str | None) -> dt.datetime:
    """The earlier of the profile's lifetime and the end of its last day (project end, grants)."""
    until = started + dt.timedelta(hours=lifetime_hours)
    if last_day:
        day_end = dt.datetime.combine(dt.date.fromisoformat(last_day) + dt.timedelta(days=1), dt.time(),
                                      tzinfo=dt.timezone.utc)
        until = min(until, day_end)
    return until


def view_names(entries: list[dict[str, Any]]) -> list[str]:
    """A name under /data per view: the source id, with the mode when a source comes twice."""
    sources = [e["source"] for e in entries]
    return [e["source"] if sources.count(e["source"]) == 1 else f"{e['source']}-{e['mode']}" for e in entries]


def describe(row: Bubble) -> dict[str, Any]:
    return {"id": row.id, "project": row.project_id, "state": row.state, "reason": row.reason,
            "runtime": row.runtime, "profile": row.profile, "views": row.views, "decision_id": row.decision_id,
            "created_by": row.created_by, "created_at": row.created_at, "started_at": row.started_at,
            "expires_at": row.expires_at, "ended_at": row.ended_at,
            "url": base_url(row.id) if row.state == RUNNING else None}


class Bubbles:
    """The lifecycle, bound to one platform and one runtime."""

    def __init__(self, platform: Any, runtime: Runtime) -> None:
        self.platform = platform
        self.runtime = runtime
        self._secret = master_secret(platform.settings.home)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reconciling = threading.Lock()

    # ------------------------------------------------------------------ helpers

    def token(self, bubble_id: str) -> str:
        return jupyter_token(self._secret, bubble_id)

    def endpoint(self, bubble_id: str) -> Endpoint | None:
        status = self.runtime.status(bubble_id)
        return status.endpoint if status.state == RUNNING else None

    def _event(self, actor: str, action: str, bubble_id: str, details: dict[str, Any],
               decision_id: str | None = None) -> Event:
        return Event(actor, action, "bubble", bubble_id, details, decision_id=decision_id)

    def _set(self, bubble_id: str, actor: str, action: str, details: dict[str, Any], **changes: Any) -> dict[str, Any]:
        def apply(session: Session) -> dict[str, Any]:
            row = session.get(Bubble, bubble_id, with_for_update=True)
            for key, value in changes.items():
                setattr(row, key, value)
            session.flush()
            return describe(row)

        return self.platform.audit.append(self._event(actor, action, bubble_id, details), apply).result

    def get(self, session: Session, principal: Principal, bubble_id: str) -> Bubble:
        """A bubble its project's members (and admins, auditors) may see; 404 for anyone else."""
        row = session.get(Bubble, bubble_id)
        if row is None:
            raise not_found("bubble", bubble_id)
        try:
            projects.get_visible(session, principal, row.project_id)
        except ApiError:
            raise not_found("bubble", bubble_id) from None  # outsiders do not learn it exists
        return row

    def get_operable(self, session: Session, principal: Principal, bubble_id: str) -> Bubble:
        """Members stop and delete their project's bubbles; admins any (auditors only look)."""
        row = self.get(session, principal, bubble_id)
        if not (principal.has(Role.admin) or projects.role_of(session, row.project_id, principal.username)):
            raise ApiError(403, "forbidden", f"only members of project '{row.project_id}' stop or delete its bubbles")
        return row

    # ------------------------------------------------------------------ create

    def create(self, principal: Principal, body: BubbleBody) -> dict[str, Any]:
        now = utcnow()
        today = now.date().isoformat()
        with self.platform.sessions() as session:
            project_row = projects.get_visible(session, principal, body.project)
            if projects.role_of(session, body.project, principal.username) is None:
                raise ApiError(403, "forbidden", f"'{principal.username}' is not a member of project '{body.project}'")
            project = projects.view(session, project_row)
            grants = [access.grant_view(g, today) for g in session.scalars(
                select(Grant).where(Grant.project_id == body.project).order_by(Grant.created_at))]
            grants = [g for g in grants if g["status"] == access.ACTIVE]
            sensitivities = {}
            for g in grants:
                sensitivities[g["source"]] = sources.get(session, g["source"]).document["sensitivity"]
        unknown = sorted(set(body.parameters) - {g["id"] for g in grants})
        if unknown:
            raise ApiError(422, "validation_error", f"parameters.{unknown[0]}: not an active grant of project "
                           f"'{body.project}'", field=f"parameters.{unknown[0]}")
        document = profile_input(project, [{**g, "sensitivity": sensitivities[g["source"]]} for g in grants],
                                 body.resources.model_dump(), today)
        decision = self.platform.decide("bubble", document)
        profile = decision.result
        bubble_id = "b-" + uuid.uuid4().hex[:16]
        if not profile.get("allowed"):
            reasons = list(profile.get("reasons") or ["refused by policy"])

            def refuse(session: Session) -> None:
                _record_decision(session, decision, document)

            self.platform.audit.append(Event(principal.actor, "bubble.refused", "project", body.project, {
                "reasons": [r.split(":", 1)[0] for r in reasons], "input_sha256": decision.input_sha256},
                decision_id=decision.id, policy_revision=decision.revision), refuse)
            raise ApiError(403, "bubble_refused", "; ".join(reasons))
        limit = self.platform.settings.bubbles_per_project
        entries = [{"grant": g["id"], "source": g["source"], "mode": g["mode"]} for g in grants]
        for entry, name in zip(entries, view_names(entries)):
            entry["name"] = name

        def insert(session: Session) -> dict[str, Any]:
            _record_decision(session, decision, document)
            live = session.scalars(select(Bubble.id).where(Bubble.project_id == body.project,
                                                           Bubble.state.in_(LIVE))).all()
            if len(live) >= limit:
                raise ApiError(409, "bubble_quota", f"project '{body.project}' already has {len(live)} bubble(s) "
                               f"({', '.join(live)}); the limit is {limit}: stop or delete one first")
            row = Bubble(id=bubble_id, project_id=body.project, state=PROVISIONING, runtime=self.runtime.name,
                         profile=profile, views=entries, decision_id=decision.id, created_by=principal.username,
                         created_at=iso(now))
            session.add(row)
            session.flush()
            return describe(row)

        self.platform.audit.append(self._event(principal.actor, "bubble.requested", bubble_id, {
            "project": body.project, "network": profile["network"], "grants": [g["id"] for g in grants],
            "profile": {k: profile[k] for k in ("cpu", "memory_mb", "disk_mb", "lifetime_hours", "expires")}},
            decision_id=decision.id), insert)
        return self._provision(principal.actor, bubble_id, body, profile, entries)

    def _provision(self, actor: str, bubble_id: str, body: BubbleBody, profile: dict[str, Any],
                   entries: list[dict[str, Any]]) -> dict[str, Any]:
        home = self.platform.settings.home
        try:
            mounted = {}
            with self.platform.sessions() as session:
                chosen = {e["grant"]: session.get(Grant, e["grant"]) for e in entries}
            for entry in entries:
                request = views.request_for_grant(chosen[entry["grant"]], body.parameters.get(entry["grant"], {}))
                manifest, _ = views.materialise(self.platform, actor, request)
                entry["view"] = manifest["view"]
                mounted[entry["name"]] = views.views_root(home) / manifest["view"]
            spec = SandboxSpec(bubble=bubble_id, project=body.project, network=profile["network"],
                               cpu=float(profile["cpu"]), memory_mb=int(profile["memory_mb"]),
                               disk_mb=int(profile["disk_mb"]), base_url=base_url(bubble_id),
                               token=self.token(bubble_id), views=mounted)
            started = utcnow()
            endpoint = self.runtime.create(spec)
            self._wait_ready(bubble_id, endpoint)
        except Exception as exc:  # whatever stops provisioning, the bubble ends failed and wiped, never half-made
            reason = exc.message if isinstance(exc, ApiError) else str(exc)
            removed = self._wipe(bubble_id)
            self._set(bubble_id, actor, "bubble.failed", {"reason": reason[:500], "removed": removed},
                      state=FAILED, reason=reason[:2000], ended_at=iso(utcnow()))
            if isinstance(exc, ApiError):
                raise
            raise ApiError(502, "bubble_failed", f"bubble {bubble_id} could not start: {reason}") from None
        until = expires_at(started, float(profile["lifetime_hours"]), profile.get("expires"))
        return self._set(bubble_id, actor, "bubble.started", {
            "views": [{k: e[k] for k in ("name", "view", "grant", "source", "mode")} for e in entries],
            "network": profile["network"], "expires_at": iso(until)},
            state=RUNNING, views=entries, started_at=iso(started), expires_at=iso(until))

    def _wait_ready(self, bubble_id: str, endpoint: Endpoint) -> None:
        """Ready when Jupyter answers its status API with our token; failed when the sandbox
        exits first or the timeout passes."""
        deadline = time.monotonic() + self.platform.settings.bubble_start_timeout
        transport = httpx.HTTPTransport(uds=endpoint.address) if endpoint.kind == "unix" else None
        url = ("http://bulle" if transport else endpoint.address.rstrip("/")) + base_url(bubble_id) + "api/status"
        with httpx.Client(transport=transport, timeout=2) as client:
            while time.monotonic() < deadline:
                try:
                    if client.get(url, headers={"Authorization": f"token {self.token(bubble_id)}"}).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                status = self.runtime.status(bubble_id)
                if status.state != RUNNING:
                    raise RuntimeFailure(status.reason or "the sandbox exited")
                time.sleep(0.05)
        raise TimeoutError(f"Jupyter did not answer within {self.platform.settings.bubble_start_timeout:g} s")

    def _wipe(self, bubble_id: str) -> list[dict[str, Any]]:
        try:
            removed: list[Removed] = self.runtime.delete(bubble_id)
        except (RuntimeFailure, OSError) as exc:
            log.error("bubble %s: wiping failed: %s", bubble_id, exc)
            return [{"error": str(exc)[:300]}]
        return [{"path": r.path, "sha256": r.sha256, "bytes": r.bytes} for r in removed]

    # ------------------------------------------------------------------ stop, delete

    def stop(self, principal: Principal, bubble_id: str) -> dict[str, Any]:
        with self.platform.sessions() as session:
            row = self.get_operable(session, principal, bubble_id)
            state = row.state
        if state not in LIVE:
            raise ApiError(409, f"bubble_{state}", f"bubble {bubble_id} is {state}")
        self.runtime.stop(bubble_id)
        return self._set(bubble_id, principal.actor, "bubble.stopped", {"by": principal.username},
                         state=STOPPED, ended_at=iso(utcnow()))

    def delete(self, principal: Principal, bubble_id: str) -> dict[str, Any]:
        with self.platform.sessions() as session:
            row = self.get_operable(session, principal, bubble_id)
            state = row.state
        if state == DELETED:
            raise ApiError(409, "bubble_deleted", f"bubble {bubble_id} is already deleted")
        return self._end(bubble_id, principal.actor, DELETED, f"deleted by {principal.username}")

    def _end(self, bubble_id: str, actor: str, state: str, reason: str) -> dict[str, Any]:
        removed = self._wipe(bubble_id)
        action = "bubble.deleted" if state == DELETED else "bubble.failed"
        return self._set(bubble_id, actor, action, {"reason": reason, "removed": removed},
                         state=state, reason=reason, ended_at=iso(utcnow()))

    # ------------------------------------------------------------------ reconcile

    def expiry_reason(self, session: Session, row: Bubble, now: dt.datetime) -> str | None:
        """Why a bubble must end now, or None."""
        if row.expires_at and iso(now) >= row.expires_at:
            return f"expired: its lifetime ended at {row.expires_at}"
        project = session.get(Project, row.project_id)
        today = now.date().isoformat()
        if today > project.end_date:
            return f"expired: project '{row.project_id}' ended on {project.end_date}"
        for entry in row.views:
            grant = session.get(Grant, entry["grant"])
            state = access.grant_view(grant, today)["status"] if grant else "missing"
            if state != access.ACTIVE:
                return f"grant_{state}: the grant of '{entry['source']}' ({entry['grant']}) is {state}"
        return None

    def reconcile(self) -> list[tuple[str, str]]:
        """One pass; what it did, as (bubble, action). Safe to run at any time, from any thread."""
        done: list[tuple[str, str]] = []
        with self._reconciling:
            now = utcnow()
            with self.platform.sessions() as session:
                rows = session.scalars(select(Bubble).where(Bubble.state.in_(HELD))).all()
                plans = []
                for row in rows:
                    reason = self.expiry_reason(session, row, now)
                    plans.append((row.id, row.state, row.created_at, reason))
            known = {bubble_id for bubble_id, *_ in plans}
            timeout = dt.timedelta(seconds=self.platform.settings.bubble_start_timeout * 2)
            for bubble_id, state, created_at, reason in plans:
                if reason:
                    self._end(bubble_id, "system:reconciler", DELETED, reason)
                    done.append((bubble_id, "deleted"))
                    continue
                if state == RUNNING:
                    status = self.runtime.status(bubble_id)
                    if status.state != RUNNING:
                        self._end(bubble_id, "system:reconciler", FAILED, f"sandbox_died: {status.reason}")
                        done.append((bubble_id, "failed"))
                elif state == PROVISIONING and iso(now - timeout) > created_at:
                    self._end(bubble_id, "system:reconciler", FAILED, "provisioning_interrupted: the controller "
                              "stopped while the bubble was being provisioned")
                    done.append((bubble_id, "failed"))
            candidates = [b for b in self.runtime.list() if b not in known]
            if candidates:  # asked again: a bubble created since the first query is no orphan
                with self.platform.sessions() as session:
                    known |= set(session.scalars(select(Bubble.id).where(Bubble.id.in_(candidates),
                                                                          Bubble.state.in_(HELD))).all())
            for bubble_id in candidates:
                if bubble_id not in known:
                    removed = self._wipe(bubble_id)
                    self.platform.audit.append(self._event("system:reconciler", "bubble.orphan_removed", bubble_id,
                                                           {"removed": removed}))
                    done.append((bubble_id, "orphan_removed"))
        return done

    def start(self, interval: float) -> None:
        self.reconcile()  # adoption after a restart: before anyone is served
        if interval > 0:
            self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True, name="bubble-reconciler")
            self._thread.start()

    def _loop(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self.reconcile()
            except Exception:  # the next pass tries again; the log says why this one failed
                log.exception("bubble reconciliation failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
