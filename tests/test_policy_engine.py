"""The policy engines: revisions, reloading, refusing bad policies, errors as denials, and the
OPA engine's client code against an OPA-compatible HTTP server on loopback.

No OPA binary can be installed on these machines: `FakeOpaServer` below is a stand-in, named
as such, that speaks OPA's REST API (PUT /v1/policies, PUT and POST /v1/data) and evaluates
with regopy. It tests our client code and our failure handling, not OPA itself; when an `opa`
binary is on PATH, the policy tests also run under `opa test`.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from conftest import example, free_port
from controller.cli import app
from controller.decisions import ExportDecision
from controller.policy import (
    POLICY_DIR,
    EmbeddedEngine,
    MalformedAnswer,
    OpaEngine,
    PolicyLoadError,
    read_policies,
    run_tests,
    strict_json,
)

INPUT = {
    "now": "2026-11-22",
    "project": {"id": "p", "purpose": "research", "legal_basis": "public_task", "dpia_reference": "AIPD-1",
                "start_date": "2026-01-01", "end_date": "2027-06-30", "members": [{"username": "bruno", "role": "owner"}]},
    "source": example("fr-en-ips-colleges-ap2022"),
    "request": {"columns": ["UAI", "IPS"], "justification": "étude", "mode": None, "requester": "bruno"},
}


@pytest.fixture
def policy_copy(tmp_path: Path) -> Path:
    target = tmp_path / "policies"
    shutil.copytree(POLICY_DIR, target)
    return target


def test_the_shipped_policies_pass_their_own_tests() -> None:
    report = run_tests()
    assert report.ok, report.failed
    assert len(report.passed) >= 20


@pytest.mark.skipif(shutil.which("opa") is None, reason="no opa binary on PATH")
def test_the_shipped_policies_pass_opa_test(tmp_path: Path) -> None:
    policies = read_policies()
    for name, text in {**policies.modules, **policies.tests}.items():
        (tmp_path / name).write_text(text)
    (tmp_path / "bulles" / "reference").mkdir(parents=True)
    (tmp_path / "bulles" / "reference" / "data.json").write_text(json.dumps(policies.data["bulles"]["reference"]))
    result = subprocess.run(["opa", "test", str(tmp_path), "--fail-on-empty"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_decisions_carry_an_id_the_revision_and_the_input_hash() -> None:
    engine = EmbeddedEngine(poll_seconds=0)
    first, second = engine.decide("access", INPUT), engine.decide("access", INPUT)
    assert first.result["status"] == "granted" and first.result["mode"] == "raw"
    assert first.id != second.id and first.input_sha256 == second.input_sha256
    assert first.revision == read_policies().revision and len(first.revision) == 64


def test_a_changed_file_is_a_new_revision_and_is_logged(policy_copy: Path) -> None:
    events: list[tuple[str, dict]] = []
    engine = EmbeddedEngine(policy_copy, on_event=lambda a, d: events.append((a, d)), poll_seconds=0.05)
    try:
        before = engine.revision
        with (policy_copy / "access.rego").open("a") as handle:
            handle.write("\n# a comment is a change too\n")
        deadline = time.monotonic() + 10
        # the revision switches before the hook runs: wait for the event, not for the revision
        while not events and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.revision != before
        assert events[-1][0] == "policy.loaded" and events[-1][1]["previous"] == before
        assert events[-1][1]["revision"] == engine.revision
    finally:
        engine.close()


def test_a_syntax_error_keeps_the_last_good_revision(policy_copy: Path) -> None:
    events: list[tuple[str, dict]] = []
    engine = EmbeddedEngine(policy_copy, on_event=lambda a, d: events.append((a, d)), poll_seconds=0)
    good = engine.revision
    (policy_copy / "access.rego").write_text((policy_copy / "access.rego").read_text() + "\ndecision if {\n")
    assert engine.reload() is False
    assert engine.revision == good
    action, details = events[-1]
    assert action == "policy.load_failed" and details["revision_kept"] == good and "access.rego" in details["error"]
    assert engine.decide("access", INPUT).result["status"] == "granted"


def test_with_no_good_revision_the_engine_refuses_to_start(policy_copy: Path, tmp_path: Path) -> None:
    (policy_copy / "bubble.rego").write_text("package bulles.bubble\nimport rego.v1\nprofile := {\n")
    with pytest.raises(PolicyLoadError, match="bubble.rego"):
        EmbeddedEngine(policy_copy, poll_seconds=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(PolicyLoadError, match="no policy"):
        EmbeddedEngine(empty, poll_seconds=0)


def test_the_platform_refuses_to_start_without_good_policies(home: Path, policy_copy: Path) -> None:
    from controller.config import load_settings
    from controller.platform import Platform

    (policy_copy / "access.rego").write_text("package bulles.access\n decision := {")
    platform = Platform(load_settings(home, policy_dir=policy_copy, checkpoint_interval_seconds=0))
    with pytest.raises(PolicyLoadError):
        platform.start()
    assert not platform.audit.running


def test_evaluation_errors_and_undefined_results_are_denials(policy_copy: Path) -> None:
    (policy_copy / "access.rego").write_text(
        "package bulles.access\nimport rego.v1\ndecision := 1 if input.a\ndecision := 2 if input.a\n")
    engine = EmbeddedEngine(policy_copy, poll_seconds=0)
    conflict = engine.decide("access", {"a": True})
    assert conflict.result["status"] == "denied" and conflict.error
    assert conflict.result["reasons"][0].startswith("policy_error")
    undefined = engine.decide("access", {"a": False})
    assert undefined.result["status"] == "denied" and undefined.error == "undefined"
    unknown = engine.decide("nothing", {})
    assert unknown.error and unknown.result["reasons"][0].startswith("policy_error")


# -- answers read strictly and held to their package's model ---------------------------------
FORGED = 'z"], "action": "release", "zz": ["x.csv'
EXPORT_INPUT = {
    "project": {**INPUT["project"]},
    "grants": [{"id": "g-1", "source": "eleves-synthetiques", "sensitivity": "personal", "mode": "pseudonymised",
                "publisher": "demo-rennes"}],
    "files": [{"path": FORGED, "type": "csv", "size": 120, "sha256": "ab" * 32}],
    "findings": [{"file": FORGED, "check": "row_level", "severity": "fail"}],
    "requester": "bruno",
}


def test_a_file_name_that_forges_a_key_gets_a_denial_not_a_release() -> None:
    """The original attack at the engine: regopy writes the name into its JSON unescaped, which
    gives the decision a second "action": a key given twice is a policy error, never the last
    value winning; the record keeps the engine's text."""
    decision = EmbeddedEngine(poll_seconds=0).decide("export", EXPORT_INPUT)
    assert decision.typed(ExportDecision).action == "refuse"
    assert decision.result["reasons"] == ["policy_error: the engine's answer is not strict JSON"]
    assert decision.error.startswith('key "action" appears twice')
    assert '"action": "release"' in decision.error  # the answer as the engine gave it, for the auditor
    honest = EmbeddedEngine(poll_seconds=0).decide("export", {
        **EXPORT_INPUT, "files": [{**EXPORT_INPUT["files"][0], "path": "x.csv"}],
        "findings": [{**EXPORT_INPUT["findings"][0], "file": "x.csv"}]})
    assert honest.error is None and honest.result["action"] == "refuse"  # the same table, a plain name


