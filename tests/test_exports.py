"""The airlock end to end: outputs made in a real bubble, requested for export, checked,
decided by the real `bulles.export` policy, reviewed, released with a signed manifest, verified
and revoked — and every way of asking badly.

Needs root and bubblewrap, like tests/test_bubbles.py, whose site and helpers it shares.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from conftest import ROOT
from controller import accounts
from controller.audit.verify import verify as verify_log
from controller.platform import Platform
from controller.cli import app as cli
from controller.exports import ExportBody
from controller.home import SIGNING_PUB, load_public_key
from controller.quarantine import Taken
from controller.releases import verify
from controller.store import AuditEvent, ExportRequest, Project
from test_bubbles import IPS, PUPILS, Kernel, Served, events, project, served  # noqa: F401 - the fixture

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the local runtime needs root")

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)


@pytest.fixture
def airlock(served: Served) -> Served:
    """One pupil with a huge number of absences (a dominated cell waiting to happen), reviewers,
    and a project with two members, one of whom is also a reviewer."""
    site = served.site
    path = site.platform.settings.home / "warehouse" / "pupils.parquet"
    table = pq.read_table(path)
    absences = table.column("absences_half_days").to_pylist()
    absences[0] = 100_000
    import pyarrow as pa
    table = table.set_column(table.schema.get_field_index("absences_half_days"), "absences_half_days",
                             pa.array(absences, type=pa.int64()))
    pq.write_table(table, path)
    for user, roles in (("rita", ["reviewer"]), ("remi", ["reviewer"]), ("marc", ["researcher", "reviewer"])):
        _, site.tokens[user] = accounts.add_user(site.platform, "test", user, roles, None)
    project(served, "projet-x")
    body = {"members": [{"username": "bruno", "role": "owner"}, {"username": "marc", "role": "member"}]}
    assert served.http.patch("/api/v1/projects/projet-x", json=body, headers=served.headers("bruno")).status_code == 200
    asked = served.http.post("/api/v1/projects/projet-x/access-requests", headers=served.headers("bruno"), json={
        "source": PUPILS, "columns": ["ine", "sex", "level", "absences_half_days"], "justification": "Absentéisme"}).json()
    assert served.http.post(f"/api/v1/access-requests/{asked['id']}/review", headers=served.headers("alice"),
                            json={"verdict": "approve", "comment": "ok"}).status_code == 200
    return served


def bubble_of(served: Served, pid: str, user: str = "bruno") -> str:
    answer = served.http.post("/api/v1/bubbles", json={"project": pid}, headers=served.headers(user))
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def outbox(served: Served, bubble_id: str) -> Path:
    return served.site.platform.bubbles.runtime.outbox(bubble_id)


def ask(served: Served, bubble_id: str, paths: list[str], user: str = "bruno", wait: bool = True) -> dict:
    answer = served.http.post("/api/v1/exports", headers=served.headers(user), json={
        "bubble": bubble_id, "paths": paths, "justification": "Résultats de l'étude"})
    assert answer.status_code == 202, answer.text
    request = answer.json()
    if wait:
        served.site.platform.exports.wait(request["id"])
        request = served.http.get(f"/api/v1/exports/{request['id']}", headers=served.headers(user)).json()
    return request


def checks(request: dict, severity: str | None = None) -> set[tuple[str, str]]:
    return {(f["file"], f["check"]) for f in request["findings"] if severity is None or f["severity"] == severity}


def test_outputs_made_in_a_bubble_are_checked_and_decided(airlock: Served) -> None:
    served = airlock
    bubble = bubble_of(served, "projet-x")
    kernel = Kernel(served, bubble)
    try:
        kernel.run(
            "import bulle, pathlib\n"
            "bulle.table('eleves-synthetiques', ['level'], name='par_niveau.csv')\n"
            "bulle.table('eleves-synthetiques', ['sex'], values='absences_half_days', aggfunc='sum', name='absences.csv')\n"
            "out = bulle.outbox()\n"
            "(out / 'petit.csv').write_text('niveau,effectif\\n6e,25\\n5e,3\\n4e,40\\n')\n"
            "bulle.read('eleves-synthetiques', pandas=True)[['ine', 'level']].to_csv(out / 'lignes.csv', index=False)\n"
            f"(out / 'figure.png').write_bytes({PNG!r})\n"
            "(out / 'model.pkl').write_bytes(b'\\x80\\x04K\\x01.')\n")
    finally:
        kernel.close()

    safe = ask(served, bubble, ["par_niveau.csv", "figure.png"])
    assert safe["state"] == "in_review", safe
    assert [f["path"] for f in safe["files"]] == ["figure.png", "par_niveau.csv", "par_niveau.csv.bulle.json"]
    assert safe["summary"]["fail"] == 0 and safe["summary"]["review"] == 0
    assert ("par_niveau.csv", "sdc") in checks(safe, "pass")
    assert safe["decision"]["reviewers"] == 2 and safe["decision"]["organisations"] == []
    assert any(r.startswith("personal_data_review") for r in safe["decision"]["reasons"])

    small = ask(served, bubble, ["petit.csv"])
    assert small["state"] == "refused"
    threshold = next(f for f in small["findings"] if f["check"] == "threshold")
    assert threshold["cells"] == [[2, "effectif"]] and threshold["parameters"]["threshold"] == 10
    assert any(r.startswith("check_failed") for r in small["decision"]["reasons"])

    dominated = ask(served, bubble, ["absences.csv"])
    assert dominated["state"] == "refused"
    nk = next(f for f in dominated["findings"] if f["check"] == "dominance_nk")
    assert nk["parameters"]["nk_k"] == 0.9 and nk["recipe"]["aggfunc"] == "sum" and nk["count"] == 1
    assert ("absences.csv", "threshold") not in checks(dominated)  # 140+ pupils per cell: only dominance

    rows = ask(served, bubble, ["lignes.csv"])
    assert rows["state"] == "refused"
    assert {("lignes.csv", "identifiers"), ("lignes.csv", "row_level")} <= checks(rows, "fail")
    found = next(f for f in rows["findings"] if f["check"] == "identifiers")
    assert "pseudonym" in found["message"] and found["count"] == 300

    pickled = ask(served, bubble, ["model.pkl"])
    assert pickled["state"] == "refused"
    assert any(r.startswith("file_type_not_allowed") for r in pickled["decision"]["reasons"])

    # the whole record is in the audit log, decision by decision
    decided = {e["subject"]: e["details"]["action"] for e in events(served.site, "export.refused")}
    assert decided == {small["id"]: "refuse", dominated["id"]: "refuse", rows["id"]: "refuse",
                       pickled["id"]: "refuse"}
    assert [e["subject"] for e in events(served.site, "export.in_review")] == [safe["id"]]


def test_review_release_verify_and_revoke(airlock: Served, tmp_path: Path) -> None:
    served, site = airlock, airlock.site
    bubble = bubble_of(served, "projet-x")
    box = outbox(served, bubble)
    (box / "tables").mkdir()
    original = b"niveau,effectif\n6e,25\n5e,31\n"
    (box / "tables" / "effectifs.csv").write_bytes(original)
    (box / "tables" / "notes.md").write_text("Effectifs par niveau, rentrée 2022.\n")
    request = ask(served, bubble, ["tables"])
    rid = request["id"]
    assert request["state"] == "in_review" and len(request["files"]) == 2
    # the outbox changes after the request: what is reviewed and released does not
    (box / "tables" / "effectifs.csv").write_bytes(b"niveau,effectif\n6e,25\n5e,3\n")

    def vote(user: str, choice: str, comment: str = "") -> dict:
        answer = served.http.post(f"/api/v1/exports/{rid}/votes", headers=served.headers(user),
                                  json={"vote": choice, "comment": comment})
        return {"status": answer.status_code, **answer.json()}

    assert vote("bruno", "approve")["error"]["code"] == "self_review"
    assert vote("marc", "approve")["error"]["code"] == "member_review"
    assert vote("zoe", "approve")["status"] == 404  # not a reviewer: does not learn the request exists
    assert vote("rita", "refuse")["error"]["code"] == "validation_error"  # refusing needs a reason
    # reviewers read the files while in review; the project does not yet
    assert served.http.get(f"/api/v1/exports/{rid}/files/tables/effectifs.csv",
                           headers=served.headers("chloe")).content == original
    assert served.http.get(f"/api/v1/exports/{rid}/files/tables/effectifs.csv",
                           headers=served.headers("bruno")).status_code == 403
    first = vote("chloe", "approve")
    assert first["state"] == "in_review" and first["votes_in"] == 1
    seen_by_rita = served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("rita")).json()
    assert seen_by_rita["votes"] == [] and seen_by_rita["votes_in"] == 1  # hidden until both are in
    assert vote("chloe", "approve")["error"]["code"] == "already_voted"
    second = vote("rita", "refuse", "les effectifs par niveau identifient une classe")
    assert second["state"] == "in_review"  # disagreement: a third reviewer decides
    assert {v["reviewer"] for v in second["votes"]} == {"chloe", "rita"}  # both in: visible to those who voted
    third = vote("remi", "approve")
    assert third["state"] == "released"

    released = served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("bruno")).json()
    assert [h["state"] for h in released["history"]] == ["submitted", "checking", "in_review", "released"]
    got = served.http.get(f"/api/v1/exports/{rid}/files/tables/effectifs.csv", headers=served.headers("bruno"))
    assert got.status_code == 200 and got.content == original
    assert served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("zoe")).status_code == 404

    manifest = served.http.get(f"/api/v1/exports/{rid}/manifest", headers=served.headers("bruno")).json()
    assert manifest["files"][0]["sha256"] == hashlib.sha256(original).hexdigest()
    assert [r["vote"] for r in manifest["reviews"]] == ["approve", "refuse", "approve"]
    assert manifest["decision"]["action"] == "review" and manifest["rules"]["threshold"] == 10
    assert manifest["decision"]["revision"] and manifest["findings"]

    # the CLI downloads and verifies offline against the site's public key
    runner = CliRunner()
    url = f"http://127.0.0.1:{served.port}"
    out = tmp_path / "release"
    done = runner.invoke(cli, ["export", "download", rid, str(out), "--url", url, "--token", site.tokens["bruno"]])
    assert done.exit_code == 0, done.output
    pub = site.platform.settings.home / SIGNING_PUB
    checked = runner.invoke(cli, ["export", "verify", str(out / "release-manifest.json"), "--public-key", str(pub)])
    assert checked.exit_code == 0, checked.output
    (out / "tables" / "effectifs.csv").write_bytes(b"niveau,effectif\n6e,25\n5e,3\n")
    tampered = runner.invoke(cli, ["export", "verify", str(out / "release-manifest.json"), "--public-key", str(pub)])
    assert tampered.exit_code == 1 and "tables/effectifs.csv: sha256" in tampered.output
    forged = dict(manifest, requester="zoe")
    assert any("signature" in p for p in verify(forged, site.platform.signing_key.public_key(), None))

    # revocation: by a reviewer, with a reason; the files are no longer given
    assert served.http.post(f"/api/v1/exports/{rid}/revoke", headers=served.headers("bruno"),
                            json={"reason": "x"}).status_code == 403
    revoked = served.http.post(f"/api/v1/exports/{rid}/revoke", headers=served.headers("rita"),
                               json={"reason": "une classe de 31 élèves reste identifiable"})
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
    assert served.http.get(f"/api/v1/exports/{rid}/files/tables/effectifs.csv",
                           headers=served.headers("bruno")).status_code == 410
    actions = [e["details"].get("vote") for e in events(site, "export.voted") if e["subject"] == rid]
    assert actions == ["approve", "refuse", "approve"]
    assert [e["subject"] for e in events(site, "export.revoked")] == [rid]
    assert len([e for e in events(site, "export.downloaded") if e["subject"] == rid]) >= 3


def test_changes_resubmission_withdrawal_and_open_data(airlock: Served) -> None:
    served = airlock
    bubble = bubble_of(served, "projet-x")
    box = outbox(served, bubble)
    (box / "t.csv").write_text("niveau,effectif\n6e,25\n5e,31\n")
    rid = ask(served, bubble, ["t.csv"])["id"]
    for user in ("chloe", "rita"):
        answer = served.http.post(f"/api/v1/exports/{rid}/votes", headers=served.headers(user),
                                  json={"vote": "changes", "comment": "regroupez les niveaux"})
    assert answer.json()["state"] == "changes_requested"
    (box / "t.csv").write_text("cycle,effectif\ncollège,56\n")
    again = served.http.post(f"/api/v1/exports/{rid}/resubmit", headers=served.headers("bruno"), json={})
    assert again.status_code == 202 and again.json()["round"] == 2
    served.site.platform.exports.wait(rid)
    second = served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("bruno")).json()
    assert second["state"] == "in_review" and second["votes_in"] == 0
    assert second["files"][0]["sha256"] == hashlib.sha256(b"cycle,effectif\ncollege,56\n".replace(
        b"college", "collège".encode())).hexdigest()
    withdrawn = served.http.post(f"/api/v1/exports/{rid}/withdraw", headers=served.headers("bruno"))
    assert withdrawn.json()["state"] == "withdrawn"
    assert served.http.post(f"/api/v1/exports/{rid}/withdraw", headers=served.headers("bruno")).status_code == 409

    # a bubble holding only open data: outputs that pass every check leave at once
    project(served, "projet-ouvert")
    asked = served.http.post("/api/v1/projects/projet-ouvert/access-requests", headers=served.headers("bruno"),
                             json={"source": IPS, "justification": "IPS des collèges"})
    assert asked.json()["status"] == "granted"
    open_bubble = bubble_of(served, "projet-ouvert")
    (outbox(served, open_bubble) / "ips.csv").write_text("departement,ips_moyen\n35,103.2\n")
    (outbox(served, open_bubble) / "carte.png").write_bytes(PNG)
    released = ask(served, open_bubble, ["ips.csv", "carte.png"])
    assert released["state"] == "released", released["decision"]
    assert any(r.startswith("open_data_only") for r in released["decision"]["reasons"])
    assert served.http.get(f"/api/v1/exports/{released['id']}/manifest",
                           headers=served.headers("bruno")).json()["reviews"] == []


def test_bad_requests_are_refused_and_store_nothing(airlock: Served) -> None:
    served, site = airlock, airlock.site
    bubble = bubble_of(served, "projet-x")
    box = outbox(served, bubble)
    (box / "ok.csv").write_text("a,n\nx,20\n")
    secret = site.platform.settings.home / "master.key"
    os.symlink(secret, box / "lien.csv")
    (box / "dossier").mkdir()
    os.symlink(site.platform.settings.home, box / "dossier" / "home")
    (box / "vide").mkdir()
    os.mkfifo(box / "tube.csv")
    quarantine = site.platform.settings.home / "quarantine"
    stored = lambda: sorted(p for p in quarantine.rglob("*") if p.is_file())  # noqa: E731
    before = stored()

    def refused(paths: list, user: str = "bruno", bubble_id: str = bubble) -> dict:
        answer = served.http.post("/api/v1/exports", headers=served.headers(user), json={
            "bubble": bubble_id, "paths": paths, "justification": "x"})
        assert 400 <= answer.status_code < 500, answer.text
        return answer.json()["error"]

    assert "leaves the outbox" in refused(["../home/.bashrc"])["message"]
    assert "absolute" in refused([str(secret)])["message"]
    assert "symbolic link" in refused(["lien.csv"])["message"]
    assert "symbolic link" in refused(["dossier"])["message"]
    assert "not a regular file" in refused(["tube.csv"])["message"]
    assert "not in the outbox" in refused(["absent.csv"])["message"]
    assert "no file" in refused(["vide"])["message"]
    assert refused([])["field"] == "paths"
    assert refused(["ok.csv"], user="zoe")["code"] == "not_found"  # a stranger does not learn the bubble exists
    assert refused(["ok.csv", "../x"])["field"] == "paths.1"
    with site.platform.sessions() as session:
        assert session.query(ExportRequest).count() == 0
    assert stored() == before

    # content is checked, whatever the name says; big files are never copied; nothing is unpacked
    import zipfile
    with zipfile.ZipFile(box / "archive.zip", "w") as z:
        z.writestr("eleves.csv", "ine\n1\n")
    (box / "deguise.csv").write_bytes((box / "archive.zip").read_bytes())
    (box / "faux.png").write_text("pas une image")
    (box / "casse.csv").write_text("a,b\n1,2,3\n")
    with open(box / "enorme.csv", "wb") as big:
        big.truncate(17 << 20)
    for path, expected in (("archive.zip", "file_type_not_allowed"), ("deguise.csv", "archive"),
                           ("faux.png", "content_type"), ("casse.csv", "malformed"), ("enorme.csv", "file_too_large")):
        request = ask(served, bubble, [path])
        assert request["state"] == "refused", (path, request)
        codes = {f["check"] for f in request["findings"]} | {r.split(":")[0] for r in request["decision"]["reasons"]}
        assert expected in codes, (path, codes)
    big = [r for r in served.http.get("/api/v1/exports", headers=served.headers("bruno")).json()
           if r["paths"] == ["enorme.csv"]][0]
    assert big["files"][0]["stored"] is False and big["files"][0]["sha256"] is None
    assert not any(p.stat().st_size > 16 << 20 for p in quarantine.rglob("*") if p.is_file())

    # a stopped bubble's outbox is not read
    served.http.post(f"/api/v1/bubbles/{bubble}/stop", headers=served.headers("bruno"))
    assert refused(["ok.csv"])["code"] == "bubble_not_running"


def test_the_quarantine_keeps_only_what_someone_may_still_be_given(airlock: Served) -> None:
    served, site = airlock, airlock.site
    exports = site.platform.exports
    bubble = bubble_of(served, "projet-x")
    box = outbox(served, bubble)
    tables = {"gardee.csv": "niveau,effectif\n6e,25\n5e,31\n", "refusee.csv": "niveau,effectif\n6e,2\n",
              "retiree.csv": "niveau,effectif\n6e,40\n5e,41\n", "v1.csv": "niveau,effectif\n6e,50\n5e,51\n",
              "encore.csv": "niveau,effectif\n6e,60\n5e,61\n", "partagee.csv": "niveau,effectif\n6e,70\n5e,71\n",
              "partagee-bis.csv": "niveau,effectif\n6e,70\n5e,71\n"}
    for name, text in tables.items():
        (box / name).write_text(text)
    digest = {name: hashlib.sha256(text.encode()).hexdigest() for name, text in tables.items()}
    kept, refused, withdrawn, pending = (ask(served, bubble, [name]) for name in
                                         ("gardee.csv", "refusee.csv", "retiree.csv", "encore.csv"))
    assert refused["state"] == "refused"
    shared = ask(served, bubble, ["partagee.csv"])
    ask(served, bubble, ["partagee-bis.csv"])  # the same bytes: one copy, needed by this pending request
    for request in (withdrawn, shared):
        assert served.http.post(f"/api/v1/exports/{request['id']}/withdraw",
                                headers=served.headers("bruno")).json()["state"] == "withdrawn"
    resubmitted = ask(served, bubble, ["v1.csv"])
    for user in ("chloe", "rita"):
        served.http.post(f"/api/v1/exports/{resubmitted['id']}/votes", headers=served.headers(user),
                         json={"vote": "changes", "comment": "arrondir"})
        served.http.post(f"/api/v1/exports/{kept['id']}/votes", headers=served.headers(user),
                         json={"vote": "approve", "comment": "ok"})
    (box / "v2.csv").write_text("niveau,effectif\n6e,55\n5e,56\n")
    again = served.http.post(f"/api/v1/exports/{resubmitted['id']}/resubmit", headers=served.headers("bruno"),
                             json={"paths": ["v2.csv"]})
    assert again.status_code == 202, again.text
    exports.wait(resubmitted["id"])
    (exports.quarantine.root / "tmp" / "half-copied").write_bytes(b"a crash in the middle of a copy")
    (exports.quarantine.root / "00" / "README").parent.mkdir(exist_ok=True)
    (exports.quarantine.root / "00" / "README").write_text("not a copy: left alone")
    stored = set(exports.quarantine.digests())
    assert {digest[n] for n in tables} <= stored

    with site.platform.sessions() as session:
        end = dt.date.fromisoformat(session.get(Project, "projet-x").end_date)
    gone = exports.purge(end)  # the project's last day
    assert set(gone) == {digest["refusee.csv"], digest["retiree.csv"], digest["v1.csv"]}
    left = set(exports.quarantine.digests())
    assert {digest["gardee.csv"], digest["encore.csv"], digest["partagee.csv"]} <= left and not left & set(gone)
    assert list((exports.quarantine.root / "tmp").iterdir()) == []
    assert (exports.quarantine.root / "00" / "README").exists()
    purged = events(site, "export.purged")[-1]["details"]
    assert sorted(purged["sha256"]) == sorted(gone) and purged["files"] == 3 and purged["bytes"] > 0
    assert exports.purge(end) == []  # nothing more to do, nothing logged
    assert len(events(site, "export.purged")) == 1
    url = f"/api/v1/exports/{kept['id']}/files/gardee.csv"
    assert served.http.get(url, headers=served.headers("bruno")).text == tables["gardee.csv"]

    # the retention period after the project's end: the released copy goes, pending ones stay
    retention = site.platform.settings.export_retention_days
    assert exports.purge(end + dt.timedelta(days=retention)) == []
    assert exports.purge(end + dt.timedelta(days=retention + 1)) == [digest["gardee.csv"]]
    answer = served.http.get(url, headers=served.headers("bruno"))
    assert answer.status_code == 410 and answer.json()["error"]["code"] == "purged"
    assert digest["encore.csv"] in set(exports.quarantine.digests())  # still in review: still needed


def test_a_checker_that_breaks_sends_the_request_to_a_person(airlock: Served) -> None:
    served, site = airlock, airlock.site
    bubble = bubble_of(served, "projet-x")
    (outbox(served, bubble) / "t.csv").write_text("niveau,effectif\n6e,25\n5e,31\n")
    exports = site.platform.exports
    original = exports.needles
    exports.needles = lambda *a: (_ for _ in ()).throw(RuntimeError("warehouse down"))
    try:
        broken = ask(served, bubble, ["t.csv"])
    finally:
        exports.needles = original
    assert broken["state"] == "in_review"
    assert any("warehouse down" in f["message"] for f in broken["findings"] if f["severity"] == "review")


# A controller whose checker is stuck in the middle of a check (on a warehouse that never answers):
# it signals it has got there, then waits to be killed.
STUCK_CONTROLLER = """
import pathlib, sys, time
from controller.config import load_settings
from controller.exports import Exports
from controller.platform import Platform

