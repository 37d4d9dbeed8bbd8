"""Bubbles: a project's Jupyter, provisioned under policy, watched until it ends.

Lifecycle: provisioning → running → stopping → stopped, and from any of these deleting → deleted;
provisioning or running → failing → failed. The controller holds the desired state (the
`bubbles` table) and a runtime holds sandboxes; `reconcile` brings the two together: it ends
what expired (profile lifetime, project end, a grant expired or revoked), marks failed and wipes
what died, finishes what a crash left half-done, adopts running sandboxes after a controller
restart and removes any sandbox the table does not account for.

Concurrent requests (a delete while the bubble is provisioned, a stop racing a delete, two
starts against the quota) are settled by the state row: every transition is a compare-and-set
applied in the same transaction as its audit event, so each state change has exactly one event
and a request that lost the race gets a 409 saying where the bubble went. Provisioning looks
again before each step and stops when the bubble left `provisioning`; whoever moved it does the
cleaning. The runtime steps of one bubble (create, kill, unmount, wipe) run one at a time.
A deletion lists each file removed with its hash (runtimes.wipe says what is read and what not).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Iterator
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

PROVISIONING, STOPPING, STOPPED = "provisioning", "stopping", "stopped"
DELETING, DELETED, FAILING, FAILED = "deleting", "deleted", "failing", "failed"
LIVE = (PROVISIONING, RUNNING)  # what a stop stops
DELETABLE = (PROVISIONING, RUNNING, STOPPING, STOPPED, FAILED)  # a deletion overtakes a stop
COUNTED = (PROVISIONING, RUNNING, STOPPING, DELETING, FAILING)  # the quota: all but stopped and the final states
HELD = (PROVISIONING, RUNNING, STOPPING, STOPPED, DELETING, FAILING)  # the runtime may hold something
ENDS = {DELETING: (DELETED, "bubble.deleted"), FAILING: (FAILED, "bubble.failed")}  # once wiped
UNDER_WAY = {PROVISIONING: "being provisioned", STOPPING: "being stopped", DELETING: "being deleted",
             FAILING: "failing (being wiped)"}
RECONCILER = "system:reconciler"


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


def conflict(bubble_id: str, state: str) -> ApiError:
    """The answer to a request the bubble's state no longer allows (another request moved it)."""
    return ApiError(409, f"bubble_{state}", f"bubble {bubble_id} is {UNDER_WAY.get(state, state)}")


def removal_record(removed: Removed) -> dict[str, Any]:
    """One entry of a deletion record: plain text and numbers, so the event always encodes."""
    entry = {"path": removed.path, "sha256": removed.sha256, "bytes": removed.bytes, "allocated": removed.allocated,
             "kind": removed.kind}
    extra = {"path_base64": removed.path_base64, "not_hashed": removed.not_hashed, "not_removed": removed.not_removed}
    return entry | {key: value for key, value in extra.items() if value is not None}


class _Cancelled(Exception):
    """The bubble left `provisioning` while it was provisioned: provisioning stops there."""

    def __init__(self, state: str) -> None:
        super().__init__(state)
        self.state = state