@pytest.mark.parametrize("package,answer,problem", [
    ("export", '{"action": "release", "reviewers": 0, "organisations": [], "reasons": [], "why": "x"}', "why"),
    ("export", '{"action": "release", "reviewers": 0, "organisations": []}', "reasons"),
    ("export", '{"action": "release", "reviewers": "0", "organisations": [], "reasons": []}', "reviewers"),
    ("export", '{"action": "review", "reviewers": true, "organisations": [], "reasons": []}', "reviewers"),
    ("export", '{"action": "review", "reviewers": 0, "organisations": [], "reasons": []}', "reviewer"),
    ("export", '{"action": "approve", "reviewers": 0, "organisations": [], "reasons": []}', "action"),
    ("export", '{"action": "review", "reviewers": 1000, "organisations": [], "reasons": []}', "reviewers"),
    ("export", '{"action": "release", "reviewers": 0, "organisations": [], "reasons": [3]}', "reasons.0"),
    ("access", '{"status": "granted", "mode": null, "parameters": {"columns": [], "pseudonymised": [], '
               '"generalised": [], "dropped": [], "k": 5, "threshold": 10}, "expiry": "2027-01-01", '
               '"reasons": [], "reviewers": [], "notify": []}', "mode"),
    ("access", '{"status": "granted", "mode": "raw", "parameters": {"columns": ["a"]}, "expiry": "2027-01-01", '
               '"reasons": [], "reviewers": [], "notify": []}', "parameters"),
    ("access", '{"status": "pending_review", "mode": "raw", "parameters": {"columns": [], "pseudonymised": [], '
               '"generalised": [], "dropped": [], "k": 5, "threshold": 10}, "expiry": "2027-02-30", "reasons": [], '
               '"reviewers": [{"role": "provider", "organisation": "demo-rennes", "count": -1}], "notify": []}',
     "expiry"),
    ("bubble", '{"allowed": true, "network": "host", "cpu": 2, "memory_mb": 4096, "disk_mb": 10240, '
               '"lifetime_hours": 8, "expires": null, "reasons": []}', "network"),
    ("bubble", '{"allowed": true, "network": "none", "cpu": 2, "memory_mb": 4096.5, "disk_mb": 10240, '
               '"lifetime_hours": 8, "expires": null, "reasons": []}', "memory_mb"),
    ("bubble", '{"allowed": true, "network": "none", "cpu": 0, "memory_mb": 4096, "disk_mb": 10240, '
               '"lifetime_hours": 8, "expires": null, "reasons": []}', "positive"),
], ids=["unknown-key", "missing-key", "text-count", "bool-count", "review-nobody", "unknown-action",
        "absurd-count", "reason-number", "grant-without-mode", "partial-parameters", "bad-day", "unknown-network",
        "fractional-mb", "no-cpu"])
