"""Settings of one site, from `<home>/bulles.yaml` overridden by `BULLES_*` environment variables.

Environment wins over the file so that an operator (or Helm) can change one value without
rewriting the file; nested values use `__` (e.g. `BULLES_OIDC__AUDIENCE`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from catalog.vocab import Role

CONFIG_FILE = "bulles.yaml"


def default_home() -> Path:
    return Path(os.environ.get("BULLES_HOME", ".bulles")).resolve()


class OidcSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    issuer: str
    audience: str
    jwks_url: str
    roles_claim: str = Field("roles", description="Dotted path, e.g. realm_access.roles")
    organisation_claim: str = "organisation"
    username_claim: str = "preferred_username"
    algorithms: list[str] = ["RS256", "ES256"]
    leeway_seconds: int = Field(30, ge=0, le=300)


class ConfiguredUser(BaseModel):
    """A user declared in the configuration file; only the token's SHA-256 is ever written."""

    model_config = ConfigDict(extra="forbid")

    username: str
    roles: list[Role] = Field(min_length=1)
    organisation: str | None = None
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BULLES_", env_nested_delimiter="__", extra="forbid")

    home: Path = Field(default_factory=default_home)
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in the home by default")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    public_url: str | None = Field(None, description="Base URL used in DCAT-AP identifiers")
    site: str = "local"
    site_title: str = "bulles — local site"
    auth_mode: Literal["embedded", "oidc"] = "embedded"
    oidc: OidcSettings | None = None
    users: list[ConfiguredUser] = []
    max_body_bytes: int = Field(1 << 20, ge=1024)
    checkpoint_interval_seconds: float = Field(300.0, ge=0, description="0 disables periodic checkpoints")
    audit_batch_max: int = Field(1000, ge=1, le=100_000)
    file_roots: dict[str, Path] = {}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'state.db'}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def file_root(self, name: str) -> Path:
        """The directory behind a file location's `root`: configured ones, then the built-ins."""
        builtin = {"warehouse": self.home / "warehouse", "demo": Path(__file__).resolve().parents[1] / "catalog" / "demo"}
        roots = {**builtin, **self.file_roots}
        if name not in roots:
            raise KeyError(name)
        return roots[name]


def load_settings(home: Path | None = None, **overrides: Any) -> Settings:
    """Read `<home>/bulles.yaml` if it exists; environment and explicit overrides win."""
    home = (home or default_home()).resolve()
    data: dict[str, Any] = {}
    path = home / CONFIG_FILE
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        data.update(loaded)
    data["home"] = home
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**data)
