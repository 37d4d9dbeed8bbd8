"""The Rego policies under regopy: every `test_*` rule of policies/*_test.rego (one pytest case
each, so a failing Rego test is named), then decisions on the real catalog examples for each row
of the default table in policies/README.md, garbage input, and broken policy text."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from regopy import Input, Interpreter, RegoError

from conftest import ROOT, example
from controller.decisions import MODELS
from controller.policy import strict_json

POLICIES = ROOT / "policies"
ENTRYPOINTS = {"access": "data.bulles.access.decision", "bubble": "data.bulles.bubble.profile",
               "export": "data.bulles.export.decision"}
ACCESS_KEYS = {"status", "mode", "parameters", "expiry", "reasons", "reviewers", "notify"}
REASON = re.compile(r"^[a-z_]+: \S")


def reference_data() -> dict[str, Any]:
    return {"bulles": {"reference": {path.stem: json.loads(path.read_text(encoding="utf-8"))
                                     for path in sorted((POLICIES / "data").glob("*.json"))}}}


def load(modules: dict[str, str] | None = None) -> Interpreter:
    interpreter = Interpreter()
    texts = modules if modules is not None else {p.name: p.read_text(encoding="utf-8")
                                                  for p in sorted(POLICIES.glob("*.rego"))}
    for name, text in texts.items():
        interpreter.add_module(name, text)
    interpreter.add_data_json(json.dumps(reference_data()))
    return interpreter


def value(output: Any) -> Any:
    """The query's value, read strictly from regopy's text as the engine reads it; None when
    undefined (regopy also reports `false` as undefined)."""
    assert output.ok(), f"evaluation error: {output}"
    if str(output) == "undefined":
        return None
    expressions = strict_json(str(output)).get("expressions")
    return expressions[0] if expressions else None


def rego_tests() -> list[tuple[str, str]]:
    found = []
    for path in sorted(POLICIES.glob("*_test.rego")):
        text = path.read_text(encoding="utf-8")
        package = re.search(r"^package\s+([\w.]+)", text, re.M).group(1)
        names = re.findall(r"^(test_\w+)\s+if\b", text, re.M)
        assert len(names) == len(set(names)), f"{path.name}: a test name is used twice"
        found += [(package, name) for name in names]
    return found


REGO_TESTS = rego_tests()


@pytest.fixture(scope="module")
def interpreter() -> Interpreter:
    return load()


@pytest.mark.parametrize("package,rule", REGO_TESTS, ids=[f"{p.rsplit('.', 1)[1]}.{r}" for p, r in REGO_TESTS])
def test_rego(interpreter: Interpreter, package: str, rule: str) -> None:
    assert value(interpreter.query(f"data.{package}.{rule}")) is True


def test_every_policy_has_its_tests() -> None:
    packages = {p for p, _ in REGO_TESTS}
    assert packages == {"bulles.access_test", "bulles.bubble_test", "bulles.export_test"}
    for package in packages:
        assert sum(1 for p, _ in REGO_TESTS if p == package) >= 10


# -- decisions on the real catalog examples ---------------------------------------------------
NOW = "2026-11-22"
PROJECT = {"id": "absenteisme-college", "purpose": "research", "legal_basis": "public_task",
           "dpia_reference": "AIPD-2026-01", "start_date": "2026-01-01", "end_date": "2027-06-30",
           "members": [{"username": "bruno", "role": "owner"}]}
PUPILS = example("eleves-synthetiques")
IPS = example("fr-en-ips-colleges-ap2022")
JUSTIFICATION = "Appariement individuel des absences et des résultats, validé par le comité d'éthique"


def decide(interpreter: Interpreter, package: str, document: Any) -> dict[str, Any]:
    interpreter.set_input(Input(document))
    result = value(interpreter.query(ENTRYPOINTS[package]))
    assert isinstance(result, dict), f"{package}: no decision for {document!r}"
    assert all(REASON.match(r) for r in result["reasons"]), result["reasons"]
    MODELS[package].model_validate(result)  # every answer of the shipped policies fits its model
    return result


def access(interpreter: Interpreter, source: dict, columns: list[str] | None = None, mode: str | None = None,
           justification: str | None = None, now: str = NOW, **project: Any) -> dict[str, Any]:
    document = {"now": now, "project": {**PROJECT, **project}, "source": source,
                "request": {"columns": columns, "justification": justification, "mode": mode, "requester": "bruno"}}
    decision = decide(interpreter, "access", document)
    assert set(decision) == ACCESS_KEYS
    return decision


def codes(decision: dict[str, Any]) -> set[str]:
    return {r.split(":", 1)[0] for r in decision["reasons"]}


def test_open_data_is_granted_raw(interpreter: Interpreter) -> None:
    d = access(interpreter, IPS)
    assert (d["status"], d["mode"], d["expiry"], d["reviewers"], d["notify"]) == ("granted", "raw", "2027-06-30", [], [])
    assert d["parameters"]["columns"] == [c["name"] for c in IPS["schema"]]
    assert codes(d) == {"open_source", "expiry"}


def test_open_data_in_a_more_closed_mode_on_request(interpreter: Interpreter) -> None:
    d = access(interpreter, IPS, ["Académie", "IPS"], mode="aggregated")
    assert (d["status"], d["mode"]) == ("granted", "aggregated")


def test_internal_data_is_minimised_and_the_provider_notified(interpreter: Interpreter) -> None:
    internal = {**PUPILS, "sensitivity": "internal", "access_modes": ["minimised", "aggregated"]}
    d = access(interpreter, internal, ["ine", "uai", "level"])
    assert (d["status"], d["mode"], d["notify"]) == ("granted", "minimised", ["demo-rennes"])
    assert d["parameters"]["columns"] == ["uai", "level"] and d["parameters"]["dropped"] == ["ine"]


def test_personal_data_is_pseudonymised_pending_the_providers_review(interpreter: Interpreter) -> None:
    d = access(interpreter, PUPILS, ["ine", "sex", "level", "grade_maths"])
    assert (d["status"], d["mode"]) == ("pending_review", "pseudonymised")
    assert d["parameters"] == {"columns": ["ine", "sex", "level", "grade_maths"], "pseudonymised": ["ine"],
                               "generalised": [], "dropped": [], "k": 5, "threshold": 10}
    assert d["reviewers"] == [{"role": "provider", "organisation": "demo-rennes", "count": 1}]
    assert d["expiry"] == "2027-06-30"  # before now + P5Y and the 365-day maximum
    assert "personal_data_review" in codes(d)


def test_personal_data_generalised_on_request(interpreter: Interpreter) -> None:
    d = access(interpreter, PUPILS, ["ine", "birth_date", "commune", "absences_half_days", "level"], mode="generalised")
    assert (d["status"], d["mode"]) == ("pending_review", "generalised")
    assert d["parameters"]["generalised"] == ["birth_date", "commune", "absences_half_days"]
    assert d["parameters"]["dropped"] == ["ine"] and "ine" not in d["parameters"]["columns"]


def test_raw_personal_data_needs_the_provider_and_a_justification(interpreter: Interpreter) -> None:
    d = access(interpreter, PUPILS, ["ine", "sex"], mode="raw", justification=JUSTIFICATION)
    assert d["mode"] == "pseudonymised" and "mode_not_allowed_by_provider" in codes(d)  # the example allows no raw
    raw_allowed = {**PUPILS, "access_modes": ["raw", *PUPILS["access_modes"]]}
    d = access(interpreter, raw_allowed, ["ine", "sex"], mode="raw", justification=JUSTIFICATION)
    assert (d["status"], d["mode"]) == ("pending_review", "raw") and "raw_access_review" in codes(d)
    d = access(interpreter, raw_allowed, ["ine", "sex"], mode="raw", justification="thèse")
    assert (d["status"], d["mode"]) == ("pending_review", "pseudonymised") and "raw_needs_justification" in codes(d)


@pytest.mark.parametrize("project,code", [
    ({"purpose": "teaching"}, "purpose_not_allowed"),
    ({"legal_basis": None}, "no_legal_basis"),
    ({"dpia_reference": None}, "no_dpia"),
])
def test_personal_data_without_grounds_gets_aggregated_at_once(interpreter: Interpreter, project: dict, code: str) -> None:
    d = access(interpreter, PUPILS, None, **project)
    assert (d["status"], d["mode"], d["reviewers"]) == ("granted", "aggregated", [])
    assert "ine" not in d["parameters"]["columns"] and d["parameters"]["dropped"] == ["ine"]
    assert {code, "summary_mode_granted"} <= codes(d)


def test_personal_data_without_grounds_and_no_summary_mode_is_denied(interpreter: Interpreter) -> None:
    closed = {**PUPILS, "access_modes": ["pseudonymised", "generalised"]}
    d = access(interpreter, closed, ["sex"], purpose="teaching")
    assert (d["status"], d["mode"], d["expiry"]) == ("denied", None, None)
    assert {"mode_not_allowed_by_provider", "purpose_not_allowed"} <= codes(d)
    synthetic_only = {**PUPILS, "access_modes": ["pseudonymised", "synthetic"]}
    assert access(interpreter, synthetic_only, ["sex"], purpose="teaching")["mode"] == "synthetic"


def test_compatible_purposes(interpreter: Interpreter) -> None:
    d = access(interpreter, {**PUPILS, "allowed_purposes": ["public_policy_evaluation"]}, ["ine"], purpose="statistics")
    assert d["mode"] == "pseudonymised" and "compatible_purpose" in codes(d)


def test_sensitive_data(interpreter: Interpreter) -> None:
    summary_only = {**PUPILS, "sensitivity": "sensitive", "access_modes": ["aggregated", "synthetic"]}
    d = access(interpreter, summary_only, ["ine", "disability_plan", "level"], mode="pseudonymised")
    assert (d["status"], d["mode"]) == ("granted", "aggregated")
    assert {"sensitive_data", "more_closed_mode_offered"} <= codes(d)
    opened = {**PUPILS, "sensitivity": "sensitive"}  # the example allows pseudonymised and generalised
    d = access(interpreter, opened, ["ine", "disability_plan", "level"])
    assert (d["status"], d["mode"]) == ("pending_review", "pseudonymised")
    assert d["reviewers"] == [{"role": "provider", "organisation": "demo-rennes", "count": 2}]


def test_expiry_is_the_earliest_of_project_end_retention_and_maximum(interpreter: Interpreter) -> None:
    assert access(interpreter, {**PUPILS, "retention": "P6W"}, ["sex"])["expiry"] == "2027-01-03"
    assert access(interpreter, {**PUPILS, "retention": "P18M"}, ["sex"], end_date="2030-01-01")["expiry"] == "2027-11-22"
    assert access(interpreter, PUPILS, ["sex"], now="2027-06-30")["expiry"] == "2027-06-30"
    d = access(interpreter, PUPILS, ["sex"], now="2027-07-01")
    assert d["status"] == "denied" and codes(d) >= {"project_ended"}


def test_unknown_columns_and_strangers_are_denied(interpreter: Interpreter) -> None:
    d = access(interpreter, PUPILS, ["sex", "shoe_size"])
    assert d["status"] == "denied" and "unknown_column" in codes(d) and "shoe_size" in " ".join(d["reasons"])
    d = decide(interpreter, "access", {"now": NOW, "project": PROJECT, "source": IPS,
                                       "request": {"columns": ["IPS"], "requester": "mallory"}})
    assert d["status"] == "denied" and codes(d) == {"not_a_member"}


@pytest.mark.parametrize("document", [
    {},
    [],
    "access please",
    {"now": NOW, "project": PROJECT, "source": {k: v for k, v in PUPILS.items() if k != "schema"},
     "request": {"columns": ["sex"], "requester": "bruno"}},
    {"now": NOW, "project": PROJECT, "source": {**PUPILS, "schema": "ine"}, "request": {"requester": "bruno"}},
    {"now": NOW, "project": PROJECT, "source": {**PUPILS, "sensitivity": None}, "request": {"requester": "bruno"}},
    {"now": NOW, "project": {"members": "bruno"}, "source": IPS, "request": {"requester": "bruno"}},
    {"now": 20261122, "project": PROJECT, "source": IPS, "request": {"requester": "bruno", "columns": "IPS"}},
    {"now": NOW, "project": PROJECT, "source": IPS, "request": {"requester": "bruno", "mode": 3, "justification": 4}},
], ids=["empty", "list", "string", "no-schema", "bad-schema", "no-sensitivity", "bad-project", "bad-types",
        "bad-mode"])
def test_garbage_is_denied_with_a_reason_never_undefined(interpreter: Interpreter, document: Any) -> None:
    d = decide(interpreter, "access", document)
    assert set(d) == ACCESS_KEYS
    assert (d["status"], d["mode"], d["expiry"]) == ("denied", None, None) and d["reasons"]
    assert not any(r.startswith("policy_error") for r in d["reasons"])


@pytest.mark.parametrize("document", [{}, [], "let me out", None, {"project": "p", "grants": {}, "files": 3}])
def test_garbage_never_opens_a_bubble_nor_releases_a_file(interpreter: Interpreter, document: Any) -> None:
    bubble = decide(interpreter, "bubble", document)
    assert (bubble["allowed"], bubble["network"], bubble["expires"]) == (False, "none", None) and bubble["reasons"]
    export = decide(interpreter, "export", document)
    assert (export["action"], export["reviewers"]) == ("refuse", 0) and export["reasons"]


def test_the_decision_survives_missing_reference_data() -> None:
    interpreter = Interpreter()
    for path in sorted(POLICIES.glob("*.rego")):
        interpreter.add_module(path.name, path.read_text(encoding="utf-8"))
    interpreter.add_data_json(json.dumps({"bulles": {"reference": {}}}))
    d = access(interpreter, IPS, ["IPS"])
    assert d["status"] == "denied" and "reference_data_missing" in codes(d)
    assert decide(interpreter, "bubble", {"now": NOW, "project": PROJECT, "grants": []})["allowed"] is False


# -- bubbles and exports on realistic input ----------------------------------------------------
def test_bubble_profiles(interpreter: Interpreter) -> None:
    grant = lambda source, sensitivity, expiry="2027-06-30": {  # noqa: E731
        "source": source["id"], "sensitivity": sensitivity, "mode": "raw", "expiry": expiry}
    open_bubble = decide(interpreter, "bubble", {"now": NOW, "project": PROJECT, "grants": [grant(IPS, "open")],
                                                 "requested": {"cpu": 64, "memory_mb": 2048}})
    assert open_bubble["allowed"] and open_bubble["network"] == "open"
    assert (open_bubble["cpu"], open_bubble["memory_mb"], open_bubble["disk_mb"], open_bubble["lifetime_hours"]) == (
        8, 2048, 10240, 8)
    closed = decide(interpreter, "bubble", {"now": NOW, "project": PROJECT, "requested": {"lifetime_hours": 72},
                                            "grants": [grant(IPS, "open"), grant(PUPILS, "personal", "2026-11-23")]})
    assert closed["allowed"] and closed["network"] == "none" and closed["expires"] == "2026-11-23"
    ended = decide(interpreter, "bubble", {"now": "2027-07-01", "project": PROJECT, "grants": []})
    assert ended["allowed"] is False and any(r.startswith("project_ended") for r in ended["reasons"])


EXPORT_KEYS = {"action", "reviewers", "organisations", "reasons"}


def export(interpreter: Interpreter, document: Any) -> dict[str, Any]:
    decision = decide(interpreter, "export", document)
    assert set(decision) == EXPORT_KEYS
    if decision["action"] != "review":
        assert decision["organisations"] == []
    return decision


def test_export_decisions(interpreter: Interpreter) -> None:
    table = {"path": "outbox/absences_par_niveau.csv", "type": "csv", "size": 2048, "sha256": "ab" * 32}
    passed = [{"file": table["path"], "check": "min_cell_count", "severity": "pass"}]
    base = {"project": PROJECT, "requester": "bruno", "files": [table], "findings": passed}
    grant = lambda source, mode, sensitivity=None: {  # noqa: E731
        "source": source["id"], "sensitivity": sensitivity or source["sensitivity"], "mode": mode,
        "publisher": source["publisher"]}
    open_grant, personal = grant(IPS, "raw"), grant(PUPILS, "pseudonymised")
    assert export(interpreter, {**base, "grants": [open_grant]})["action"] == "release"
    reviewed = export(interpreter, {**base, "grants": [open_grant, personal]})
    assert (reviewed["action"], reviewed["reviewers"], reviewed["organisations"]) == ("review", 2, [])
    failed = [{"file": table["path"], "check": "min_cell_count", "severity": "fail"}]
    assert export(interpreter, {**base, "grants": [open_grant], "findings": failed})["action"] == "refuse"
    binary = {"path": "outbox/model.pkl", "type": "pkl", "size": 10}
    assert export(interpreter, {**base, "grants": [open_grant], "files": [binary]})["action"] == "refuse"
    assert export(interpreter, {**base, "grants": [open_grant], "files": []})["action"] == "refuse"
    for document in ({}, [], "let me out", None, {"project": "p", "grants": {}, "files": 3}):
        assert export(interpreter, document)["action"] == "refuse"


def test_export_of_tables_from_summary_modes_and_sensitive_sources(interpreter: Interpreter) -> None:
    """A study of absences by level from the pupils' file: aggregated, the checked tables leave at
    once; pseudonymised, two checkers review them; when the file is sensitive (disability plans),
    its provider organisation must be among them, whatever the access mode, unless released."""
    tables = [{"path": f"outbox/absences_{name}.csv", "type": "csv", "size": 4096} for name in ("niveau", "ips")]
    checks = [{"file": t["path"], "check": check, "severity": "pass"} for t in tables
              for check in ("min_cell_count", "dominance")]
    base = {"project": PROJECT, "requester": "bruno", "files": tables, "findings": checks}
    ips = {"source": IPS["id"], "sensitivity": "open", "mode": "raw", "publisher": IPS["publisher"]}
    pupils = {"source": PUPILS["id"], "sensitivity": "personal", "mode": "aggregated", "publisher": PUPILS["publisher"]}
    d = export(interpreter, {**base, "grants": [ips, pupils]})
    assert (d["action"], d["reviewers"]) == ("release", 0) and codes(d) == {"tables_passed"}
    d = export(interpreter, {**base, "grants": [ips, {**pupils, "mode": "pseudonymised"}]})
    assert (d["action"], d["reviewers"], d["organisations"]) == ("review", 2, [])
    assert codes(d) == {"review_required", "personal_data_review"}
    sensitive = {**pupils, "sensitivity": "sensitive", "mode": "generalised"}
    d = export(interpreter, {**base, "grants": [ips, sensitive]})
    assert (d["action"], d["reviewers"], d["organisations"]) == ("review", 2, ["demo-rennes"])
    assert "provider_review: organisation 'demo-rennes' must be among the reviewers" in d["reasons"]
    figure = {"path": "outbox/absences.png", "type": "png", "size": 30000}
    d = export(interpreter, {**base, "files": [*tables, figure], "grants": [ips, {**sensitive, "mode": "aggregated"}]})
    assert (d["action"], d["organisations"]) == ("review", ["demo-rennes"]) and "not_a_table" in codes(d)
    d = export(interpreter, {**base, "grants": [ips, {k: v for k, v in sensitive.items() if k != "publisher"}]})
    assert (d["action"], d["reviewers"], d["organisations"]) == ("review", 2, []) and "unknown_sources" in codes(d)


# -- broken policy text ------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "package bulles.access\nimport rego.v1\ndecision := {\n",
    "package bulles.access\nimport rego.v1\ndecision if {\n",
    "package bulles.access\nimport rego.v1\ndecision := {\"status\": } \n",
])
def test_a_syntax_error_raises(text: str) -> None:
    modules = {p.name: p.read_text(encoding="utf-8") for p in sorted(POLICIES.glob("*.rego"))}
    modules["access.rego"] = text
    with pytest.raises(RegoError):
        load(modules).query(ENTRYPOINTS["access"])



CHILD = r"""
import json, pathlib, re, sys
import pyarrow  # loaded first, as in the controller
from regopy import Input, Interpreter