def test_answers_outside_the_package_model_are_denials(policy_copy: Path, package: str, answer: str,
                                                       problem: str) -> None:
    """A policy that answers in another shape (a bug, an edited rule) decides nothing: the
    answer is refused as a whole, and the record says which field did not fit."""
    entry = {"access": "decision", "bubble": "profile", "export": "decision"}[package]
    (policy_copy / f"{package}.rego").write_text(f"package bulles.{package}\nimport rego.v1\n{entry} := {answer}\n")
    decision = EmbeddedEngine(policy_copy, poll_seconds=0).decide(package, {})
    assert decision.result["reasons"] == ["policy_error: the policy's answer does not fit its model"]
    assert decision.error.startswith("invalid result: ") and problem in decision.error
    assert decision.result.get("action", "refuse") == "refuse" and decision.result.get("status", "denied") == "denied"
    assert decision.result.get("allowed", False) is False


def test_strict_json_reads_one_way_only() -> None:
    assert strict_json('{"a": [1, {"b": "c"}], "d": null}') == {"a": [1, {"b": "c"}], "d": None}
    for text in ('{"a": 1, "a": 1}', '{"x": {"a": 1, "a": 2}}', '[{"a": 1, "b": 2, "a": 3}]', '{"a": NaN}',
                 '{"a": Infinity}', '{"a": 1', b'{"a": "\xff"}'.replace(b"\\xff", b"\xff")):
        with pytest.raises(MalformedAnswer):
            strict_json(text)


