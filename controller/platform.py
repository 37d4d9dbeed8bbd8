"""One site's running parts, wired once per process: state, audit log, keys, authentication."""

from __future__ import annotations

from controller.audit.log import AuditLog
from controller.auth import Authenticator, make_authenticator
from controller.config import Settings
from controller.home import SIGNING_KEY, load_signing_key
from controller.metrics import Metrics
from controller.store import make_engine, make_sessionmaker, migrate


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

    def start(self) -> "Platform":
        self.audit.start()
        self.metrics.audit_size.set_function(lambda: self.audit.size)
        return self

    def close(self) -> None:
        self.audit.close()
        self.engine.dispose()

    def __enter__(self) -> "Platform":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()
