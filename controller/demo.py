"""The demo site: a provider organisation with real open data and synthetic pupils, and one
user per role. Seeding is idempotent: run it at every start, it adds only what is missing.

Demo tokens are derived from the site's master secret, so they can be printed at each start
without ever being stored in clear.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml
from sqlalchemy import select

from catalog.model import SourceSpec
from catalog.synthetic import build_demo_pupils
from catalog.vocab import Role
from connectors.seaweed import SeaweedFS, ensure_bucket, upload
from controller import accounts, sources
from controller.auth import Principal, derived_token, hash_token
from controller.home import master_secret
from controller.platform import Platform
from controller.store import Organisation, SourceRow, User
from controller.warehouse import CREDENTIALS

EXAMPLES = Path(__file__).resolve().parents[1] / "catalog" / "examples"
ACTOR = "system:demo"
PROVIDER_ORG = "demo-rennes"
PUPILS_SOURCE = "eleves-synthetiques"
DEMO_BUCKETS = {"demo": "opendata", "warehouse": "eleves"}  # file root of the example -> bucket

ORGANISATIONS = [
    (PROVIDER_ORG, "Académie de Rennes — démonstration", "https://www.ac-rennes.fr/", "donnees@example.org"),
    ("labo-demo", "Laboratoire de recherche — démonstration", None, "labo@example.org"),
    ("site-demo", "Opérateur du site — démonstration", None, "operateur@example.org"),
]


@dataclass(frozen=True)
class DemoUser:
    username: str
    roles: tuple[str, ...]
    organisation: str | None
    journey: str


USERS = [
    DemoUser("alice", (Role.provider,), PROVIDER_ORG, "data provider: registers and retires sources"),
    DemoUser("bruno", (Role.researcher,), "labo-demo", "researcher: browses the catalog"),
    DemoUser("chloe", (Role.reviewer,), None, "output checker"),
    DemoUser("david", (Role.auditor,), None, "auditor: reads and verifies the log"),
    DemoUser("admin", (Role.admin,), "site-demo", "operator: organisations and users"),
]


def _to_s3(data: dict, warehouse: SeaweedFS, roots: dict[str, Path]) -> dict:
    """Copy a file-based example's data into the embedded S3 warehouse and point the entry at it."""
    location = data["connector"]
    root = roots[location["root"]]
    bucket, key = DEMO_BUCKETS[location["root"]], location["path"].rsplit("/", 1)[-1]
    upload(warehouse.credentials(), bucket, key, root / location["path"])
    return {**data, "connector": {"kind": "s3", "bucket": bucket, "key": key, "format": location["format"],
                                  "credentials": CREDENTIALS}}


def seed(platform: Platform, pupils: int = 5000, warehouse: SeaweedFS | None = None) -> list[tuple[DemoUser, str]]:
    """Create what the demo needs; returns each demo user with their token. With a warehouse,
    the demo data is loaded into its buckets and the sources read it over S3."""
    master = master_secret(platform.settings.home)
    with platform.sessions() as session:
        orgs = set(session.scalars(select(Organisation.id)))
        users = {u.username: u for u in session.scalars(select(User))}
        registered = set(session.scalars(select(SourceRow.id)))
    for org_id, name, homepage, email in ORGANISATIONS:
        if org_id not in orgs:
            accounts.add_organisation(platform, ACTOR, org_id, name, homepage, email)
    result = []
    for demo in USERS:
        token = derived_token(master, demo.username)
        existing = users.get(demo.username)
        if existing is None:
            accounts.add_user(platform, ACTOR, demo.username, list(demo.roles), demo.organisation, token=token)
        elif existing.token_sha256 != hash_token(token):
            token = "(changed since the demo created it)"
        result.append((demo, token))
    roots = {"demo": platform.settings.file_root("demo"), "warehouse": platform.settings.file_root("warehouse")}
    build_demo_pupils(roots["warehouse"], n=pupils)
    provider = Principal("alice", frozenset({Role.provider}), PROVIDER_ORG)
    if warehouse is not None:
        for bucket in DEMO_BUCKETS.values():
            ensure_bucket(warehouse.credentials(), bucket)
    for path in sorted(EXAMPLES.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if warehouse is not None:  # always reload the objects: a new warehouse may be empty
            data = _to_s3(data, warehouse, roots)
        if data["id"] in registered:
            continue
        if data["id"] == PUPILS_SOURCE:
            data["number_of_records"] = pupils
        sources.register(platform, provider, SourceSpec.model_validate(data))
    return result