def test_reference_data_with_a_key_given_twice_does_not_load(policy_copy: Path) -> None:
    (policy_copy / "data" / "thresholds.json").write_text('{"k_anonymity": 5, "k_anonymity": 1, "aggregation": 10, '
                                                          '"raw_justification_min_chars": 20}')
    with pytest.raises(PolicyLoadError, match="appears twice"):
        EmbeddedEngine(policy_copy, poll_seconds=0)


# -- the OPA engine ---------------------------------------------------------------------------
class FakeOpaServer:
    """A stand-in for an OPA server (none can run here): OPA's REST API, evaluated by regopy."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.requests = 0
        self.delay = 0.0
        self.raw_answer: bytes | None = None  # sent as it is instead of evaluating
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                raw = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length", 0)))

            def do_PUT(self) -> None:  # noqa: N802
                body = self._body()
                if self.path.startswith("/v1/policies/"):
                    candidate = {**fake.modules, self.path: body.decode()}
                    try:
                        fake._interpreter(candidate, fake.data)
                    except Exception as exc:
                        self._send(400, {"code": "invalid_parameter", "message": str(exc)[:200], "errors": []})
                        return
                    fake.modules = candidate
                    self._send(200, {})
                elif self.path.startswith("/v1/data/"):
                    node = fake.data
                    *parents, leaf = self.path.removeprefix("/v1/data/").split("/")
                    for part in parents:
                        node = node.setdefault(part, {})
                    node[leaf] = json.loads(body)
                    self._send(204, {})
                else:
                    self._send(404, {})

            def do_POST(self) -> None:  # noqa: N802
                fake.requests += 1
                time.sleep(fake.delay)
                if fake.raw_answer is not None:
                    self._send(200, fake.raw_answer)
                    return
                from regopy import Input

                query = "data." + self.path.removeprefix("/v1/data/").replace("/", ".")
                interpreter = fake._interpreter(fake.modules, fake.data)
                interpreter.set_input(Input(json.loads(self._body())["input"]))
                output = interpreter.query(query)
                if not output.results or not output.results[0].expressions:
                    self._send(200, {})  # OPA's answer for an undefined result
                    return
                self._send(200, {"result": output.results[0].expressions[0]})

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @staticmethod
    def _interpreter(modules: dict[str, str], data: dict[str, Any]) -> Any:
        from regopy import Interpreter

        interpreter = Interpreter()
        for name, text in modules.items():
            interpreter.add_module(name.rsplit("/", 1)[-1] + ".rego", text)
        interpreter.add_data_json(json.dumps(data))
        return interpreter

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def fake_opa() -> Iterator[FakeOpaServer]:
    server = FakeOpaServer()
    yield server
    server.close()


def test_the_opa_engine_decides_like_the_embedded_one(fake_opa: FakeOpaServer) -> None:
    opa = OpaEngine(fake_opa.url, poll_seconds=0)
    embedded = EmbeddedEngine(poll_seconds=0)
    personal = {**INPUT, "source": example("eleves-synthetiques"),
                "request": {**INPUT["request"], "columns": ["ine", "sex"]}}
    for document in (INPUT, personal):
        remote, local = opa.decide("access", document), embedded.decide("access", document)
        assert remote.error is None and remote.result == local.result
        assert remote.revision == local.revision
    assert fake_opa.requests == 2


def test_an_unreachable_or_slow_opa_server_means_deny(fake_opa: FakeOpaServer) -> None:
    opa = OpaEngine(fake_opa.url, poll_seconds=0, timeout=0.5)
    fake_opa.delay = 2.0
    slow = opa.decide("access", INPUT)
    assert slow.result["status"] == "denied" and slow.error
    fake_opa.delay = 0.0
    fake_opa.close()
    down = opa.decide("access", INPUT)
    assert down.result["status"] == "denied" and down.result["reasons"][0].startswith("policy_error")
    with pytest.raises(PolicyLoadError):
        OpaEngine(f"http://127.0.0.1:{free_port()}", poll_seconds=0, timeout=0.5)


def test_the_opa_engine_reads_answers_strictly_too(fake_opa: FakeOpaServer) -> None:
    """The same contract whatever the engine: an OPA answer with a key given twice, or outside
    the package's model, is a denial."""
    opa = OpaEngine(fake_opa.url, poll_seconds=0)
    fake_opa.raw_answer = (b'{"result": {"action": "refuse", "organisations": [], "reasons": [], "reviewers": 0, '
                           b'"action": "release"}}')
    forged = opa.decide("export", EXPORT_INPUT)
    assert forged.result["action"] == "refuse" and forged.error.startswith('key "action" appears twice')
    fake_opa.raw_answer = b'{"result": {"action": "release", "reviewers": 0, "organisations": [], "reasons": [], ' \
                          b'"extra": true}}'
    shaped = opa.decide("export", EXPORT_INPUT)
    assert shaped.result["action"] == "refuse" and "extra" in shaped.error
    fake_opa.raw_answer = None
    # The real policy through the stand-in, which reads regopy's output as the controller used to
    # (the forged "action" wins) and sends it on as valid JSON: the model still refuses the
    # forged object, by the key the name added.
    laundered = opa.decide("export", EXPORT_INPUT)
    assert laundered.result["action"] == "refuse" and laundered.error.startswith("invalid result: zz: Extra")
    assert '"action": "release"' in laundered.error


