"""The airlock: what leaves a bubble is decided by policy after automated checks, with people in
the loop only where the checks cannot decide.

    submitted → checking → released | in_review | refused
    in_review → released (approved) | changes_requested | refused
    changes_requested → resubmitted → checking → …
    submitted, checking, in_review, changes_requested, resubmitted → withdrawn | cancelled
    released → revoked

A request not yet released is `cancelled` as soon as the data its bubble holds may no longer
leave: a grant its views came from is revoked or has expired, that grant's source is retired,
or the project has ended. Every transition that could release (the end of a check, a vote) or
start a new round looks again, in its own transaction, and cancels instead; a pass at start,
after each revocation and every `reconcile_seconds` cancels the rest.

Files are copied into the quarantine when the request is made, so what is checked, reviewed and
released is what was asked for, whatever happens in the outbox afterwards. Checking runs in a
worker; a request found in `submitted`, `resubmitted` or `checking` at start is checked again
from the quarantined copy (a crash never releases anything unchecked: only the end of a check
moves a request forward, in the same transaction as its findings and decision).

Review rule (see README "Exports"): a request in review needs the number of votes the policy set
(2 for personal or sensitive sources). Votes are hidden from other reviewers until that many are
in. An option wins when it has at least that many votes and more than any other option; until
then (disagreement) the request stays in review for one more reviewer. Approval also needs an
approving vote from each provider organisation the policy requires.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import queue
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from catalog.fields import Line, Text
from catalog.vocab import PERSONAL_SENSITIVITIES, ColumnRole, Role, Sensitivity
from controller import access, disclosure, projects, sources, views
from controller.access import _record_decision
from controller.audit.log import Event, Events
from controller.auth import Principal
from controller.decisions import ExportDecision
from controller.errors import ApiError, not_found
from controller.quarantine import Quarantine, Taken
from controller.releases import manifest as build_manifest
from controller.releases import sign
from controller.store import Bubble, ExportRequest, Grant, Project, ProjectMember, SourceRow, iso, utcnow

log = logging.getLogger(__name__)

SUBMITTED, CHECKING, IN_REVIEW, CHANGES = "submitted", "checking", "in_review", "changes_requested"
RESUBMITTED, RELEASED, REFUSED, WITHDRAWN, REVOKED = "resubmitted", "released", "refused", "withdrawn", "revoked"
CANCELLED = "cancelled"
TO_CHECK = (SUBMITTED, RESUBMITTED, CHECKING)
WITHDRAWABLE = (SUBMITTED, CHECKING, IN_REVIEW, CHANGES, RESUBMITTED)
VOTES = {"approve": RELEASED, "changes": CHANGES, "refuse": REFUSED}


class ExportBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    bubble: Line = Field(min_length=1, max_length=64)
    paths: list[Line] = Field(min_length=1, max_length=1000, description="Files or folders of the outbox")
    justification: Text = Field(min_length=1, max_length=10000)


class ResubmitBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    paths: list[Line] | None = Field(None, min_length=1, max_length=1000, description="The same paths when absent")
    justification: Text | None = Field(None, min_length=1, max_length=10000)


class VoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    vote: str = Field(pattern="^(approve|changes|refuse)$")
    comment: Text = Field("", max_length=10000)

    @model_validator(mode="after")
    def _commented(self) -> "VoteBody":
        if self.vote != "approve" and not self.comment:
            raise ValueError("comment: say why when asking for changes or refusing")
        return self


class ReasonBody(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    reason: Text = Field(min_length=1, max_length=10000)


# ------------------------------------------------------------------ pure parts


def policy_input(project: Mapping[str, Any], grants: Sequence[Mapping[str, Any]], files: Sequence[Mapping[str, Any]],
                 findings: Sequence[Mapping[str, Any]], requester: str) -> dict[str, Any]:
    """What `bulles.export` sees."""
    return {
        "project": {k: project[k] for k in ("id", "purpose", "start_date", "end_date", "members")},
        "grants": [{k: g[k] for k in ("id", "source", "sensitivity", "mode", "publisher")} for g in grants],
        "files": [{"path": f["path"], "type": disclosure.file_type(f["path"]), "size": f["size"],
                   "sha256": f["sha256"]} for f in files],
        "findings": list(findings),
        "requester": requester,
    }


def outcome(votes: Sequence[Mapping[str, Any]], required: int, organisations: Sequence[str]) -> str | None:
    """The vote that decides a round, or None while it stays in review (see the module's rule)."""
    tally = Counter(v["vote"] for v in votes)
    for option, n in tally.items():
        if n >= max(required, 1) and all(n > m for other, m in tally.items() if other != option):
            if option == "approve" and not all(
                    any(v["vote"] == "approve" and v.get("organisation") == org for v in votes) for org in organisations):
                return None
            return option
    return None


def round_votes(row: ExportRequest) -> list[dict[str, Any]]:
    return [v for v in row.votes if v["round"] == row.round]


def view(row: ExportRequest, viewer: str, *, full: bool) -> dict[str, Any]:
    """A request as `viewer` may see it. While in review, votes are hidden from everybody but
    their authors until the required number is in (and the viewer has voted)."""
    current = round_votes(row)
    required = int(row.decision.get("reviewers") or 0)
    if row.state != IN_REVIEW or full:
        shown = row.votes
    elif any(v["reviewer"] == viewer for v in current) and len(current) >= required:
        shown = row.votes
    else:
        shown = [v for v in row.votes if v["round"] != row.round or v["reviewer"] == viewer]
    return {"id": row.id, "project": row.project_id, "bubble": row.bubble_id, "requester": row.requester,
            "justification": row.justification, "paths": row.paths, "state": row.state, "round": row.round,
            "files": row.files, "findings": row.findings, "summary": disclosure.summary(row.findings),
            "decision": row.decision, "decision_id": row.decision_id, "votes": shown, "votes_in": len(current),
            "history": row.history, "manifest": row.manifest is not None, "created_at": row.created_at,
            "updated_at": row.updated_at, "released_at": row.released_at}


def _moved(row: ExportRequest, state: str, by: str, note: str = "") -> None:
    now = iso(utcnow())
    row.state, row.updated_at = state, now
    row.history = [*row.history, {"state": state, "at": now, "by": by, **({"note": note} if note else {})}]


def closure(today: str, project_end: str, held: Sequence[Mapping[str, Any]]) -> str | None:
    """Why the files of a request not yet released may no longer leave, or None; pure. `held`
    are the grants the bubble's views came from ({grant, source, status, source_status}, the
    grant's status as `access.grant_view` tells it, "missing" when there is no such grant): data
    from a grant that was revoked or has expired, or from a source since retired, stays in."""
    if today > project_end:
        return f"project_ended: the project ended on {project_end}; nothing more leaves its bubbles"
    for entry in held:
        named = f"the grant of '{entry['source']}' ({entry['grant']})"
        if entry["status"] == "missing":
            return f"grant_missing: {named} is not on record"
        if entry["status"] == access.REVOKED:
            return f"grant_revoked: {named}, from which the bubble's data came, was revoked"
        if entry["source_status"] != sources.ACTIVE:
            return f"source_retired: source '{entry['source']}', from which the bubble's data came, was retired"
        if entry["status"] != access.ACTIVE:
            return f"grant_{entry['status']}: {named}, from which the bubble's data came, is {entry['status']}"
    return None


def _files_of(taken: Sequence[Taken]) -> list[dict[str, Any]]:
    return [{"path": t.path, "size": t.size, "sha256": t.sha256, "stored": t.stored,
             "type": disclosure.file_type(t.path)} for t in taken]


# ------------------------------------------------------------------ the service


class Exports:
    def __init__(self, platform: Any) -> None:
        self.platform = platform
        self.quarantine = Quarantine(platform.settings.home / "quarantine")
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._checked = threading.Condition()
        # One writer of the quarantine at a time: a request's copies are taken and recorded, or
        # a purge decides what is no longer needed and removes it, never both at once (two
        # requests may share a content-addressed copy).
        self._store_lock = threading.Lock()

    # ---------------------------------------------------------------- reference data

    def _reference(self, name: str) -> dict[str, Any]:
        return json.loads((self.platform.settings.policy_dir / "data" / f"{name}.json").read_text())

    def rules(self) -> disclosure.Rules:
        return disclosure.Rules.from_reference(self._reference("exports"))

    def max_file_bytes(self) -> int:
        return int(self._reference("exports").get("max_file_bytes", 16 << 20))

    # ---------------------------------------------------------------- worker

    def start(self) -> None:
        with self.platform.sessions() as session:
            pending = session.scalars(select(ExportRequest.id).where(ExportRequest.state.in_(TO_CHECK))
                                      .order_by(ExportRequest.created_at)).all()
        self._thread = threading.Thread(target=self._work, name="bulles-exports", daemon=True)
        self._thread.start()
        for request_id in pending:
            self._queue.put(request_id)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=60)
            self._thread = None

    def _work(self) -> None:
        interval = self.platform.settings.reconcile_seconds or None
        self._housekeeping()
        while True:
            try:
                request_id = self._queue.get(timeout=interval)
            except queue.Empty:
                self._housekeeping()
                continue
            if request_id is None:
                return
            try:
                self.check(request_id)
            except Exception:  # the request stays where it was; the next start checks it again
                log.exception("checking export request %s failed", request_id)
            with self._checked:
                self._checked.notify_all()

    def _housekeeping(self) -> None:
        """Cancel what may no longer leave, then purge what nobody needs (cancelled included)."""
        try:
            self.cancel_closed()
        except Exception:
            log.exception("cancelling export requests failed; it is tried again at the next pass")
        try:
            self.purge()
        except Exception:
            log.exception("purging the quarantine failed; it is tried again at the next pass")

    # ---------------------------------------------------------------- provenance

    def _closed(self, session: Session, project_id: str, bubble_id: str, *, lock: bool = True) -> str | None:
        """`closure` of a request from the state; in a transition's transaction (`lock`), the rows
        it depends on are read FOR SHARE, so a revocation or retirement committing meanwhile
        waits for it or is seen by it (PostgreSQL; SQLite has one writer at a time)."""
        share = {"read": True} if lock else None
        project = session.get(Project, project_id, with_for_update=share)
        bubble = session.get(Bubble, bubble_id)
        today = dt.date.today().isoformat()
        held = []
        for entry in bubble.views if bubble else []:
            grant = session.get(Grant, entry["grant"], with_for_update=share)
            source_id = grant.source_id if grant else entry["source"]
            source = session.get(SourceRow, source_id, with_for_update=share)
            held.append({"grant": entry["grant"], "source": source_id,
                         "status": access.grant_view(grant, today)["status"] if grant else "missing",
                         "source_status": source.status if source else sources.RETIRED})
        return closure(today, project.end_date, held)

    def _cancel(self, row: ExportRequest, reason: str) -> dict[str, Any]:
        _moved(row, CANCELLED, "system:airlock", note=reason)
        return {**view(row, "system:airlock", full=True), "cancelled": reason}

    @staticmethod
    def _cancelled_event(result: Mapping[str, Any]) -> Event:
        return Event("system:airlock", "export.cancelled", "export", result["id"], {
            "project": result["project"], "bubble": result["bubble"], "round": result["round"],
            "cause": result["cancelled"].split(":", 1)[0], "reason": result["cancelled"]},
            decision_id=result["decision_id"])

    def _cancelled_if_closed(self, session: Session, row: ExportRequest) -> dict[str, Any] | None:
        """In a transition's transaction: cancel the request instead when its data may no longer
        leave (the transition's caller then gets `_closing`'s 409)."""
        reason = self._closed(session, row.project_id, row.bubble_id)
        if reason is None:
            return None
        result = self._cancel(row, reason)
        session.flush()
        return result

    def _closing(self, event: Callable[[Any], Events], apply: Callable[[Session], dict[str, Any]]) -> dict[str, Any]:
        """Append a transition that may turn out to be a cancellation (`_cancelled_if_closed`):
        then the event is `export.cancelled` and the caller's answer a 409 naming the reason."""
        result = self.platform.audit.append(
            lambda r: self._cancelled_event(r) if "cancelled" in r else event(r), apply).result
        if "cancelled" in result:
            raise ApiError(409, "cancelled", f"export request '{result['id']}' is cancelled: {result['cancelled']}")
        return result

    def cancel_closed(self) -> list[str]:
        """Cancel every request not yet released whose data may no longer leave (see `closure`);
        each in its own transaction with its `export.cancelled` event, after looking again."""
        with self.platform.sessions() as session:
            rows = session.scalars(select(ExportRequest).where(ExportRequest.state.in_(WITHDRAWABLE))
                                   .order_by(ExportRequest.created_at)).all()
            candidates = [r.id for r in rows if self._closed(session, r.project_id, r.bubble_id, lock=False)]
        done = []
        for request_id in candidates:
            def apply(session: Session, request_id: str = request_id) -> dict[str, Any]:
                row = session.get(ExportRequest, request_id, with_for_update=True)
                reason = self._closed(session, row.project_id, row.bubble_id) if row.state in WITHDRAWABLE else None
                if reason is None:
                    raise ApiError(409, "invalid_state", "moved on")
                result = self._cancel(row, reason)
                session.flush()
                return result

            try:
                self.platform.audit.append(self._cancelled_event, apply)
            except ApiError:
                continue
            done.append(request_id)
        return done

    # ---------------------------------------------------------------- retention

    def needed(self, session: Session, today: dt.date) -> set[str]:
        """The quarantined copies someone may still be given or that a check still needs: those
        of requests under way (this round only), and of released requests until their project
        has been over for `export_retention_days`. Refused, withdrawn and revoked requests, and
        the earlier rounds of resubmitted ones, are never given again: their copies go."""
        keep_until = dt.timedelta(days=self.platform.settings.export_retention_days)
        rows = session.execute(select(ExportRequest.state, ExportRequest.files, Project.end_date)
                               .join(Project, Project.id == ExportRequest.project_id)
                               .where(ExportRequest.state.in_((*WITHDRAWABLE, RELEASED)))).all()
        return {f["sha256"] for state, files, end in rows
                if state in WITHDRAWABLE or today <= dt.date.fromisoformat(end) + keep_until
                for f in files if f["stored"]}

    def purge(self, today: dt.date | None = None) -> list[str]:
        """Remove the quarantined copies nobody needs any more (see `needed`), and the leftovers
        of copies a crash interrupted; the removal is in the log first, with the digests."""
        today = today or dt.date.today()
        with self._store_lock:
            with self.platform.sessions() as session:
                keep = self.needed(session, today)
            gone = sorted(set(self.quarantine.digests()) - keep)
            self.quarantine.clear_unfinished()
            if not gone:
                return []
            freed = sum(self.quarantine.size(sha) for sha in gone)
            self.platform.audit.append(Event("system:airlock", "export.purged", "quarantine", "quarantine", {
                "files": len(gone), "bytes": freed, "sha256": gone,
                "retention_days": self.platform.settings.export_retention_days}))
            self.quarantine.forget(gone)
            return gone

    def wait(self, request_id: str, timeout: float = 60.0) -> str:
        """The request's state once it has left checking (for the CLI and the tests)."""
        with self._checked:
            def state() -> str:
                with self.platform.sessions() as session:
                    return session.get(ExportRequest, request_id).state

            self._checked.wait_for(lambda: state() not in TO_CHECK, timeout=timeout)
            return state()

    # ---------------------------------------------------------------- access

    def _visible(self, session: Session, principal: Principal, request_id: str) -> ExportRequest:
        """Members see their project's requests; reviewers those that reached review; providers
        those their organisation must review; admins and auditors all. Others get a 404."""
        row = session.get(ExportRequest, request_id)
        if row is None:
            raise not_found("export request", request_id)
        if (principal.has(Role.admin, Role.auditor) or projects.role_of(session, row.project_id, principal.username)
                or self._may_review(session, principal, row, check_state=False)):
            return row
        raise not_found("export request", request_id)

    def _may_review(self, session: Session, principal: Principal, row: ExportRequest, *, check_state: bool) -> bool:
        reached = row.state == IN_REVIEW or bool(row.votes) or row.decision.get("action") == "review"
        if check_state and row.state != IN_REVIEW:
            return False
        if not reached or principal.username == row.requester:
            return False
        if self._member(session, row, principal.username):
            return False
        orgs = row.decision.get("organisations") or []
        return principal.has(Role.reviewer) or (principal.has(Role.provider) and principal.organisation in orgs)

    @staticmethod
    def _member(session: Session, row: ExportRequest, username: str) -> bool:
        """A member of the request's project now, or when its files were checked (the members the
        policy saw): leaving the project for the time of a vote does not make one a reviewer."""
        return (projects.role_of(session, row.project_id, username) is not None
                or access.was_member(session, row.decision_id, username))

    def get(self, principal: Principal, request_id: str) -> dict[str, Any]:
        with self.platform.sessions() as session:
            row = self._visible(session, principal, request_id)
            return view(row, principal.username, full=principal.has(Role.auditor))

    def list(self, principal: Principal, *, project: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        with self.platform.sessions() as session:
            query = select(ExportRequest).order_by(ExportRequest.created_at)
            if not principal.has(Role.admin, Role.auditor):
                mine = select(ProjectMember.project_id).where(ProjectMember.username == principal.username)
                clauses = [ExportRequest.project_id.in_(mine)]
                if principal.has(Role.reviewer, Role.provider):  # narrowed below by _may_review
                    clauses.append(ExportRequest.decision_id.is_not(None))
                query = query.where(or_(*clauses))
            if project:
                query = query.where(ExportRequest.project_id == project)
            if state:
                query = query.where(ExportRequest.state == state)
            rows = [r for r in session.scalars(query)
                    if principal.has(Role.admin, Role.auditor) or projects.role_of(session, r.project_id, principal.username)
                    or self._may_review(session, principal, r, check_state=False)]
            return [view(r, principal.username, full=principal.has(Role.auditor)) for r in rows]

    # ---------------------------------------------------------------- request

    def _take(self, bubble_id: str, paths: list[str]) -> list[Taken]:
        bubbles = self.platform.bubbles
        if bubbles is None:
            raise ApiError(503, "runtime_unavailable", f"bubbles cannot run on this site: "
                           f"{self.platform.bubbles_unavailable}")
        outbox = bubbles.runtime.outbox(bubble_id)
        limits = {"max_bytes": self.max_file_bytes(), "max_files": self.platform.settings.export_max_files}
        taken, created = self.quarantine.take(outbox, paths, **limits)
        try:
            have = {t.path for t in taken}
            # A table's recipe travels with it, looked up by the quarantine's own walk: a link
            # there is refused whatever it points to, never followed to see if it leads anywhere.
            recipes = [t.path + disclosure.RECIPE_SUFFIX for t in taken if t.path.endswith(".csv")]
            recipes = [r for r in recipes if r not in have]
            if recipes:
                more, extra = self.quarantine.take(outbox, recipes, **limits, companions=True)
                created += extra
                taken += more
        except BaseException:
            self.quarantine.forget(created)
            raise
        return sorted(taken, key=lambda t: t.path)

    def _live_bubble(self, session: Session, principal: Principal, bubble_id: str) -> Bubble:
        bubble = session.get(Bubble, bubble_id)
        if bubble is None or not (projects.role_of(session, bubble.project_id, principal.username)):
            raise ApiError(404, "not_found", f"bubble '{bubble_id}' does not exist", field="bubble")
        if bubble.state != "running":
            raise ApiError(409, "bubble_not_running", f"bubble '{bubble_id}' is {bubble.state}: files are taken "
                           "from the outbox of a running bubble")
        return bubble

    def _still_open(self, session: Session, project_id: str, bubble_id: str, *, lock: bool = True) -> None:
        """Refuse to take anything from a bubble whose data may no longer leave (409)."""
        reason = self._closed(session, project_id, bubble_id, lock=lock)
        if reason:
            raise ApiError(409, reason.split(":", 1)[0], f"nothing leaves bubble '{bubble_id}' any more: {reason}")

    def request(self, principal: Principal, body: ExportBody) -> dict[str, Any]:
        with self.platform.sessions() as session:
            bubble = self._live_bubble(session, principal, body.bubble)
            self._still_open(session, bubble.project_id, bubble.id, lock=False)
            project_id = bubble.project_id
        with self._store_lock:
            return self._record_request(principal, body, project_id, self._take(body.bubble, body.paths))

    def _record_request(self, principal: Principal, body: ExportBody, project_id: str,
                        taken: list[Taken]) -> dict[str, Any]:
        now = iso(utcnow())
        request_id = "x-" + uuid.uuid4().hex[:20]

        def apply(session: Session) -> dict[str, Any]:
            self._still_open(session, project_id, body.bubble)
            row = ExportRequest(id=request_id, project_id=project_id, bubble_id=body.bubble,
                                requester=principal.username, justification=body.justification, paths=body.paths,
                                state=SUBMITTED, round=1, files=_files_of(taken), findings=[], decision_id=None,
                                decision={}, votes=[], history=[{"state": SUBMITTED, "at": now, "by": principal.username}],
                                manifest=None, created_at=now, updated_at=now, released_at=None)
            session.add(row)
            session.flush()
            return view(row, principal.username, full=False)

        created = self.platform.audit.append(Event(principal.actor, "export.submitted", "export", request_id, {
            "project": project_id, "bubble": body.bubble, "round": 1,
            "files": [{"path": t.path, "size": t.size, "sha256": t.sha256} for t in taken]}), apply).result
        self._queue.put(request_id)
        return created

    def resubmit(self, principal: Principal, request_id: str, body: ResubmitBody) -> dict[str, Any]:
        with self.platform.sessions() as session:
            row = self._visible(session, principal, request_id)
            if row.requester != principal.username:
                raise ApiError(403, "forbidden", "only the requester resubmits a request")
            if row.state != CHANGES:
                raise ApiError(409, "invalid_state", f"export request '{request_id}' is {row.state}; only a request "
                               "whose reviewers asked for changes is resubmitted")
            self._live_bubble(session, principal, row.bubble_id)
            self._still_open(session, row.project_id, row.bubble_id, lock=False)
            bubble_id, paths = row.bubble_id, body.paths or list(row.paths)
        with self._store_lock:
            return self._record_resubmission(principal, request_id, body, paths, self._take(bubble_id, paths))

    def _record_resubmission(self, principal: Principal, request_id: str, body: ResubmitBody, paths: list[str],
                             taken: list[Taken]) -> dict[str, Any]:
        def apply(session: Session) -> dict[str, Any]:
            row = session.get(ExportRequest, request_id, with_for_update=True)
            if row.state != CHANGES:
                raise ApiError(409, "invalid_state", f"export request '{request_id}' is {row.state}")
            if cancelled := self._cancelled_if_closed(session, row):
                return cancelled
            row.round, row.paths, row.files, row.findings = row.round + 1, paths, _files_of(taken), []
            row.decision, row.decision_id = {}, None
            if body.justification:
                row.justification = body.justification
            _moved(row, RESUBMITTED, principal.username)
            session.flush()
            return view(row, principal.username, full=False)

        result = self._closing(lambda _: Event(principal.actor, "export.resubmitted", "export", request_id, {
            "files": [{"path": t.path, "size": t.size, "sha256": t.sha256} for t in taken]}), apply)
        self._queue.put(request_id)
        return result

    # ---------------------------------------------------------------- checking

    def needles(self, project_id: str, grants: Sequence[Mapping[str, Any]]) -> disclosure.Needles:
        """Identifier values of the project's personal sources and their pseudonyms in this project."""
        from catalog.model import SourceSpec
        from connectors.pseudonyms import Pseudonymiser, project_key
        from connectors.registry import open_connector
        from controller.home import master_secret

        rules = self.rules()
        identifiers: set[str] = set()
        keys: dict[str, str] = {}
        seen = set()
        for grant in grants:
            if Sensitivity(grant["sensitivity"]) not in PERSONAL_SENSITIVITIES or grant["source"] in seen:
                continue
            seen.add(grant["source"])
            spec = SourceSpec.model_validate(grant["document"])
            columns = spec.columns_by_role(ColumnRole.identifier)
            for name in [*columns, *grant["parameters"].get("pseudonymised", [])]:
                keys[name.strip().lower()] = spec.id
            if not columns:
                continue
            for batch in open_connector(spec, self.platform.settings).scan(columns):
                for column in batch.columns:
                    identifiers.update(v for v in column.cast("string").drop_null().to_pylist()
                                       if len(v) >= rules.min_identifier_chars)
        pseudonymiser = Pseudonymiser(project_key(master_secret(self.platform.settings.home), project_id))
        pseudonyms = {pseudonymiser.value(v) for v in identifiers}
        return disclosure.Needles(frozenset(identifiers), frozenset(pseudonyms), keys)

    def _context(self, row: ExportRequest) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
        with self.platform.sessions() as session:
            project = projects.view(session, session.get(projects.Project, row.project_id))
            grants = []
            for g in session.scalars(select(Grant).where(Grant.project_id == row.project_id).order_by(Grant.created_at)):
                document = dict(sources.get(session, g.source_id).document)
                grants.append({"id": g.id, "source": g.source_id, "sensitivity": document["sensitivity"],
                               "mode": g.mode, "publisher": g.publisher, "parameters": g.parameters,
                               "document": document})
            bubble = session.get(Bubble, row.bubble_id)
            mounted = {e["name"]: e["view"] for e in bubble.views if e.get("view")}
        return project, grants, mounted

    def findings(self, row: ExportRequest, grants: Sequence[Mapping[str, Any]], mounted: Mapping[str, str]) -> list[dict]:
        rules = self.rules()
        found: list[dict[str, Any]] = []
        try:
            needles = self.needles(row.project_id, grants)
        except Exception as exc:  # the identifier check cannot run: a person must look
            needles = disclosure.Needles()
            found.append(disclosure.finding("", "identifiers", disclosure.REVIEW,
                                            f"identifier values could not be loaded: {str(exc)[:300]}"))
        files = {f["path"]: f for f in row.files if f["stored"]}
        checksums = {p: disclosure.parse_checksum(self.quarantine.read(f["sha256"])) for p, f in files.items()
                     if "/checksums/" in "/" + p and p.endswith(".txt")}
        digests = {p: f["sha256"] for p, f in files.items()}
        statistical = any(g["sensitivity"] != Sensitivity.open.value for g in grants)
        for path, entry in files.items():
            data = self.quarantine.read(entry["sha256"])
            recipe = micro = None
            sidecar = files.get(path + disclosure.RECIPE_SUFFIX)
            try:
                if entry["type"] == "csv" and sidecar:
                    recipe = disclosure.Recipe.parse(self.quarantine.read(sidecar["sha256"]))
                    if recipe.view not in mounted:
                        found.append(disclosure.finding(path, "table_mismatch", disclosure.REVIEW,
                                                        f"the recipe names view '{recipe.view}', not one of the bubble's"))
                        recipe = None
                    else:
                        wanted = [*recipe.dimensions, *([recipe.values] if recipe.values else [])]
                        data_file = views.views_root(self.platform.settings.home) / mounted[recipe.view] / views.DATA_FILE
                        schema = pq.read_schema(data_file)
                        micro = pq.read_table(data_file, columns=[c for c in wanted if c in schema.names])
                found += disclosure.check_file(path, data, needles, rules, recipe=recipe, micro=micro,
                                              statistical=statistical)
                if entry["type"] == "json" and (results := disclosure.acro_results(data)) is not None:
                    found += disclosure.acro_findings(path, results, digests, checksums)
            except disclosure.MalformedTable as exc:
                found.append(disclosure.finding(path, "malformed", disclosure.FAIL, str(exc)))
            except Exception as exc:  # a checker bug never releases anything: a person looks
                log.exception("check of %s in %s failed", path, row.id)
                found.append(disclosure.finding(path, "checker_error", disclosure.REVIEW,
                                                f"the checks could not complete: {type(exc).__name__}: {str(exc)[:300]}"))
        return found

    def check(self, request_id: str) -> None:
        with self.platform.sessions() as session:
            row = session.get(ExportRequest, request_id)
            if row is None or row.state not in TO_CHECK:
                return
            resumed = row.state == CHECKING
            checked_round = row.round

        def begin(session: Session) -> ExportRequest:
            current = session.get(ExportRequest, request_id, with_for_update=True)
            if current.state not in TO_CHECK or current.round != checked_round:
                raise ApiError(409, "invalid_state", "moved on")
            if current.state != CHECKING:
                _moved(current, CHECKING, "system:airlock")
            session.flush()
            session.expunge(current)
            return current

        try:
            row = self.platform.audit.append(Event("system:airlock", "export.checking", "export", request_id, {
                "round": checked_round, "resumed": resumed}), begin).result
        except ApiError:
            return
        project, grants, mounted = self._context(row)
        found = self.findings(row, grants, mounted)
        stored = [f for f in row.files if f["stored"]]
        document = policy_input(project, grants, row.files, found, row.requester)
        decision = self.platform.decide("export", document)
        result = decision.typed(ExportDecision)
        action = result.action
        if action == "release" and len(stored) != len(row.files):
            action = "refuse"  # never release a file that is not in the quarantine
        summary = {**result.model_dump(mode="json"), "action": action, "revision": decision.revision,
                   "id": decision.id}
        state = {"release": RELEASED, "review": IN_REVIEW, "refuse": REFUSED}[action]

        def finish(session: Session) -> dict[str, Any]:
            current = session.get(ExportRequest, request_id, with_for_update=True)
            if current.state != CHECKING or current.round != checked_round:
                raise ApiError(409, "invalid_state", "moved on")
            if cancelled := self._cancelled_if_closed(session, current):
                return cancelled
            _record_decision(session, decision, document)
            current.findings, current.decision, current.decision_id = found, summary, decision.id
            _moved(current, state, "system:airlock", note="; ".join(r.split(":", 1)[0] for r in summary["reasons"]))
            if state == RELEASED:
                self._release(current)
            session.flush()
            return view(current, "system:airlock", full=True)

        decided = Event("system:airlock", f"export.{'released' if state == RELEASED else state}", "export", request_id, {
            "round": checked_round, "action": action, "findings": disclosure.summary(found),
            "checks": sorted({f["check"] for f in found if f["severity"] != "pass"}),
            "reasons": [r.split(":", 1)[0] for r in summary["reasons"]], "input_sha256": decision.input_sha256},
            decision_id=decision.id, policy_revision=decision.revision)
        try:
            self._closing(lambda _: decided, finish)
        except ApiError:
            return

    # ---------------------------------------------------------------- release

    def _release(self, row: ExportRequest) -> None:
        key = self.platform.signing_key
        if key is None:
            raise ApiError(503, "no_signing_key", "the site has no signing key: nothing can be released")
        now = iso(utcnow())
        request = {"id": row.id, "project": row.project_id, "bubble": row.bubble_id, "requester": row.requester,
                   "justification": row.justification, "round": row.round}
        unsigned = build_manifest(site=self.platform.settings.site, request=request, files=row.files,
                                  findings=row.findings, decision=row.decision, rules=self.rules().table(),
                                  reviews=round_votes(row), released_at=now)
        row.manifest = sign(unsigned, key)
        row.released_at = now

    # ---------------------------------------------------------------- review

    def vote(self, principal: Principal, request_id: str, body: VoteBody) -> dict[str, Any]:
        def apply(session: Session) -> dict[str, Any]:
            row = session.get(ExportRequest, request_id, with_for_update=True)
            self._visible(session, principal, request_id)  # strangers learn nothing: 404
            if principal.username == row.requester:
                raise ApiError(403, "self_review", "the requester never reviews their own request")
            if self._member(session, row, principal.username):
                raise ApiError(403, "member_review", f"members of project '{row.project_id}' never review its exports")
            if row.state != IN_REVIEW:
                raise ApiError(409, "invalid_state", f"export request '{request_id}' is {row.state}, not in review")
            if not self._may_review(session, principal, row, check_state=True):
                raise ApiError(403, "forbidden", "only reviewers (or the provider organisations the policy names) "
                               "review exports")
            if any(v["reviewer"] == principal.username for v in round_votes(row)):
                raise ApiError(409, "already_voted", f"'{principal.username}' has already voted on this round")
            if cancelled := self._cancelled_if_closed(session, row):
                return cancelled
            row.votes = [*row.votes, {"round": row.round, "reviewer": principal.username,
                                      "organisation": principal.organisation, "vote": body.vote,
                                      "comment": body.comment, "at": iso(utcnow())}]
            decided = outcome(round_votes(row), int(row.decision.get("reviewers") or 1),
                              row.decision.get("organisations") or [])
            if decided:
                _moved(row, VOTES[decided], principal.username, note=f"review: {decided}")
                if row.state == RELEASED:
                    self._release(row)
            session.flush()
            return view(row, principal.username, full=False)

        def events(result: dict[str, Any]) -> tuple[Event, ...]:
            """The vote, and what it decided when it did (a release among them): one transaction."""
            voted = Event(principal.actor, "export.voted", "export", request_id, {
                "round": result["round"], "vote": body.vote, "state": result["state"], "votes_in": result["votes_in"]},
                decision_id=result["decision_id"])
            if result["state"] == IN_REVIEW:
                return (voted,)
            return voted, Event("system:airlock", f"export.{result['state']}", "export", request_id, {
                "round": result["round"], "by": "review"}, decision_id=result["decision_id"])

        return self._closing(events, apply)

    def _simple(self, principal: Principal, request_id: str, action: str, allowed: Sequence[str], state: str,
                who: str, note: str = "") -> dict[str, Any]:
        def apply(session: Session) -> dict[str, Any]:
            row = session.get(ExportRequest, request_id, with_for_update=True)
            if row is None:
                raise not_found("export request", request_id)
            self._visible(session, principal, request_id)
            if who == "requester" and not (principal.username == row.requester or principal.has(Role.admin)):
                raise ApiError(403, "forbidden", "only the requester (or an admin) withdraws a request")
            if who == "reviewer" and not (principal.has(Role.admin) or (
                    principal.has(Role.reviewer) and principal.username != row.requester
                    and not self._member(session, row, principal.username))):
                raise ApiError(403, "forbidden", "only a reviewer outside the project (or an admin) revokes a release")
            if row.state not in allowed:
                raise ApiError(409, "invalid_state", f"export request '{request_id}' is {row.state}")
            _moved(row, state, principal.username, note)
            session.flush()
            return view(row, principal.username, full=False)

        return self.platform.audit.append(Event(principal.actor, action, "export", request_id,
                                                {"reason": note} if note else {}), apply).result

    def withdraw(self, principal: Principal, request_id: str) -> dict[str, Any]:
        return self._simple(principal, request_id, "export.withdrawn", WITHDRAWABLE, WITHDRAWN, "requester")

    def revoke(self, principal: Principal, request_id: str, body: ReasonBody) -> dict[str, Any]:
        return self._simple(principal, request_id, "export.revoked", (RELEASED,), REVOKED, "reviewer", body.reason)

    # ---------------------------------------------------------------- files

    def file(self, principal: Principal, request_id: str, path: str) -> bytes:
        """A file's quarantined bytes: for reviewers while in review, for members once released."""
        with self.platform.sessions() as session:
            row = self._visible(session, principal, request_id)
            member = projects.role_of(session, row.project_id, principal.username) is not None
            reviewer = self._may_review(session, principal, row, check_state=True)
            state, files, project_id = row.state, row.files, row.project_id
        entry = next((f for f in files if f["path"] == path), None)
        if entry is None:
            raise not_found("file", path)
        if not (reviewer or (member and state == RELEASED) or principal.has(Role.auditor) and state == RELEASED):
            if state == REVOKED:
                raise ApiError(410, "revoked", f"export request '{request_id}' was revoked: its files are no longer given")
            raise ApiError(403, "not_released", f"export request '{request_id}' is {state}: files are given to "
                           "its project once released, and to its reviewers while in review")
        if not entry["stored"]:
            raise ApiError(409, "not_stored", f"'{path}' was over the size limit and never copied")
        try:
            data = self.quarantine.read(entry["sha256"])
        except FileNotFoundError:
            raise ApiError(410, "purged", f"'{path}' is no longer kept: the project ended more than "
                           f"{self.platform.settings.export_retention_days} days ago") from None
        self.platform.audit.append(Event(principal.actor, "export.downloaded", "export", request_id, {
            "path": path, "sha256": entry["sha256"], "project": project_id}))
        return data

    def release_manifest(self, principal: Principal, request_id: str) -> dict[str, Any]:
        with self.platform.sessions() as session:
            row = self._visible(session, principal, request_id)
            if row.manifest is None:
                raise ApiError(409, "not_released", f"export request '{request_id}' is {row.state}: no release manifest")
            return dict(row.manifest)
