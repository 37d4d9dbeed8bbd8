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
from controller.policy import POLICY_DIR, EmbeddedEngine, OpaEngine, PolicyLoadError, read_policies, run_tests

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


# -- the OPA engine ---------------------------------------------------------------------------
class FakeOpaServer:
    """A stand-in for an OPA server (none can run here): OPA's REST API, evaluated by regopy."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}
        self.data: dict[str, Any] = {}
        self.requests = 0
        self.delay = 0.0
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, body: Any) -> None:
                raw = json.dumps(body).encode()
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


def test_an_undefined_opa_answer_means_deny(fake_opa: FakeOpaServer, policy_copy: Path) -> None:
    (policy_copy / "access.rego").write_text("package bulles.access\nimport rego.v1\ndecision := {} if input.never\n")
    opa = OpaEngine(fake_opa.url, policy_copy, poll_seconds=0)
    answer = opa.decide("access", INPUT)
    assert answer.result["status"] == "denied" and answer.error == "undefined"


# -- the CLI --------------------------------------------------------------------------------
def test_cli_policy_test_and_eval(tmp_path: Path, policy_copy: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(app, ["policy", "test"])
    assert ok.exit_code == 0 and " 0 failed" in ok.output
    (tmp_path / "input.json").write_text(json.dumps(INPUT))
    evaluated = runner.invoke(app, ["policy", "eval", "--input", str(tmp_path / "input.json")])
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["result"]["mode"] == "raw"
    (policy_copy / "access_test.rego").write_text((policy_copy / "access_test.rego").read_text()
                                                  + "\ntest_that_fails if { 1 == 2 }\n")
    failing = runner.invoke(app, ["policy", "test", "--dir", str(policy_copy)])
    assert failing.exit_code == 1 and "test_that_fails" in failing.output
    (policy_copy / "access.rego").write_text("package bulles.access\n decision := {")
    broken = runner.invoke(app, ["policy", "test", "--dir", str(policy_copy)])
    assert broken.exit_code == 2 and "do not load" in broken.output
    (tmp_path / "bad.json").write_text("{not json")
    assert runner.invoke(app, ["policy", "eval", "--input", str(tmp_path / "bad.json")]).exit_code == 2
