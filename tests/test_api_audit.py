"""The audit log as an auditor reads it over the API: filters, checkpoints, and proofs that a
client checks on its own with the site's public key. Runs on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from conftest import Site, example
from controller.audit import checkpoint as cp
from controller.audit.merkle import verify_consistency, verify_inclusion
from controller.auth import hash_token
from controller.config import load_settings
from controller.platform import Platform


def _registered(site: Site, *names: str) -> None:
    for name in names:
        assert site.client.post("/api/v1/sources", json=example(name), headers=site.headers("alice")).status_code == 201


def test_filters_by_actor_subject_action_and_time(site: Site) -> None:
    t0 = site.client.get("/api/v1/audit/events", params={"limit": 1000}, headers=site.headers("david")).json()
    cut = t0["items"][-1]["ts"]
    time.sleep(0.01)
    _registered(site, "eleves-synthetiques", "fr-en-ips-colleges-ap2022")
    get = lambda **p: site.client.get("/api/v1/audit/events", params=p, headers=site.headers("david"))  # noqa: E731
    by_actor = get(actor="user:alice").json()["items"]
    assert [e["action"] for e in by_actor] == ["source.registered", "source.registered"]
    by_subject = get(subject_type="source", subject_id="eleves-synthetiques").json()["items"]
    assert len(by_subject) == 1 and by_subject[0]["details"]["sensitivity"] == "personal"
    after = get(since=cut.replace("Z", "+00:00")).json()["items"]
    assert {e["subject"]["id"] for e in after} >= {"eleves-synthetiques", "fr-en-ips-colleges-ap2022"}
    before = get(until=cut.replace("Z", "+00:00")).json()["items"]
    assert all(e["action"] != "source.registered" for e in before)
    paged = get(limit=3).json()
    assert len(paged["items"]) == 3 and paged["next_after_seq"] == 3
    assert get(after_seq=3, limit=1).json()["items"][0]["seq"] == 4
    assert get(since="2026-01-02T00:00:00Z", until="2026-01-01T00:00:00Z").status_code == 422
    assert get(since="yesterday").status_code == 422
    assert site.client.get("/api/v1/audit/events/9999", headers=site.headers("david")).status_code == 404


def test_inclusion_and_consistency_proofs_check_out_against_a_signed_checkpoint(site: Site) -> None:
    _registered(site, "eleves-synthetiques")
    david = site.headers("david")
    assert site.client.get("/api/v1/audit/checkpoints/latest", headers=david).status_code == 404
    first = site.client.post("/api/v1/audit/checkpoints", headers=david).json()
    _registered(site, "fr-en-ips-colleges-ap2022")
    second = site.client.post("/api/v1/audit/checkpoints", headers=site.headers("admin")).json()
    assert site.client.post("/api/v1/audit/checkpoints", headers=site.headers("alice")).status_code == 403

    pem = site.client.get("/api/v1/audit/public-key", headers=david).text
    key = serialization.load_pem_public_key(pem.encode())
    for c in (first, second):
        signed = cp.SignedCheckpoint(c["origin"], c["size"], bytes.fromhex(c["root"]), bytes.fromhex(c["chain_head"]),
                                     c["key_id"], base64.b64decode(c["signature"]))
        assert cp.signature_valid(key, signed)
        assert c["note"].encode() == cp.note_body(signed.origin, signed.size, signed.root, signed.chain_head)

    for seq in range(1, second["size"] + 1):
        proof = site.client.get(f"/api/v1/audit/events/{seq}/proof", headers=david).json()
        assert verify_inclusion(bytes.fromhex(proof["leaf_hash"]), seq - 1, second["size"],
                                [bytes.fromhex(p) for p in proof["proof"]], bytes.fromhex(second["root"]))
    old = site.client.get("/api/v1/audit/events/2/proof", params={"checkpoint": first["id"]}, headers=david).json()
    assert old["tree_size"] == first["size"]
    newer = site.client.get(f"/api/v1/audit/events/{second['size']}/proof", params={"checkpoint": first["id"]},
                            headers=david)
    assert newer.status_code == 409 and newer.json()["error"]["code"] == "not_covered"

    consistency = site.client.get("/api/v1/audit/consistency", params={"first": first["size"], "second": second["size"]},
                                  headers=david).json()
    assert verify_consistency(first["size"], second["size"], bytes.fromhex(first["root"]), bytes.fromhex(second["root"]),
                              [bytes.fromhex(p) for p in consistency["proof"]])
    assert site.client.get("/api/v1/audit/consistency", params={"first": 5, "second": 10_000},
                           headers=david).status_code == 422
    listed = site.client.get("/api/v1/audit/checkpoints", headers=david).json()
    assert [c["id"] for c in listed] == [second["id"], first["id"]]


def test_checkpoints_are_signed_periodically(home: Path, db_url: str) -> None:
    settings = load_settings(home, database_url=db_url, checkpoint_interval_seconds=0.2)
    with Platform(settings) as platform:
        site = Site(platform)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            latest = site.client.get("/api/v1/audit/checkpoints/latest", headers=site.headers("david"))
            if latest.status_code == 200 and latest.json()["size"] == platform.audit.size:
                break
            time.sleep(0.05)
        assert latest.status_code == 200 and latest.json()["size"] == platform.audit.size
        count = len(site.client.get("/api/v1/audit/checkpoints", headers=site.headers("david")).json())
        time.sleep(0.6)  # nothing new was appended: no new checkpoint either
        assert len(site.client.get("/api/v1/audit/checkpoints", headers=site.headers("david")).json()) == count


def test_users_declared_in_the_configuration_file_authenticate(home: Path, db_url: str) -> None:
    token = "blt_configured-token-for-the-test-0123456789abcdef"
    (home / "bulles.yaml").write_text(
        "users:\n"
        f"  - username: eve\n    roles: [auditor]\n    token_sha256: {hash_token(token)}\n", encoding="utf-8")
    with Platform(load_settings(home, database_url=db_url, checkpoint_interval_seconds=0)) as platform:
        from fastapi.testclient import TestClient

        from controller.api.app import create_app

        client = TestClient(create_app(platform))
        me = client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert me.status_code == 200 and me.json()["username"] == "eve" and me.json()["roles"] == ["auditor"]
        assert client.get("/api/v1/whoami", headers={"Authorization": "Bearer blt_other"}).status_code == 401
