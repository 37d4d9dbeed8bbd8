"""Policy benchmark: `bulles.access` decisions on the embedded engine (regopy, compiled once)
against a trivial `allow := true` policy evaluated the same way, in the same run.

    .venv/bin/python bench/policy.py [--decisions N]

Input: a realistic request — the annuaire (69 columns) and the synthetic pupils (13 columns,
personal) from catalog/examples. Writes bench/results/policy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from controller.policy import EmbeddedEngine  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "policy.json"
PROJECT = {"id": "bench", "purpose": "research", "legal_basis": "public_task", "dpia_reference": "AIPD-1",
           "start_date": "2026-01-01", "end_date": "2027-06-30", "members": [{"username": "bruno", "role": "owner"}]}


def example(name: str) -> dict:
    return json.loads(json.dumps(yaml.safe_load((ROOT / "catalog/examples" / f"{name}.yaml").read_text()), default=str))


def measure(engine: EmbeddedEngine, package: str, document: dict, count: int) -> dict:
    for _ in range(min(50, count)):  # warm-up
        engine.decide(package, document)
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        t0 = time.perf_counter()
        decision = engine.decide(package, document)
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - start
    assert decision.error is None, decision.error
    latencies.sort()
    return {"decisions_per_second": round(count / elapsed), "p50_ms": round(statistics.median(latencies) * 1000, 3),
            "p99_ms": round(latencies[int(len(latencies) * 0.99) - 1] * 1000, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--decisions", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trivial_dir = Path(tmp)
        # The same three entry points, each a constant: what evaluation costs with no rules at all.
        (trivial_dir / "trivial.rego").write_text(
            "package bulles.access\nimport rego.v1\nallow := true\ndecision := {\"allow\": allow}\n")
        (trivial_dir / "bubble.rego").write_text("package bulles.bubble\nimport rego.v1\nprofile := {}\n")
        (trivial_dir / "export.rego").write_text("package bulles.export\nimport rego.v1\ndecision := {}\n")
        trivial = EmbeddedEngine(trivial_dir, poll_seconds=0)
        real = EmbeddedEngine(poll_seconds=0)
        cases = {
            "annuaire_open_69_columns": {"now": "2026-11-22", "project": PROJECT, "source": example("fr-en-annuaire-education"),
                                         "request": {"columns": None, "justification": "bench", "mode": None,
                                                     "requester": "bruno"}},
            "pupils_personal_13_columns": {"now": "2026-11-22", "project": PROJECT, "source": example("eleves-synthetiques"),
                                           "request": {"columns": None, "justification": "bench", "mode": None,
                                                       "requester": "bruno"}},
        }
        for case in cases.values():
            case["request"]["columns"] = [c["name"] for c in case["source"]["schema"]]
        results = {}
        for name, document in cases.items():
            baseline = measure(trivial, "access", document, args.decisions)
            access = measure(real, "access", document, args.decisions)
            results[name] = {"bulles.access": access, "trivial_allow": baseline,
                             "latency_ratio_p50": round(access["p50_ms"] / baseline["p50_ms"], 1)}
    result = {"benchmark": "policy", "engine": "embedded (regopy, compiled once)", "decisions": args.decisions,
              "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "system": host.platform()},
              "cases": results, "targets": {"p50_ms": 1.0, "decisions_per_second": 1000}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    for name, figures in results.items():
        a, b = figures["bulles.access"], figures["trivial_allow"]
        print(f"{name}: bulles.access {a['decisions_per_second']:,}/s p50 {a['p50_ms']} ms p99 {a['p99_ms']} ms | "
              f"trivial {b['decisions_per_second']:,}/s p50 {b['p50_ms']} ms | x{figures['latency_ratio_p50']} latency")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
