"""Policy engines: Rego decisions from the embedded interpreter (regopy) or an OPA server.

Both answer `decide(package, input)` with a `Decision` carrying an id, the policy revision
(sha256 over every policy and data file) and the result. Any failure — a policy that does not
load, an evaluation error, a timeout, an undefined result, an answer that is not strict JSON
(a key given twice) or does not fit the package's model (controller.decisions) — is a *deny*
with reason `policy_error`, never an exception the caller could forget to handle.

Engines hand back text, and the text is parsed here, strictly: regopy writes strings from the
input into its output unescaped, so a hostile string can forge a key; Python's JSON reader
would keep the forged duplicate. Nothing an engine says is read any other way.

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
from typing import Any, Protocol, TypeVar

import httpx
from pydantic import ValidationError

from controller.decisions import MODELS, PolicyResult, denial

log = logging.getLogger(__name__)
R = TypeVar("R", bound=PolicyResult)

POLICY_DIR = Path(__file__).resolve().parents[1] / "policies"
ENTRYPOINTS = {"access": "data.bulles.access.decision", "bubble": "data.bulles.bubble.profile",
               "export": "data.bulles.export.decision"}
RAW_KEPT = 2000  # characters of a refused answer kept in the decision record


class PolicyLoadError(Exception):
    pass


class MalformedAnswer(ValueError):
    """An engine's text that is not one JSON value read one way only; `text` is that text."""

    def __init__(self, message: str, text: str = "") -> None:
        super().__init__(message)
        self.text = text


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise MalformedAnswer(f"key {json.dumps(key)[:200]} appears twice in an object")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise MalformedAnswer(f"{name} is not JSON")


def strict_json(text: str | bytes) -> Any:
    """JSON as RFC 8259 means it, read one way only: a key given twice in an object, NaN or
    Infinity is an error rather than the last value winning."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except ValueError as exc:  # ours, JSONDecodeError, and bytes that are not UTF-8
        shown = text.decode("utf-8", "replace") if isinstance(text, bytes) else text
        message = str(exc) if isinstance(exc, MalformedAnswer) else f"not JSON: {exc}"
        raise MalformedAnswer(message, shown[:RAW_KEPT]) from None


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
                reference[path.stem] = strict_json(raw)
            except MalformedAnswer as exc:
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
    """One decision: `outcome` is the package's validated model (controller.decisions), `result`
    its JSON form as recorded; `error` says why the outcome is a forced denial."""

    id: str
    package: str
    revision: str
    input_sha256: str
    outcome: PolicyResult
    error: str | None = None
    seconds: float = 0.0

    @property
    def result(self) -> dict[str, Any]:
        return self.outcome.model_dump(mode="json")

    @property
    def denied_by_error(self) -> bool:
        return self.error is not None

    def typed(self, model: type[R]) -> R:
        """The outcome as the caller's package model (a wrong package is a bug, not a decision)."""
        if not isinstance(self.outcome, model):
            raise TypeError(f"a decision of '{self.package}' is not a {model.__name__}")
        return self.outcome


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
            return _regopy_value(self.interpreter.query_bundle(self.bundles[package]))


def _regopy_value(output: Any) -> Any:
    """The first expression of a regopy output, read strictly from its text (never from the
    `results` regopy parsed itself, which keep the last of duplicate keys); None if undefined."""
    text = str(output)
    if not output.ok():
        raise RuntimeError(f"evaluation failed: {text[:500]}")
    if text == "undefined":
        return None
    parsed = strict_json(text)
    results = parsed if isinstance(parsed, list) else [parsed]
    if len(results) > 1:
        raise MalformedAnswer(f"{len(results)} results where one was expected")
    if not results or not isinstance(results[0], dict) or not results[0].get("expressions"):
        return None
    expressions = results[0]["expressions"]
    return expressions[0] if isinstance(expressions, list) else None


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
    """Evaluate, then hold the answer to its package's model; every way of failing is a denial
    whose record says why (with the start of the answer that did not fit)."""
    decision_id = str(uuid.uuid4())
    digest = input_digest(data)
    start = time.perf_counter()
    model = MODELS.get(package)
    if model is None:
        return Decision(decision_id, package, revision, digest, denial(package, f"no policy '{package}'"),
                        "unknown package")
    try:
        result = evaluate()
    except Exception as exc:  # any engine failure is a deny, recorded with its cause
        log.warning("policy %s failed: %s", package, exc)
        malformed = isinstance(exc, MalformedAnswer)
        error = str(exc)[:500] + (f"; answer: {exc.text}" if malformed else "")
        why = "the engine's answer is not strict JSON" if malformed else type(exc).__name__
        return Decision(decision_id, package, revision, digest, denial(package, why), error,
                        time.perf_counter() - start)
    elapsed = time.perf_counter() - start
    if result is None:
        return Decision(decision_id, package, revision, digest, denial(package, "undefined result"), "undefined",
                        elapsed)
    try:
        outcome = model.model_validate(result)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'result'}: {e['msg']}" for e in exc.errors())
        raw = json.dumps(result, ensure_ascii=False)[:RAW_KEPT]
        log.warning("policy %s answered outside its model: %s", package, problems[:500])
        return Decision(decision_id, package, revision, digest,
                        denial(package, "the policy's answer does not fit its model"),
                        f"invalid result: {problems[:1000]}; answer: {raw}", elapsed)
    return Decision(decision_id, package, revision, digest, outcome, None, elapsed)


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
        # Decisions are read from the response's text (strictly), which opa-python-client's
        # query_rule does not give: it returns what `response.json()` made of it.
        self._queries = httpx.Client(base_url=self._client.root_url, timeout=timeout)
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
            response = self._queries.post(f"/data/{path.replace('.', '/')}/{rule}", json={"input": data})
            response.raise_for_status()
            answer = strict_json(response.content)
            if not isinstance(answer, dict):
                raise MalformedAnswer("OPA's answer is not an object")
            return answer.get("result")  # absent: undefined

        return _decide(package, data, self._revision, evaluate)

    def close(self) -> None:
        super().close()
        self._queries.close()
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
            try:
                value = _regopy_value(interpreter.query(f"data.{package}.{rule}"))
            except (MalformedAnswer, RuntimeError):
                value = None
            (report.passed if value is True else report.failed).append(f"{package}.{rule}")
    return report