home, url, marker = sys.argv[1:4]

def stuck(self, row, grants, mounted):
    pathlib.Path(marker).touch()
    time.sleep(600)

Exports.findings = stuck
settings = load_settings(pathlib.Path(home), database_url=url or None, checkpoint_interval_seconds=0, reconcile_seconds=0,
                         runtime="none", warehouse="none")
Platform(settings).start()
time.sleep(600)
"""


def test_a_controller_killed_while_checking_leaves_a_request_the_next_one_checks(airlock: Served,
                                                                                 tmp_path: Path) -> None:
    """A real kill -9 of a controller process mid-check: the request is found in `checking`, the
    next controller checks it again from the quarantine, nothing is released on the way, and the
    audit log still verifies."""
    served, platform = airlock, airlock.site.platform
    bubble = bubble_of(served, "projet-x")
    (outbox(served, bubble) / "t.csv").write_text("niveau,effectif\n6e,25\n5e,31\n")
    platform.exports.close()
    request = ask(served, bubble, ["t.csv"], wait=False)
    (outbox(served, bubble) / "t.csv").write_text("niveau,effectif\n6e,2\n")  # too late to matter
    settings = platform.settings
    platform.close()  # this controller goes; the next one takes over the database and the home

    marker = tmp_path / "checking"
    child = subprocess.Popen([sys.executable, "-c", STUCK_CONTROLLER, str(settings.home), settings.database_url or "",
                              str(marker)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the second controller never got to checking"
    finally:
        if child.poll() is None:
            os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    assert child.returncode == -signal.SIGKILL

    with Platform(settings) as restarted:  # the same configuration, a new controller
        with restarted.sessions() as session:
            assert session.get(ExportRequest, request["id"]).state == "checking"  # where the kill left it
        assert restarted.exports.wait(request["id"]) == "in_review"
        with restarted.sessions() as session:
            row = session.get(ExportRequest, request["id"])
            assert row.released_at is None and row.decision["action"] == "review"
            assert not any(f["check"] == "threshold" for f in row.findings)  # the quarantined copy was checked
        checking = [e for e in events(airlock.site, "export.checking") if e["subject"] == request["id"]]
        assert [e["details"]["resumed"] for e in checking] == [False, True]  # the killed one, then this one
        restarted.audit.checkpoint()
        report = verify_log(restarted.engine, load_public_key(settings.home / SIGNING_PUB))
        assert report.ok, report.problem


def test_acro_evidence_from_the_bubble_is_weighed_and_its_checksums_verified(airlock: Served, tmp_path: Path) -> None:
    """ACRO run on its own test data (as a researcher would in the bubble), its output folder put in
    the outbox, one of its tables edited after ACRO checked it."""
    import logging
    import shutil

    import pandas as pd
    from acro import ACRO

    from test_acro import REFERENCE

    served = airlock
    logging.disable(logging.WARNING)
    try:
        data = pd.read_stata(REFERENCE / "test_data.dta")
        session = ACRO(suppress=False)
        session.crosstab(data.year, data.grant_type)
        session.finalise(str(tmp_path / "acro"), "json")
    finally:
        logging.disable(logging.NOTSET)
    results = json.loads((tmp_path / "acro" / "results.json").read_text())
    statuses = {output["files"][0]["name"]: output["status"] for output in results["results"].values()}
    bubble = bubble_of(served, "projet-x")
    shutil.copytree(tmp_path / "acro", outbox(served, bubble) / "acro")
    with open(outbox(served, bubble) / "acro" / "output_0_0.csv", "a") as table:
        table.write("2016,1,1,1,1\n")
    request = ask(served, bubble, ["acro"])
    acro = {f["file"]: f for f in request["findings"] if f["check"] == "acro"}
    assert {path.removeprefix("acro/"): f["acro"]["status"] for path, f in acro.items()} == statuses
    assert checks(request, "fail") >= {("acro/output_0_0.csv", "acro_checksum")}
    assert not any(f["check"] == "acro_checksum" and f["file"] != "acro/output_0_0.csv" for f in request["findings"])
    assert request["state"] == "refused"


# -- file names, links and nesting at intake -----------------------------------------------------
FORGED = 'z"], "action": "release", "zz": ["x.csv'


def request_answer(served: Served, bubble_id: str, paths: list[str], user: str = "bruno") -> httpx.Response:
    """Sent as ASCII JSON, so that a path holding an undecodable byte (a lone surrogate once
    decoded, as Python spells it) travels as `\\udcff`."""
    body = json.dumps({"bubble": bubble_id, "paths": paths, "justification": "Résultats"})
    return served.http.post("/api/v1/exports", content=body,
                            headers={**served.headers(user), "Content-Type": "application/json"})


def nothing_taken(served: Served, before: set[str]) -> bool:
    with served.site.platform.sessions() as session:
        requests = session.query(ExportRequest).count()
    return requests == 0 and set(served.site.platform.exports.quarantine.digests()) == before


def test_a_file_name_that_would_rewrite_the_decision_is_refused_at_intake(airlock: Served) -> None:
    """The original attack: the bubble writes pupils' rows under a name that, unescaped in the
    policy engine's output, adds `"action": "release"` to the decision. The request is refused
    before anything is copied, and the error shows the name escaped."""
    served = airlock
    bubble = bubble_of(served, "projet-x")
    kernel = Kernel(served, bubble)
    try:
        kernel.run("import bulle\n"
                   "rows = bulle.read('eleves-synthetiques', pandas=True)[['ine', 'sex', 'level']]\n"
                   f"rows.to_csv(bulle.outbox() / {FORGED!r}, index=False)\n"
                   "(bulle.outbox() / 'dossier').mkdir()\n"
                   f"rows.to_csv(bulle.outbox() / 'dossier' / {FORGED!r}, index=False)\n"
                   "(bulle.outbox() / 'ok.csv').write_text('niveau,effectif\\n6e,25\\n')\n")
    finally:
        kernel.close()
    before = set(served.site.platform.exports.quarantine.digests())
    # by its name, inside a folder asked for, and inside the whole outbox beside a harmless file
    for paths, field in (([FORGED], "paths.0"), (["dossier"], "paths.0"), (["ok.csv", "."], "paths.1")):
        answer = request_answer(served, bubble, paths)
        assert answer.status_code == 422, answer.text
        error = answer.json()["error"]
        assert error["field"] == field
        assert 'z\\"], \\"action\\": \\"release\\"' in error["message"] and "double quote" in error["message"]
    assert nothing_taken(served, before)
    assert events(served.site, "export.released") == []


HOSTILE_NAMES = [  # (name on disk, the problem named, how the error shows it)
    (b'a"b.csv', "double quote", 'a\\"b.csv'),
    (b"a\\b.csv", "backslash", "a\\\\b.csv"),
    (b"a\nb.csv", "control character", "a\\u000ab.csv"),
    (b"a\tb.csv", "control character", "a\\u0009b.csv"),
    (b"a\x7fb.csv", "control character", "a\\u007fb.csv"),
    ("a\x85b.csv".encode(), "control character", "a\\u0085b.csv"),
    ("fichier\u202evsc.exe.csv".encode(), "direction override", "fichier\\u202evsc.exe.csv"),
    ("a\u200bb.csv".encode(), "invisible formatting", "a\\u200bb.csv"),
    (b"a\xffb.csv", "undecodable", "a\\xffb.csv"),
]


def test_names_that_are_not_plain_printable_text_are_refused(airlock: Served) -> None:
    """Asked for by name or found in a folder asked for: refused, named escaped, nothing kept.
    One bubble for every name (each in its own folder)."""
    served = airlock
    bubble = bubble_of(served, "projet-x")
    box = outbox(served, bubble)
    for i, (name, _, _) in enumerate(HOSTILE_NAMES):
        (box / f"dossier{i}").mkdir()
        with open(os.path.join(os.fsencode(box / f"dossier{i}"), name), "w") as handle:
            handle.write("niveau,effectif\n6e,25\n5e,31\n")
    (box / "l'effectif été.csv").write_text("niveau,effectif\n6e,25\n5e,31\n")  # an apostrophe, accents: fine
    before = set(served.site.platform.exports.quarantine.digests())
    for i, (name, problem, echo) in enumerate(HOSTILE_NAMES):
        for path in (f"dossier{i}/" + os.fsdecode(name), f"dossier{i}"):
            answer = request_answer(served, bubble, [path])
            assert answer.status_code == 422, (name, answer.text)
            message = answer.json()["error"]["message"]
            assert not any(c in message for c in ("\n", "\t", "\x7f", "\x85", "\u202e", "\u200b", "\ufffd")), name
            if path != f"dossier{i}" and (name == b"a\xffb.csv" or answer.json()["error"].get("field") == "paths.0"):
                continue  # the body's own check (a lone surrogate, a control character) refuses it first
            assert problem in message and echo in message, (name, message)
    too_long = request_answer(served, bubble, ["é" * 125 + "abcd.csv"])  # 258 bytes: no file system holds it
    assert too_long.status_code == 422 and "is 258 bytes long" in too_long.json()["error"]["message"]
    assert nothing_taken(served, before)
    fine = request_answer(served, bubble, ["l'effectif été.csv"])
    assert fine.status_code == 202 and fine.json()["files"][0]["path"] == "l'effectif été.csv"


def test_a_recipe_that_is_a_link_gets_the_same_answer_wherever_it_points(airlock: Served) -> None:
    """`t.csv.bulle.json` a link to a host file that exists or to one that does not: the
    controller (root) never follows it, so the answer cannot tell one from the other."""
    served, site = airlock, airlock.site
    bubble = bubble_of(served, "projet-x")
    box = outbox(served, bubble)
    (box / "t.csv").write_text("niveau,effectif\n6e,25\n5e,31\n")
    before = set(site.platform.exports.quarantine.digests())
    answers = []
    for target in (site.platform.settings.home / "master.key", site.platform.settings.home / "absent.key"):
        (box / "t.csv.bulle.json").unlink(missing_ok=True)
        os.symlink(target, box / "t.csv.bulle.json")
        answer = request_answer(served, bubble, ["t.csv"])
        answers.append((answer.status_code, answer.json()))
    assert answers[0] == answers[1], answers
    status, body = answers[0]
    assert status == 422 and "t.csv.bulle.json' is a symbolic link" in body["error"]["message"]
    assert str(site.platform.settings.home) not in body["error"]["message"]
    assert nothing_taken(served, before)
    (box / "t.csv.bulle.json").unlink()
    (box / "t.csv.bulle.json").mkdir()  # not a file either: refused, not walked into
    assert request_answer(served, bubble, ["t.csv"]).json()["error"]["message"].endswith("is not a regular file")
    (box / "t.csv.bulle.json").rmdir()
    assert request_answer(served, bubble, ["t.csv"]).status_code == 202  # no recipe: the table alone


def test_folders_nested_too_deep_are_refused(airlock: Served) -> None:
    served = airlock
    bubble = bubble_of(served, "projet-x")
    deep = outbox(served, bubble) / "profond"
    path = deep
    for level in range(70):
        path = path / f"n{level}"
    path.mkdir(parents=True)
    (path / "t.csv").write_text("niveau,effectif\n6e,25\n")
    before = set(served.site.platform.exports.quarantine.digests())
    answer = request_answer(served, bubble, ["profond"])
    assert answer.status_code == 422 and "nested more than 64 deep" in answer.json()["error"]["message"]
    assert nothing_taken(served, before)


def test_a_request_recorded_before_the_name_rule_is_refused_by_the_policy_layer(airlock: Served) -> None:
    """Behind the intake rule, the engine layer on its own: a request whose file carries the
    forged name (as one recorded before the rule, checked again at start) holds a disclosive
    table; the policy engine's answer has the forged key twice, and that is a refusal with
    `policy_error`, not a release."""
    served, exports = airlock, airlock.site.platform.exports
    bubble = bubble_of(served, "projet-x")
    rows = "ine,level\n" + "".join(f"99{n:09d}A,6e\n" for n in range(30))
    (outbox(served, bubble) / "lignes.csv").write_text(rows)
    with exports._store_lock:
        [taken], _ = exports.quarantine.take(outbox(served, bubble), ["lignes.csv"], max_bytes=1 << 20, max_files=10)
        principal = served.site.platform.authenticate(served.site.tokens["bruno"])
        body = ExportBody(bubble=bubble, paths=[FORGED], justification="x")
        created = exports._record_request(principal, body, "projet-x", [Taken(FORGED, taken.size, taken.sha256, True)])
    assert exports.wait(created["id"]) == "refused"
    with served.site.platform.sessions() as session:
        row = session.get(ExportRequest, created["id"])
        assert row.decision["action"] == "refuse" and row.manifest is None and row.released_at is None
        assert row.decision["reasons"] == ["policy_error: the engine's answer is not strict JSON"]
        decision_id = row.decision_id
    record = served.http.get(f"/api/v1/decisions/{decision_id}", headers=served.headers("david")).json()
    assert record["error"].startswith('key "action" appears twice')
    assert events(served.site, "export.released") == []


# -- what may no longer leave: revoked grants, retired sources, ended projects ---------------------
def in_review(served: Served, bubble_id: str, name: str) -> str:
    (outbox(served, bubble_id) / name).write_text("niveau,effectif\n6e,25\n5e,31\n")
    request = ask(served, bubble_id, [name])
    assert request["state"] == "in_review", request
    return request["id"]


def vote(served: Served, request_id: str, user: str, choice: str = "approve") -> httpx.Response:
    return served.http.post(f"/api/v1/exports/{request_id}/votes", headers=served.headers(user),
                            json={"vote": choice, "comment": "" if choice == "approve" else "non"})


def grant_of(served: Served, project_id: str = "projet-x") -> str:
    [grant] = served.http.get("/api/v1/grants", params={"project": project_id}, headers=served.headers("bruno")).json()
    return grant["id"]


def nothing_released(served: Served, request_id: str) -> None:
    with served.site.platform.sessions() as session:
        row = session.get(ExportRequest, request_id)
        assert row.state == "cancelled" and row.manifest is None and row.released_at is None
    assert served.http.get(f"/api/v1/exports/{request_id}/manifest", headers=served.headers("bruno")).status_code == 409
    assert not [e for e in events(served.site, "export.released") if e["subject"] == request_id]


def test_an_export_in_review_is_cancelled_when_its_grant_is_revoked(airlock: Served) -> None:
    """The reported case: a request in review, its grant revoked, its bubble deleted, the
    reviewers approve: nothing leaves."""
    served = airlock
    bubble = bubble_of(served, "projet-x")
    rid = in_review(served, bubble, "t.csv")
    assert vote(served, rid, "chloe").json()["state"] == "in_review"
    revoked = served.http.post(f"/api/v1/grants/{grant_of(served)}/revoke", headers=served.headers("alice"),
                               json={"reason": "fin de la convention"})
    assert revoked.status_code == 200
    cancelled = served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("bruno")).json()
    assert cancelled["state"] == "cancelled" and cancelled["history"][-1]["note"].startswith("grant_revoked: ")
    [event] = [e for e in events(served.site, "export.cancelled") if e["subject"] == rid]
    assert event["actor"] == "system:airlock" and event["details"]["cause"] == "grant_revoked"
    assert served.http.delete(f"/api/v1/bubbles/{bubble}", headers=served.headers("bruno")).status_code == 200
    late = vote(served, rid, "rita")
    assert late.status_code == 409, late.text
    nothing_released(served, rid)
    assert served.http.get(f"/api/v1/exports/{rid}/files/t.csv", headers=served.headers("chloe")).status_code == 403


def test_a_vote_or_a_check_after_a_revocation_cancels_in_its_own_transaction(airlock: Served) -> None:
    """Without the airlock's pass (as if the revocation committed a moment before it ran), the
    transitions themselves find the revocation: the last vote, and the end of a check."""
    served, exports = airlock, airlock.site.platform.exports
    bubble = bubble_of(served, "projet-x")
    voted = in_review(served, bubble, "t.csv")
    assert vote(served, voted, "chloe").json()["state"] == "in_review"
    exports.close()  # the checker waits: the next request stays submitted
    checked = ask(served, bubble, ["t.csv"], wait=False)["id"]
    exports.cancel_closed = lambda: []  # the pass does not run
    assert served.http.post(f"/api/v1/grants/{grant_of(served)}/revoke", headers=served.headers("alice"),
                            json={"reason": "retrait"}).status_code == 200
    late = vote(served, voted, "rita")
    assert late.status_code == 409 and late.json()["error"]["code"] == "cancelled", late.text
    assert "grant_revoked" in late.json()["error"]["message"]
    nothing_released(served, voted)
    exports.check(checked)
    nothing_released(served, checked)
    cancelled = {e["subject"]: e["details"]["cause"] for e in events(served.site, "export.cancelled")}
    assert cancelled == {voted: "grant_revoked", checked: "grant_revoked"}
    assert not [e for e in events(served.site, "export.voted") if e["actor"] == "user:rita"]


def test_retiring_the_source_cancels_the_exports_that_hold_its_data(airlock: Served) -> None:
    served, exports = airlock, airlock.site.platform.exports
    bubble = bubble_of(served, "projet-x")
    first, second = in_review(served, bubble, "a.csv"), in_review(served, bubble, "b.csv")
    retired = served.http.post(f"/api/v1/sources/{PUPILS}/retire", headers=served.headers("alice"),
                               json={"reason": "base remplacée"})
    assert retired.status_code == 200, retired.text
    assert exports.cancel_closed() == []  # the retirement cancelled both at once
    assert vote(served, first, "chloe").status_code == 409
    for rid in (first, second):
        nothing_released(served, rid)
    assert {e["details"]["cause"] for e in events(served.site, "export.cancelled")} == {"source_retired"}
    assert request_answer(served, bubble, ["a.csv"]).json()["error"]["code"] == "source_retired"


def test_the_end_of_the_project_cancels_its_exports(airlock: Served) -> None:
    served, site = airlock, airlock.site
    bubble = bubble_of(served, "projet-x")
    rid = in_review(served, bubble, "t.csv")
    yesterday = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    with site.platform.sessions() as session, session.begin():  # the calendar moves on
        session.get(Project, "projet-x").end_date = yesterday
    assert site.platform.exports.cancel_closed() == [rid]
    nothing_released(served, rid)
    [event] = events(site, "export.cancelled")
    assert event["details"]["cause"] == "project_ended" and yesterday in event["details"]["reason"]
    assert vote(served, rid, "chloe").status_code == 409


def test_votes_racing_a_revocation_never_release_after_it(airlock: Served) -> None:
    """Final votes on several requests and the grant's revocation at once: each request is
    released before the revocation (its release committed first) or cancelled, never released
    after it."""
    served = airlock
    bubble = bubble_of(served, "projet-x")
    requests = [in_review(served, bubble, f"t{i}.csv") for i in range(4)]
    for rid in requests:
        assert vote(served, rid, "chloe").json()["state"] == "in_review"
    grant = grant_of(served)
    start = threading.Barrier(len(requests) + 1)
    answers: dict[str, int] = {}

    def final_vote(rid: str) -> None:
        start.wait()
        answers[rid] = vote(served, rid, "rita").status_code

    def revoke() -> None:
        start.wait()
        answers["revoke"] = served.http.post(f"/api/v1/grants/{grant}/revoke", headers=served.headers("alice"),
                                             json={"reason": "retrait"}).status_code

    threads = [threading.Thread(target=final_vote, args=(rid,)) for rid in requests]
    threads.append(threading.Thread(target=revoke))
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers["revoke"] == 200
    with served.site.platform.sessions() as session:
        seq = {(r.action, r.subject_id, r.actor): r.seq for r in session.query(AuditEvent)}
        revoked_at = seq[("grant.revoked", grant, "user:alice")]
        for rid in requests:
            row = session.get(ExportRequest, rid)
            if row.state == "released":
                assert answers[rid] == 200 and row.manifest is not None
                assert seq[("export.voted", rid, "user:rita")] < revoked_at
            else:
                assert row.state == "cancelled" and answers[rid] == 409 and row.manifest is None
                assert seq[("export.cancelled", rid, "system:airlock")] > revoked_at


# -- four eyes on exports --------------------------------------------------------------------------
def test_nobody_in_the_project_votes_on_its_exports_whatever_their_roles(airlock: Served) -> None:
    """A member holding every reviewing role is still a member; one who left the project after the
    files were checked was a member when the policy saw them."""
    served, site = airlock, airlock.site
    _, site.tokens["pia"] = accounts.add_user(site.platform, "test", "pia", ["researcher", "reviewer", "provider"],
                                              "demo-rennes")
    members = [{"username": "bruno", "role": "owner"}, {"username": "marc", "role": "member"},
               {"username": "pia", "role": "member"}]
    assert served.http.patch("/api/v1/projects/projet-x", json={"members": members},
                             headers=served.headers("bruno")).status_code == 200
    bubble = bubble_of(served, "projet-x")
    rid = in_review(served, bubble, "t.csv")
    refused = vote(served, rid, "pia")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "member_review"
    assert served.http.patch("/api/v1/projects/projet-x", json={"members": members[:1]},
                             headers=served.headers("bruno")).status_code == 200  # marc and pia leave
    for user in ("marc", "pia"):
        assert vote(served, rid, user).status_code == 404, user  # neither a member now nor a reviewer of it
    assert served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("marc")).status_code == 404
    assert served.http.get(f"/api/v1/exports/{rid}", headers=served.headers("bruno")).json()["votes_in"] == 0
    assert vote(served, rid, "chloe").json()["votes_in"] == 1  # a reviewer from outside
