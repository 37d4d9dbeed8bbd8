"""One site's running parts, wired once per process: state, audit log, keys, authentication."""

from __future__ import annotations

import logging

from sqlalchemy import select

from connectors.ownership import refused_sources
from controller.audit.log import AuditLog, Event
from controller.auth import Authenticator, make_authenticator
from controller.config import Settings
from controller.home import SIGNING_KEY, load_signing_key
from controller.metrics import Metrics
from controller.policy import Decision, EmbeddedEngine, Engine, OpaEngine
from controller.store import SourceRow, make_engine, make_sessionmaker, migrate
from controller.views import remove_unfinished

log = logging.getLogger(__name__)


class Platform:
    def __init__(self, settings: Settings, authenticator: Authenticator | None = None) -> None:
        self.settings = settings
        self.engine = make_engine(settings.db_url)
        migrate(self.engine)
        self.sessions = make_sessionmaker(self.engine)
        self.metrics = Metrics()
        key_path = settings.home / SIGNING_KEY
        self.signing_key = load_signing_key(settings.home) if key_path.exists() else None
        self.audit = AuditLog(
            self.engine,
            origin=f"bulles/{settings.site}",
            signing_key=self.signing_key,
            batch_max=settings.audit_batch_max,
            checkpoint_interval=settings.checkpoint_interval_seconds,
            on_batch=self.metrics.audit_batch,
        )
        self.authenticate = authenticator or make_authenticator(settings, self.sessions)
        self.policy: Engine | None = None
        self.bubbles = None  # controller.bubbles.Bubbles once started, when a runtime can run here
        self.bubbles_unavailable: str | None = None
        self.exports = None  # controller.exports.Exports once started
        self._logged_revision: str | None = None

    def _policy_event(self, action: str, details: dict) -> None:
        """Policy (re)loads are part of the record: which rules decided what, from when."""
        subject = details.get("revision") or details.get("revision_refused") or ""
        self.audit.append(Event("system:policy", action, "policy", subject, details), timeout=30)
        if action == "policy.loaded":
            self._logged_revision = details["revision"]

    def decide(self, package: str, document: dict) -> Decision:
        """A policy decision; the revision in force is in the log before the first decision it makes."""
        if self.policy is None:
            raise RuntimeError("the platform is not started")
        if self.policy.revision != self._logged_revision:
            self._policy_event("policy.loaded", {"revision": self.policy.revision, "previous": self._logged_revision})
        return self.policy.decide(package, document)

    def cancel_closed_exports(self, cause: str) -> None:
        """Export requests whose data may no longer leave (a grant revoked, a source retired, a
        project ended) are cancelled at once, each with its event. Called after the change has
        committed: a failure here leaves the change standing, and a vote or check arriving first
        finds it in its own transaction and cancels instead (the airlock's pass tries again)."""
        if self.exports is None:
            return
        try:
            self.exports.cancel_closed()
        except Exception:
            log.exception("cancelling the export requests after %s failed; the next pass tries again", cause)

    def start(self) -> "Platform":
        remove_unfinished(self.settings.home)  # views a crash left half-built, before any build
        self.audit.start()
        settings = self.settings
        self._report_refused_locations()
        options = {"on_event": self._policy_event, "poll_seconds": settings.policy_poll_seconds}
        try:
            if settings.policy_engine == "opa":
                self.policy = OpaEngine(settings.opa_url, settings.policy_dir, **options)
            else:
                self.policy = EmbeddedEngine(settings.policy_dir, **options)
        except Exception:
            self.audit.close()
            raise
        self._start_bubbles()
        from controller.exports import Exports

        self.exports = Exports(self)
        self.exports.start()  # requests a crash left unchecked are checked again
        return self

    def _report_refused_locations(self) -> None:
        """Active sources whose location the configuration no longer gives their organisation:
        they stay in the catalog, every probe and view of them is refused, and the operator
        hears of it once per start (a warning and an event naming them and the field at fault,
        never the location)."""
        with self.sessions() as session:
            rows = session.execute(select(SourceRow.id, SourceRow.publisher, SourceRow.document)
                                   .where(SourceRow.status == "active").order_by(SourceRow.id)).all()
        refused = refused_sources(((i, p, d["connector"]) for i, p, d in rows), self.settings)
        if not refused:
            return
        listed = [{"source": source_id, "field": why.field} for source_id, why in refused]
        log.warning("sources naming a location this site's configuration does not give their organisation; their "
                    "probes and views are refused until it or they change: %s",
                    ", ".join(f"{e['source']} ({e['field']})" for e in listed))
        self.audit.append(Event("system:platform", "source.locations_refused", "site", self.settings.site,
                                {"sources": listed}), timeout=30)

    def _start_bubbles(self) -> None:
        """Bubbles outlive the controller: at start, the reconciler adopts or cleans up theirs."""
        from controller.bubbles import Bubbles
        from controller.runtimes.base import RuntimeUnavailable
        from controller.runtimes.local import LocalRuntime

        if self.settings.runtime == "none":
            self.bubbles_unavailable = "no bubble runtime is configured (runtime: none)"
            return
        try:
            runtime = LocalRuntime(self.settings.home / "bubbles", self.settings.bubble_env)
        except RuntimeUnavailable as exc:
            self.bubbles_unavailable = str(exc)
            log.warning("bubbles disabled: %s", exc)
            return
        self.bubbles = Bubbles(self, runtime)
        self.bubbles.start(self.settings.reconcile_seconds)

    def close(self) -> None:
        if self.exports is not None:
            self.exports.close()
        if self.bubbles is not None:
            self.bubbles.close()  # the sandboxes keep running: the next start adopts them
        if self.policy is not None:
            self.policy.close()
        self.audit.close()
        self.engine.dispose()

    def __enter__(self) -> "Platform":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