class _Operations:
    """The bubbles with an operation under way in this controller (the reconciler leaves them
    to it), each with one lock for its runtime steps."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._held: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, bubble_id: str) -> Iterator[threading.Lock]:
        with self._guard:
            lock, users = self._held.get(bubble_id, (threading.Lock(), 0))
            self._held[bubble_id] = (lock, users + 1)
        try:
            yield lock
        finally:
            with self._guard:
                lock, users = self._held[bubble_id]
                if users == 1:
                    del self._held[bubble_id]
                else:
                    self._held[bubble_id] = (lock, users - 1)

    def busy(self, bubble_id: str) -> bool:
        with self._guard:
            return bubble_id in self._held


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
        self._operations = _Operations()

    # ------------------------------------------------------------------ helpers

    def token(self, bubble_id: str) -> str:
        return jupyter_token(self._secret, bubble_id)

    def endpoint(self, bubble_id: str) -> Endpoint | None:
        status = self.runtime.status(bubble_id)
        return status.endpoint if status.state == RUNNING else None

    def _event(self, actor: str, action: str, bubble_id: str, details: dict[str, Any],
               decision_id: str | None = None) -> Event:
        return Event(actor, action, "bubble", bubble_id, details, decision_id=decision_id)

    def _transition(self, bubble_id: str, actor: str, action: str, details: dict[str, Any], expected: tuple[str, ...],
                    **changes: Any) -> dict[str, Any]:
        """Compare-and-set: the change and its event commit together, and only if the bubble is
        still in one of the `expected` states; otherwise nothing is written and the caller gets
        the 409 of the state it is in."""
        def apply(session: Session) -> dict[str, Any]:
            row = session.get(Bubble, bubble_id, with_for_update=True)
            if row.state not in expected:
                raise conflict(bubble_id, row.state)
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
            session.get(Project, body.project, with_for_update=True)  # one count at a time per project
            _record_decision(session, decision, document)
            live = session.scalars(select(Bubble.id).where(Bubble.project_id == body.project,
                                                           Bubble.state.in_(COUNTED))).all()
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
        with self._operations.hold(bubble_id) as lock:
            try:
                mounted = {}
                with self.platform.sessions() as session:
                    chosen = {e["grant"]: session.get(Grant, e["grant"]) for e in entries}
                for entry in entries:
                    self._still_provisioning(bubble_id)
                    request = views.request_for_grant(chosen[entry["grant"]], body.parameters.get(entry["grant"], {}))
                    manifest, _ = views.materialise(self.platform, actor, request)
                    entry["view"] = manifest["view"]
                    mounted[entry["name"]] = views.views_root(home) / manifest["view"]
                spec = SandboxSpec(bubble=bubble_id, project=body.project, network=profile["network"],
                                   cpu=float(profile["cpu"]), memory_mb=int(profile["memory_mb"]),
                                   disk_mb=int(profile["disk_mb"]), base_url=base_url(bubble_id),
                                   token=self.token(bubble_id), views=mounted)
                with lock:  # checked under the lock: a deletion that came first has nothing to kill yet
                    self._still_provisioning(bubble_id)
                    started = utcnow()
                    endpoint = self.runtime.create(spec)
                self._wait_ready(bubble_id, endpoint)
            except _Cancelled as cancelled:  # whoever moved the bubble stops or wipes what was made
                raise ApiError(409, f"bubble_{cancelled.state}", f"bubble {bubble_id} is "
                               f"{UNDER_WAY.get(cancelled.state, cancelled.state)}: it was not started") from None
            except Exception as exc:  # whatever stops provisioning, the bubble ends failed and wiped, never half-made
                reason = exc.message if isinstance(exc, ApiError) else str(exc)
                self._end(bubble_id, actor, FAILING, reason, (PROVISIONING,))
                if isinstance(exc, ApiError):
                    raise
                raise ApiError(502, "bubble_failed", f"bubble {bubble_id} could not start: {reason}") from None
            until = expires_at(started, float(profile["lifetime_hours"]), profile.get("expires"))
            return self._transition(bubble_id, actor, "bubble.started", {
                "views": [{k: e[k] for k in ("name", "view", "grant", "source", "mode")} for e in entries],
                "network": profile["network"], "expires_at": iso(until)}, (PROVISIONING,),
                state=RUNNING, views=entries, started_at=iso(started), expires_at=iso(until))

    def _still_provisioning(self, bubble_id: str) -> None:
        with self.platform.sessions() as session:
            state = session.scalar(select(Bubble.state).where(Bubble.id == bubble_id))
        if state != PROVISIONING:
            raise _Cancelled(state)

    def _wait_ready(self, bubble_id: str, endpoint: Endpoint) -> None:
        """Ready when Jupyter answers its status API with our token; failed when the sandbox
        exits first or the timeout passes."""
        deadline = time.monotonic() + self.platform.settings.bubble_start_timeout
        transport = httpx.HTTPTransport(uds=endpoint.address) if endpoint.kind == "unix" else None
        url = ("http://bulle" if transport else endpoint.address.rstrip("/")) + base_url(bubble_id) + "api/status"
        with httpx.Client(transport=transport, timeout=2) as client:
            while time.monotonic() < deadline:
                self._still_provisioning(bubble_id)
                try:
                    if client.get(url, headers={"Authorization": f"token {self.token(bubble_id)}"}).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                status = self.runtime.status(bubble_id)
                if status.state != RUNNING:
                    self._still_provisioning(bubble_id)  # killed by a deletion or a stop: not a failure
                    raise RuntimeFailure(status.reason or "the sandbox exited")
                time.sleep(0.05)
        raise TimeoutError(f"Jupyter did not answer within {self.platform.settings.bubble_start_timeout:g} s")

    def _wipe(self, bubble_id: str, state: str) -> list[dict[str, Any]]:
        """The runtime's wipe, as the record lists it. Odd files never make it fail; when the
        runtime fails anyway, the bubble stays where it is and the reconciler tries again."""
        try:
            return [removal_record(r) for r in self.runtime.delete(bubble_id)]
        except (RuntimeFailure, OSError) as exc:
            raise self._unfinished(bubble_id, state, exc) from None

    def _unfinished(self, bubble_id: str, state: str, exc: Exception) -> ApiError:
        log.error("bubble %s: the runtime failed while the bubble was %s: %s", bubble_id, state, exc)
        return ApiError(502, "bubble_runtime_failed", f"bubble {bubble_id} is {UNDER_WAY.get(state, state)}: "
                        "the runtime could not finish, the reconciler tries again")

    # ------------------------------------------------------------------ stop, delete

    def stop(self, principal: Principal, bubble_id: str) -> dict[str, Any]:
        with self.platform.sessions() as session:
            self.get_operable(session, principal, bubble_id)
        with self._operations.hold(bubble_id) as lock:
            self._transition(bubble_id, principal.actor, "bubble.stopping", {"by": principal.username}, LIVE,
                             state=STOPPING)
            return self._finish_stop(bubble_id, principal.actor, lock)

    def _finish_stop(self, bubble_id: str, actor: str, lock: threading.Lock) -> dict[str, Any]:
        with lock:
            try:
                self.runtime.stop(bubble_id)
            except (RuntimeFailure, OSError) as exc:
                raise self._unfinished(bubble_id, STOPPING, exc) from None
        return self._transition(bubble_id, actor, "bubble.stopped", {}, (STOPPING,),
                                state=STOPPED, ended_at=iso(utcnow()))

    def delete(self, principal: Principal, bubble_id: str) -> dict[str, Any]:
        with self.platform.sessions() as session:
            self.get_operable(session, principal, bubble_id)
        return self._end(bubble_id, principal.actor, DELETING, f"deleted by {principal.username}", DELETABLE)

    def _end(self, bubble_id: str, actor: str, ending: str, reason: str, expected: tuple[str, ...]) -> dict[str, Any]:
        """Deleting or failing: the state first (nothing can start or stop it any more), then the wipe."""
        with self._operations.hold(bubble_id) as lock:
            self._begin_end(bubble_id, actor, ending, reason, expected)
            return self._finish_end(bubble_id, actor, lock)

    def _begin_end(self, bubble_id: str, actor: str, ending: str, reason: str, expected: tuple[str, ...]) -> None:
        self._transition(bubble_id, actor, f"bubble.{ending}", {"reason": reason[:500]}, expected,
                         state=ending, reason=reason[:2000])

    def _finish_end(self, bubble_id: str, actor: str, lock: threading.Lock) -> dict[str, Any]:
        with self.platform.sessions() as session:
            row = session.get(Bubble, bubble_id)
            state, reason = row.state, row.reason or ""
        if state not in ENDS:
            raise conflict(bubble_id, state)
        final, action = ENDS[state]
        with lock:
            removed = self._wipe(bubble_id, state)
        return self._transition(bubble_id, actor, action, {"reason": reason[:500], "removed": removed}, (state,),
                                state=final, ended_at=iso(utcnow()))

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

    def reconcile(self, *, wipe: bool = True) -> list[tuple[str, str]]:
        """One pass; what it did, as (bubble, action). Safe to run at any time, from any thread.
        Each bubble on its own: one whose handling fails is logged, reported as (bubble, "error")
        and tried again at the next pass. Without `wipe` (at start) it decides and records what
        ends, and leaves the wipes, the slow part, to the next pass."""
        done: list[tuple[str, str]] = []
        with self._reconciling:
            now = utcnow()
            with self.platform.sessions() as session:
                known = set(session.scalars(select(Bubble.id).where(Bubble.state.in_(HELD))).all())
            for bubble_id in sorted(known):
                if self._operations.busy(bubble_id):  # a request of this controller is at it
                    continue
                try:
                    action = self._reconcile_one(bubble_id, now, wipe)
                except ApiError as exc:
                    if exc.status != 409:  # 409: a request moved it meanwhile, and handles it
                        log.error("bubble %s: reconciliation failed, tried again at the next pass: %s", bubble_id,
                                  exc.message)
                        done.append((bubble_id, "error"))
                    continue
                except Exception:
                    log.exception("bubble %s: reconciliation failed, tried again at the next pass", bubble_id)
                    action = "error"
                if action:
                    done.append((bubble_id, action))
            candidates = [b for b in self.runtime.list() if b not in known]
            if candidates:  # asked again: a bubble created since the first query is no orphan
                with self.platform.sessions() as session:
                    known |= set(session.scalars(select(Bubble.id).where(Bubble.id.in_(candidates),
                                                                          Bubble.state.in_(HELD))).all())
            for bubble_id in candidates:
                if bubble_id in known or not wipe or self._operations.busy(bubble_id):
                    continue
                try:
                    with self._operations.hold(bubble_id) as lock, lock:
                        removed = self._wipe(bubble_id, "an orphan")
                    self.platform.audit.append(self._event(RECONCILER, "bubble.orphan_removed", bubble_id,
                                                           {"removed": removed}))
                    done.append((bubble_id, "orphan_removed"))
                except Exception:
                    log.exception("bubble %s: removing this orphan failed, tried again at the next pass", bubble_id)
                    done.append((bubble_id, "error"))
        return done

    def _reconcile_one(self, bubble_id: str, now: dt.datetime, wipe: bool) -> str | None:
        with self.platform.sessions() as session:
            row = session.get(Bubble, bubble_id)
            state, created_at = row.state, row.created_at
            expired = self.expiry_reason(session, row, now) if state in (PROVISIONING, RUNNING, STOPPED) else None
        timeout = dt.timedelta(seconds=self.platform.settings.bubble_start_timeout * 2)
        with self._operations.hold(bubble_id) as lock:
            if expired:
                self._begin_end(bubble_id, RECONCILER, DELETING, expired, (state,))
                state = DELETING
            elif state == RUNNING:
                status = self.runtime.status(bubble_id)
                if status.state == RUNNING:
                    return None
                self._begin_end(bubble_id, RECONCILER, FAILING, f"sandbox_died: {status.reason}", (RUNNING,))
                state = FAILING
            elif state == PROVISIONING:
                if iso(now - timeout) <= created_at:
                    return None
                self._begin_end(bubble_id, RECONCILER, FAILING, "provisioning_interrupted: the controller stopped "
                                "while the bubble was being provisioned", (PROVISIONING,))
                state = FAILING
            elif state == STOPPING and wipe:  # a stop a crash interrupted
                return self._finish_stop(bubble_id, RECONCILER, lock)["state"]
            if state not in ENDS:
                return None
            if not wipe:
                return state
            return self._finish_end(bubble_id, RECONCILER, lock)["state"]

    def start(self, interval: float) -> None:
        """Adoption after a restart before anyone is served: what ends is decided and recorded at
        once; the wipes, which take as long as a home is big, run in the reconciler's thread, whose
        first pass starts now (with `interval` 0, its only one)."""
        self.reconcile(wipe=False)
        self._thread = threading.Thread(target=self._loop, args=(interval,), daemon=True, name="bubble-reconciler")
        self._thread.start()

    def _loop(self, interval: float) -> None:
        while True:
            try:
                self.reconcile()
            except Exception:  # the next pass tries again; the log says why this one failed
                log.exception("bubble reconciliation failed")
            if interval <= 0 or self._stop.wait(interval):
                return

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