policies, given = pathlib.Path(sys.argv[1]), json.loads(pathlib.Path(sys.argv[2]).read_text())
interpreter = Interpreter()
for path in sorted(policies.glob("*.rego")):
    interpreter.add_module(path.name, path.read_text(encoding="utf-8"))
interpreter.add_data_json(json.dumps(given["data"]))
ran = 0
for path in sorted(policies.glob("*_test.rego")):
    text = path.read_text(encoding="utf-8")
    package = re.search(r"^package\s+([\w.]+)", text, re.M).group(1)
    for rule in re.findall(r"^(test_\w+)\s+if\b", text, re.M):
        assert interpreter.query(f"data.{package}.{rule}").results[0].expressions[0] is True, rule
        ran += 1
interpreter.set_input(Input(given["input"]))
print(ran, interpreter.query("data.bulles.access.decision").results[0].expressions[0]["expiry"])
"""


def test_decisions_survive_pyarrow_in_the_same_process(tmp_path: Path) -> None:
    """The controller imports pyarrow; with it loaded, regopy aborts the process in time.format
    with a time zone (and in time.weekday). The policies avoid those builtins: prove it in a
    child process, whose crash cannot take pytest down."""
    import subprocess
    import sys

    given = tmp_path / "given.json"
    given.write_text(json.dumps({"data": reference_data(), "input": {
        "now": NOW, "project": PROJECT, "source": PUPILS, "request": {"columns": ["ine"], "requester": "bruno"}}}))
    done = subprocess.run([sys.executable, "-c", CHILD, str(POLICIES), str(given)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == [str(len(REGO_TESTS)), "2027-06-30"]