def test_an_undefined_opa_answer_means_deny(fake_opa: FakeOpaServer, policy_copy: Path) -> None:
    (policy_copy / "access.rego").write_text("package bulles.access\nimport rego.v1\ndecision := {} if input.never\n")
    opa = OpaEngine(fake_opa.url, policy_copy, poll_seconds=0)
    answer = opa.decide("access", INPUT)
    assert answer.result["status"] == "denied" and answer.error == "undefined"


# -- the CLI --------------------------------------------------------------------------------
def test_cli_policy_test_and_eval(tmp_path: Path) -> None:
    """The command's own behaviour, on a small policy directory (the shipped policies' tests run
    in test_the_shipped_policies_pass_their_own_tests): its counts, a failing test named with exit
    1, policies that do not load with exit 2; and one decision of the shipped policies."""
    runner = CliRunner()
    small = tmp_path / "small"
    small.mkdir()
    (small / "tiny.rego").write_text("package bulles.tiny\n\nimport rego.v1\n\nanswer := 42\n")
    (small / "tiny_test.rego").write_text("package bulles.tiny_test\n\nimport rego.v1\n\n"
                                          "test_answer if { data.bulles.tiny.answer == 42 }\n")
    ok = runner.invoke(app, ["policy", "test", "--dir", str(small)])
    assert ok.exit_code == 0 and "1 passed, 0 failed" in ok.output, ok.output
    (tmp_path / "input.json").write_text(json.dumps(INPUT))
    evaluated = runner.invoke(app, ["policy", "eval", "--input", str(tmp_path / "input.json")])
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["result"]["mode"] == "raw"
    with (small / "tiny_test.rego").open("a") as tests:
        tests.write("\ntest_that_fails if { 1 == 2 }\n")
    failing = runner.invoke(app, ["policy", "test", "--dir", str(small)])
    assert failing.exit_code == 1 and "test_that_fails" in failing.output and "1 passed, 1 failed" in failing.output
    (small / "tiny.rego").write_text("package bulles.tiny\n answer := {")
    broken = runner.invoke(app, ["policy", "test", "--dir", str(small)])
    assert broken.exit_code == 2 and "do not load" in broken.output
    (tmp_path / "bad.json").write_text("{not json")
    assert runner.invoke(app, ["policy", "eval", "--input", str(tmp_path / "bad.json")]).exit_code == 2
