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
from connectors.seaweed import ensure_bucket, upload
from controller import accounts, sources
from controller.auth import Principal, derived_token, hash_token
from controller.config import DEMO_ORGANISATION, S3Credentials
from controller.home import master_secret
from controller.platform import Platform
from controller.store import Organisation, SourceRow, User
from controller.warehouse import CREDENTIALS

EXAMPLES = Path(__file__).resolve().parents[1] / "catalog" / "examples"
ACTOR = "system:demo"
PROVIDER_ORG = DEMO_ORGANISATION  # which the built-in file roots and the embedded warehouse belong to
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


def _to_s3(data: dict, warehouse: S3Credentials, roots: dict[str, Path]) -> dict:
    """Copy a file-based example's data into the embedded S3 warehouse and point the entry at it."""
    location = data["connector"]
    root = roots[location["root"]]
    bucket, key = DEMO_BUCKETS[location["root"]], location["path"].rsplit("/", 1)[-1]
    upload(warehouse, bucket, key, root / location["path"])
    return {**data, "connector": {"kind": "s3", "bucket": bucket, "key": key, "format": location["format"],
                                  "credentials": CREDENTIALS}}


def seed(platform: Platform, pupils: int = 5000, warehouse: S3Credentials | None = None) -> list[tuple[DemoUser, str]]:
    """Create what the demo needs; returns each demo user with their token. With a warehouse
    (its credentials), the demo data is loaded into its buckets and the sources read it over S3."""
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
            ensure_bucket(warehouse, bucket)
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


DEMO_PROJECT = "demo-absenteisme"
DEMO_LINK_HOURS = 8


def demo_bubble(platform: Platform) -> tuple[str, str]:
    """bruno's demo project with two grants (open data, granted at once; the synthetic pupils,
    pseudonymised and approved by alice) and a running bubble: (bubble id, one-time link), or
    ("", why) when bubbles cannot run here. Idempotent across restarts of the demo."""
    import datetime as dt

    from controller import access, gateway, projects
    from controller.bubbles import LIVE, BubbleBody
    from controller.store import Bubble, Project

    if platform.bubbles is None:
        return "", platform.bubbles_unavailable or "no runtime"
    bruno = Principal("bruno", frozenset({Role.researcher}), "labo-demo")
    alice = Principal("alice", frozenset({Role.provider}), PROVIDER_ORG)
    today = dt.date.today()
    with platform.sessions() as session:
        exists = session.get(Project, DEMO_PROJECT) is not None
    if not exists:
        projects.create(platform, bruno, projects.ProjectSpec(
            id=DEMO_PROJECT, title="Absentéisme et réussite au collège (démo)", purpose="research",
            legal_basis="public_task", dpia_reference="AIPD-DEMO-1", start_date=today,
            end_date=today + dt.timedelta(days=180)))
        access.request_access(platform, bruno, DEMO_PROJECT, access.AccessRequestBody(
            source="fr-en-ips-colleges-ap2022", justification="Contexte social des collèges"))
        asked = access.request_access(platform, bruno, DEMO_PROJECT, access.AccessRequestBody(
            source=PUPILS_SOURCE, columns=["ine", "sex", "level", "grade_maths", "absences_half_days"],
            justification="Lien entre absences et résultats en mathématiques"))
        if asked["status"] == access.PENDING:
            access.review(platform, alice, asked["id"], access.ReviewBody(verdict="approve", comment="démo"))
    with platform.sessions() as session:
        live = session.scalars(select(Bubble.id).where(Bubble.project_id == DEMO_PROJECT,
                                                       Bubble.state.in_(LIVE))).first()
    bubble_id = live or platform.bubbles.create(bruno, BubbleBody(project=DEMO_PROJECT))["id"]
    link = gateway.ticket_url(platform, "bruno", bubble_id, seconds=DEMO_LINK_HOURS * 3600)
    return bubble_id, platform.settings.base_url + link
