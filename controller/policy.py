"""Policy engines: Rego decisions from the embedded interpreter (regopy) or an OPA server.

Both answer `decide(package, input)` with a `Decision` carrying an id, the policy revision
(sha256 over every policy and data file) and the result. Any failure — a policy that does not
load, an evaluation error, a timeout, an undefined result — is a *deny* with reason
`policy_error`, never an exception the caller could forget to handle.

Policies are reloaded when their files change: the new revision is used only if it loads (a
syntax error keeps the last good revision and is reported); with no good revision at all the
engine refuses to start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
ENTRYPOINTS = {"access": "data.bulles.access.decision", "bubble": "data.bulles.bubble.profile",
               "export": "data.bulles.export.decision"}
POLICY_ERROR = "policy_error"
DENY_SHAPES: dict[str, dict[str, Any]] = {
    "access": {"status": "denied", "mode": None, "parameters": {}, "expiry": None, "reviewers": [], "notify": []},
    "bubble": {"allowed": False},
    "export": {"action": "refuse", "reviewers": 0, "organisations": []},
}


class PolicyLoadError(Exception):
    pass


@dataclass(frozen=True)
class PolicySet:
    """The policy files of one revision: modules (name → text), reference data, test modules."""

    revision: str
    modules: dict[str, str]
    tests: dict[str, str]
    data: dict[str, Any]


def read_policies(directory: Path = POLICY_DIR) -> PolicySet:
    """Every *.rego and data/*.json, and their revision; pure apart from reading the files."""
    digest = hashlib.sha256()
    modules: dict[str, str] = {}
    tests: dict[str, str] = {}
    reference: dict[str, Any] = {}
    files = sorted([*directory.glob("*.rego"), *(directory / "data").glob("*.json")])
    if not any(p.suffix == ".rego" for p in files):
        raise PolicyLoadError(f"no policy (*.rego) in {directory}")
    for path in files:
        raw = path.read_bytes()
        digest.update(path.relative_to(directory).as_posix().encode() + b"\0" + raw + b"\0")
        if path.suffix == ".json":
            try:
                reference[path.stem] = json.loads(raw)
            except ValueError as exc:
                raise PolicyLoadError(f"{path.name}: not valid JSON: {exc}") from None
        elif path.name.endswith("_test.rego"):
            tests[path.name] = raw.decode()
        else:
            modules[path.name] = raw.decode()
    return PolicySet(digest.hexdigest(), modules, tests, {"bulles": {"reference": reference}})


def input_digest(value: Any) -> str:
    from controller.audit.canonical import canonical

    return hashlib.sha256(canonical(value)).hexdigest()


@dataclass(frozen=True)
class Decision:
    id: str
    package: str
    revision: str
    input_sha256: str
    result: dict[str, Any]
    error: str | None = None
    seconds: float = 0.0

    @property
    def denied_by_error(self) -> bool:
        return self.error is not None


def _deny(package: str, message: str) -> dict[str, Any]:
    return {**DENY_SHAPES.get(package, {}), "reasons": [f"{POLICY_ERROR}: {message}"]}


class Engine(Protocol):
    revision: str

    def decide(self, package: str, data: dict[str, Any]) -> Decision: ...

    def close(self) -> None: ...


class _Embedded:
    """One regopy interpreter with every entrypoint compiled once (rebuilt per revision)."""

    def __init__(self, policies: PolicySet) -> None:
        from regopy import Interpreter, RegoError

        interpreter = Interpreter()
        try:
            for name, text in policies.modules.items():
                interpreter.add_module(name, text)
            interpreter.add_data_json(json.dumps(policies.data))
            self.bundles = {package: interpreter.build(query) for package, query in ENTRYPOINTS.items()}
        except RegoError as exc:
            raise PolicyLoadError(_rego_message(exc)) from None
        self.interpreter = interpreter
        self.lock = threading.Lock()

    def evaluate(self, package: str, data: dict[str, Any]) -> Any:
        from regopy import Input

        with self.lock:  # an interpreter holds one input at a time
            self.interpreter.set_input(Input(data))
            output = self.interpreter.query_bundle(self.bundles[package])
        results = output.results
        if not results or not results[0].expressions:
            return None
        return results[0].expressions[0]


def _rego_message(exc: Exception) -> str:
    text = str(exc)
    found = re.findall(r"\(error \d+:([^|]+)\|\d+\|\d+\s+\(errormsg \d+:([^)]*)\)", text)
    return "; ".join(f"{where}: {what}" for where, what in found) or text.splitlines()[0]


class _Reloading:
    """What both engines share: the current revision, the file watcher, the event hook."""

    def __init__(self, directory: Path, on_event: Callable[[str, dict[str, Any]], None] | None,
                 poll_seconds: float) -> None:
        self.directory = directory
        self._on_event = on_event or (lambda action, details: None)
        self._stop = threading.Event()
        self._fingerprint = self._stat()
        self.load(read_policies(directory))  # raises: no good revision, no engine
        self._watcher: threading.Thread | None = None
        if poll_seconds > 0:
            self._watcher = threading.Thread(target=self._watch, args=(poll_seconds,), daemon=True,
                                             name="policy-watcher")
            self._watcher.start()

    def load(self, policies: PolicySet) -> None:
        raise NotImplementedError

    def _stat(self) -> tuple:
        return tuple(sorted((p.name, p.stat().st_mtime_ns, p.stat().st_size)
                            for p in [*self.directory.glob("*.rego"), *(self.directory / "data").glob("*.json")]))

    def reload(self) -> bool:
        """Load the files if they changed; True when a new revision is in force."""
        try:
            policies = read_policies(self.directory)
        except (PolicyLoadError, OSError) as exc:
            self._on_event("policy.load_failed", {"revision_kept": self.revision, "error": str(exc)[:500]})
            return False
        if policies.revision == self.revision:
            return False
        previous = self.revision
        try:
            self.load(policies)
        except PolicyLoadError as exc:
            log.error("policy revision %s refused: %s", policies.revision[:12], exc)
            self._on_event("policy.load_failed", {"revision_refused": policies.revision, "revision_kept": previous,
                                                  "error": str(exc)[:500]})
            return False
        self._on_event("policy.loaded", {"revision": self.revision, "previous": previous})
        return True

    def _watch(self, poll_seconds: float) -> None:
        while not self._stop.wait(poll_seconds):
            try:
                fingerprint = self._stat()
            except OSError:
                continue
            if fingerprint != self._fingerprint:
                self._fingerprint = fingerprint
                self.reload()

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)


class EmbeddedEngine(_Reloading):
    """Rego in process (regopy): the default, no server."""

    def __init__(self, directory: Path = POLICY_DIR, *, on_event: Callable[[str, dict[str, Any]], None] | None = None,
                 poll_seconds: float = 2.0) -> None:
        self._current: tuple[str, _Embedded] | None = None
        super().__init__(directory, on_event, poll_seconds)

    @property
    def revision(self) -> str:
        return self._current[0] if self._current else ""

    def load(self, policies: PolicySet) -> None:
        self._current = (policies.revision, _Embedded(policies))

    def decide(self, package: str, data: dict[str, Any]) -> Decision:
        revision, compiled = self._current  # one consistent revision for the whole decision
        return _decide(package, data, revision, lambda: compiled.evaluate(package, data))


def _decide(package: str, data: dict[str, Any], revision: str, evaluate: Callable[[], Any]) -> Decision:
    decision_id = str(uuid.uuid4())
    digest = input_digest(data)
    start = time.perf_counter()
    if package not in ENTRYPOINTS:
        return Decision(decision_id, package, revision, digest, _deny(package, f"no policy '{package}'"), "unknown package")
    try:
        result = evaluate()
    except Exception as exc:  # any engine failure is a deny, recorded with its cause
        log.warning("policy %s failed: %s", package, exc)
        return Decision(decision_id, package, revision, digest, _deny(package, type(exc).__name__), str(exc)[:500],
                        time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    if not isinstance(result, dict):
        return Decision(decision_id, package, revision, digest, _deny(package, "undefined result"), "undefined", elapsed)
    return Decision(decision_id, package, revision, digest, result, None, elapsed)


class OpaEngine(_Reloading):
    """An OPA server (the Helm chart's), through opa-python-client. The controller pushes the
    policy files it has (so the revision it records is the one OPA evaluates) and its reference
    data; an unreachable server, a timeout or an undefined result is a deny."""

    def __init__(self, url: str, directory: Path = POLICY_DIR, *, timeout: float = 2.0,
                 on_event: Callable[[str, dict[str, Any]], None] | None = None, poll_seconds: float = 2.0) -> None:
        from urllib.parse import urlsplit

        from opa_client.opa import OpaClient

        parts = urlsplit(url)
        self._client = OpaClient(host=parts.hostname or "127.0.0.1", port=parts.port or 8181,
                                 ssl=parts.scheme == "https", timeout=timeout)
        self._revision = ""
        super().__init__(directory, on_event, poll_seconds)

    @property
    def revision(self) -> str:
        return self._revision

    def load(self, policies: PolicySet) -> None:
        try:
            for name, text in policies.modules.items():
                self._client.update_policy_from_string(text, f"bulles/{name.removesuffix('.rego')}")
            self._client.update_or_create_data(policies.data["bulles"]["reference"], "bulles/reference")
        except Exception as exc:  # the server refused the policy (syntax) or is unreachable
            raise PolicyLoadError(f"OPA server refused the policies: {exc}") from None
        self._revision = policies.revision

    def decide(self, package: str, data: dict[str, Any]) -> Decision:
        path, _, rule = ENTRYPOINTS.get(package, "data..").removeprefix("data.").rpartition(".")

        def evaluate() -> Any:
            answer = self._client.query_rule(input_data=data, package_path=path.replace(".", "/"), rule_name=rule)
            return answer.get("result") if isinstance(answer, dict) else None

        return _decide(package, data, self._revision, evaluate)

    def close(self) -> None:
        super().close()
        try:
            self._client.close_connection()
        except Exception:  # closing a client that never connected
            pass


@dataclass
class TestReport:
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed and bool(self.passed)


def run_tests(directory: Path = POLICY_DIR) -> TestReport:
    """Every `test_*` rule of every *_test.rego, evaluated by regopy (what `opa test` does)."""
    from regopy import Interpreter

    policies = read_policies(directory)
    interpreter = Interpreter()
    for name, text in {**policies.modules, **policies.tests}.items():
        interpreter.add_module(name, text)
    interpreter.add_data_json(json.dumps(policies.data))
    report = TestReport()
    for name, text in sorted(policies.tests.items()):
        package = re.search(r"^package\s+([\w.]+)", text, re.M).group(1)
        for rule in sorted(set(re.findall(r"^(test_\w+)", text, re.M))):
            output = interpreter.query(f"data.{package}.{rule}")
            value = output.results[0].expressions[0] if output.results and output.results[0].expressions else None
            (report.passed if value is True else report.failed).append(f"{package}.{rule}")
    return report
