"""Settings of one site: command-line options, then `BULLES_*` environment variables, then
`<home>/bulles.yaml`.

The environment wins over the file so that an operator (or Helm) can change one value without
rewriting the file; nested values use `__` (e.g. `BULLES_OIDC__AUDIENCE`), and a top-level key
set in the environment replaces the file's whole value for that key.
"""

from __future__ import annotations

import os
import re
import ssl
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, FilePath, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from catalog.vocab import Role

CONFIG_FILE = "bulles.yaml"
# The organisation the demo seeds. The built-in file roots and the embedded warehouse's
# credential set belong to it, so the demo works as it comes; a site declares its own.
DEMO_ORGANISATION = "demo-rennes"
_IDENTIFIER = r"^[A-Za-z_][A-Za-z0-9_]*$"
_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"


def default_home() -> Path:
    return Path(os.environ.get("BULLES_HOME") or ".bulles").resolve()


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

    @field_validator("algorithms")
    @classmethod
    def _asymmetric(cls, value: list[str]) -> list[str]:
        """Only public-key algorithms: 'none' or HMAC would let a JWKS's public key sign tokens."""
        allowed = {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
        wrong = [a for a in value if a not in allowed]
        if wrong or not value:
            raise ValueError(f"algorithms must be among {sorted(allowed)}; refused: {wrong}")
        return value

    @field_validator("issuer", "jwks_url")
    @classmethod
    def _https(cls, value: str) -> str:
        """Keys fetched over plain HTTP could be swapped in transit: HTTPS, except on loopback."""
        url = urlsplit(value)
        loopback = url.hostname in ("127.0.0.1", "localhost", "::1")
        if url.scheme != "https" and not (url.scheme == "http" and loopback):
            raise ValueError(f"'{value}' must be an https URL (plain http only on loopback)")
        return value


class ConfiguredUser(BaseModel):
    """A user declared in the configuration file; only the token's SHA-256 is ever written."""

    model_config = ConfigDict(extra="forbid")

    username: str
    roles: list[Role] = Field(min_length=1)
    organisation: str | None = None
    token_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class S3Credentials(BaseModel):
    """A credential set for S3 warehouses, named by sources' `credentials` (default: 'default').

    It belongs to `organisations`: only their sources may name it (none by default, so a set
    declared without owners serves nobody). `buckets` narrows it further to some buckets, or
    to prefixes of them written `bucket/prefix` (a directory: `eleves/rennes` covers the keys
    under `rennes/`), for a set whose keys reach more than its owners' data."""

    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = Field(None, description="e.g. http://127.0.0.1:8333; AWS when absent")
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    organisations: list[str] = Field([], description="Organisations whose sources may use this set")
    buckets: list[str] | None = Field(None, description="Buckets or bucket/prefix it may be used for; all when absent")

    @field_validator("buckets")
    @classmethod
    def _bucket_entries(cls, value: list[str] | None) -> list[str] | None:
        for entry in value or []:
            bucket, _, prefix = entry.partition("/")
            parts = prefix.rstrip("/").split("/") if prefix else []
            if not re.match(_BUCKET, bucket) or any(p in ("", ".", "..") for p in parts):
                raise ValueError(f"'{entry}' is not a bucket name, optionally followed by /prefix")
        return value


class Database(BaseModel):
    """A PostgreSQL warehouse, named by sources' `database`, and whose sources may read it.

    With `schemas`, sources name a table as `schema.table` in one of them, and free queries
    are refused (a query can read any table the role may read, whatever schema it names)."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="Connection URL, e.g. postgresql://bulles_ro@db.example/entrepot")
    organisations: list[str] = Field([], description="Organisations whose sources may read this database")
    schemas: list[str] | None = Field(None, description="Only tables of these schemas; any table or query when absent")

    @field_validator("schemas")
    @classmethod
    def _identifiers(cls, value: list[str] | None) -> list[str] | None:
        wrong = [name for name in value or [] if not re.match(_IDENTIFIER, name)]
        if wrong:
            raise ValueError(f"not schema names: {wrong}")
        return value


class FileRoot(BaseModel):
    """A directory `file` sources may live under, and whose sources may."""

    model_config = ConfigDict(extra="forbid")

    path: Path
    organisations: list[str] = Field([], description="Organisations whose sources may read under this root")


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
    metrics_token_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$",
                                             description="SHA-256 of a token that may read /metrics and nothing else")
    checkpoint_interval_seconds: float = Field(300.0, ge=0, description="0 disables periodic checkpoints")
    audit_batch_max: int = Field(1000, ge=1, le=100_000)
    file_roots: dict[str, FileRoot] = Field({}, description="Directories file sources may live under, with their owners")
    s3: dict[str, S3Credentials] = Field({}, description="Credential sets for S3 warehouses")
    databases: dict[str, Database] = Field({}, description="PostgreSQL warehouses, with their owners")
    http_hosts: dict[str, list[str]] = Field({}, description="Hosts (host or host:port) http sources may fetch from, "
                                                              "each with the organisations allowed, '*' for all")
    http_allow_private: bool = Field(False, description="Let http sources reach loopback/private addresses")
    http_ca_bundle: FilePath | None = Field(None, description="PEM file of CAs trusted for https sources, besides certifi's")
    policy_engine: Literal["embedded", "opa"] = Field("embedded", description="regopy in process, or an OPA server")
    opa_url: str = Field("http://127.0.0.1:8181", description="OPA server, for policy_engine=opa")
    policy_dir: Path = Field(Path(__file__).resolve().parents[1] / "policies", description="Rego files and data/")
    policy_poll_seconds: float = Field(2.0, ge=0, description="How often policy files are checked for changes")
    warehouse: Literal["seaweedfs", "none"] = Field("seaweedfs", description="Embedded S3 warehouse of the demo")
    runtime: Literal["local", "none"] = Field("local", description="Where bubbles run: bubblewrap sandboxes, or nowhere")
    bubble_env: Path = Field(Path(__file__).resolve().parents[1] / ".venv-bubble",
                             description="The Python environment bubbles run (built from bubble_images/)")
    bubbles_per_project: int = Field(1, ge=1, le=100, description="Bubbles a project may have provisioning or running")
    bubble_start_timeout: float = Field(90.0, gt=0, description="Seconds a sandbox has to answer before it is failed")
    export_max_files: int = Field(1000, ge=1, le=100_000, description="Files one export request may take")
    export_retention_days: int = Field(30, ge=0, le=3650,
                                       description="Days after a project ends that its released files are still given")
    reconcile_seconds: float = Field(30.0, ge=0,
                                     description="How often expiry, sandboxes and the quarantine are checked; 0: never")

    @field_validator("http_ca_bundle")
    @classmethod
    def _readable_certificates(cls, value: Path | None) -> Path | None:
        """A CA file OpenSSL cannot read fails here, at start, not on the first https scan."""
        if value is not None:
            try:
                ssl.create_default_context().load_verify_locations(cafile=str(value))
            except ssl.SSLError as exc:
                raise ValueError(f"{value} holds no PEM certificate OpenSSL can read ({exc.reason or exc})") from None
        return value

    @field_validator("http_hosts")
    @classmethod
    def _hosts(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        """A host entry that does not parse, or lists nobody, would silently match nothing."""
        for entry, organisations in value.items():
            try:
                parsed = urlsplit(f"//{entry}")
                parsed.port  # noqa: B018 - raises on a port that is not a number
            except ValueError:
                raise ValueError(f"'{entry}' is not host or host:port") from None
            if not parsed.hostname or parsed.path or parsed.username or not organisations:
                raise ValueError(f"'{entry}': give host or host:port, and the organisations it is open to")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit values (command-line options, and the file's keys that the environment
        # does not set, see load_settings) come first.
        return (init_settings, env_settings)

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'state.db'}"

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    def roots(self) -> dict[str, FileRoot]:
        """Every file root: the configured ones, and the built-ins they do not redeclare (the
        home's `warehouse`, where the demo writes its pupils, and the vendored open data)."""
        builtin = {
            "warehouse": FileRoot(path=self.home / "warehouse", organisations=[DEMO_ORGANISATION]),
            "demo": FileRoot(path=Path(__file__).resolve().parents[1] / "catalog" / "demo",
                             organisations=[DEMO_ORGANISATION]),
        }
        return {**builtin, **self.file_roots}

    def file_root(self, name: str) -> Path:
        """The directory behind a file location's `root`."""
        return self.roots()[name].path


def load_settings(home: Path | None = None, **overrides: Any) -> Settings:
    """Read `<home>/bulles.yaml` if it exists; environment and explicit overrides win."""
    home = (home or default_home()).resolve()
    data: dict[str, Any] = {}
    path = home / CONFIG_FILE
    if path.exists():
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        env_keys = {k.removeprefix("BULLES_").split("__")[0].lower() for k in os.environ if k.startswith("BULLES_")}
        data.update({k: v for k, v in loaded.items() if k not in env_keys})
    data["home"] = home
    data.update({k: v for k, v in overrides.items() if v is not None})
    return Settings(**data)
