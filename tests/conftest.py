"""Shared fixtures: a throw-away PostgreSQL 15 cluster, a site home, a platform per database.

Store and API tests take the `db_url` fixture and so run twice, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx
import psycopg
import pytest

from controller.config import load_settings
from controller.home import init_home
from controller.platform import Platform

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _pg_bindir() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: ("/15/" not in p, p))
    return Path(candidates[0]).parent if candidates else None


def _as_postgres(args: list[str]) -> list[str]:
    # initdb and pg_ctl refuse to run as root: use the `postgres` system user then.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL cluster on a free loopback port, in a temporary directory, for this session."""
    bindir = _pg_bindir()
    if bindir is None:
        pytest.fail("PostgreSQL server binaries not found (./dev.sh test installs postgresql-15)")
    base = Path(tempfile.mkdtemp(prefix="bulles-pg-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    data, port = base / "data", free_port()
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                                 "--no-sync", "-E", "UTF8", "--locale=C"]), check=True, capture_output=True, timeout=120)
    options = f"-c listen_addresses=127.0.0.1 -p {port} -k {base} -c fsync=off -c max_connections=200"
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(base / "log"),
                                 "-w", "-t", "60", "start"]), check=True, capture_output=True, timeout=90)
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
                       capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    server = request.getfixturevalue("pg_server")
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{server}/{name}"
    finally:
        with psycopg.connect(f"{server}/postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def home(tmp_path: Path) -> Path:
    path = tmp_path / "home"
    init_home(path)
    return path


@pytest.fixture
def platform(home: Path, db_url: str) -> Iterator[Platform]:
    settings = load_settings(home, database_url=db_url, checkpoint_interval_seconds=0, reconcile_seconds=0)
    with Platform(settings) as site:
        yield site


class Site:
    """A platform with one organisation per kind and one user per role, and an HTTP client."""

    def __init__(self, platform: Platform) -> None:
        from fastapi.testclient import TestClient

        from controller import accounts
        from controller.api.app import create_app

        self.platform = platform
        for org_id, name in (("demo-rennes", "Académie de Rennes"), ("autre-academie", "Autre académie"),
                             ("labo", "Laboratoire")):
            accounts.add_organisation(platform, "test", org_id, name)
        self.tokens: dict[str, str] = {}
        for username, roles, org in (
            ("alice", ["provider"], "demo-rennes"),
            ("olivier", ["provider"], "autre-academie"),
            ("bruno", ["researcher"], "labo"),
            ("chloe", ["reviewer"], None),
            ("david", ["auditor"], None),
            ("admin", ["admin"], None),
        ):
            _, self.tokens[username] = accounts.add_user(platform, "test", username, roles, org)
        self.client = TestClient(create_app(platform), raise_server_exceptions=False)

    def headers(self, username: str, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[username]}", **extra}

    def counts(self) -> tuple[int, int]:
        """(sources stored, audit events): what 'nothing stored' is checked against."""
        from sqlalchemy import func, select

        from controller.store import AuditEvent, SourceRow

        with self.platform.sessions() as s:
            return (s.scalar(select(func.count()).select_from(SourceRow)) or 0,
                    s.scalar(select(func.count()).select_from(AuditEvent)) or 0)


@pytest.fixture
def site(platform: Platform) -> Site:
    return Site(platform)


def example(name: str) -> dict:
    """An example source as a JSON-ready dict (YAML dates become ISO strings)."""
    import json

    import yaml

    data = yaml.safe_load((ROOT / "catalog" / "examples" / f"{name}.yaml").read_text(encoding="utf-8"))
    return json.loads(json.dumps(data, default=str))


def scan_of(table, sizes=1000):
    """A re-scannable source cut into batches of the given sizes (cycled), for the transforms:
    their results must not depend on how the source is cut."""

    def scan():
        pattern = [sizes] if isinstance(sizes, int) else sizes
        start, i = 0, 0
        while start < table.num_rows:
            size = max(1, pattern[i % len(pattern)])
            yield from table.slice(start, size).combine_chunks().to_batches()
            start, i = start + size, i + 1

    return scan


def remove_bubbles(home: Path) -> list[str]:
    """What a `bulles demo` run left running (bubbles outlive their controller by design)."""
    from controller.runtimes.local import LocalRuntime

    runtime = LocalRuntime(home / "bubbles")
    found = runtime.list()
    for bubble_id in found:
        runtime.delete(bubble_id)
    return found


def open_bubble_link(browser: httpx.Client, link: str) -> httpx.Response:
    """What the page at a bubble's link does in a browser: post the ticket it finds in the
    fragment back to the page, from the page's own origin."""
    page, _, fragment = link.partition("#")
    origin = "{0.scheme}://{0.netloc}".format(urlsplit(page))
    return browser.post(page, data={"ticket": dict(parse_qsl(fragment)).get("ticket", "")}, headers={"Origin": origin})
