"""Export check benchmark: the airlock's automated checks on one CSV against a plain
`pandas.read_csv` of the same file, in the same run.

    .venv/bin/python bench/exports.py [--mb 100] [--cells 1000000] [--repeat 3] [--quick] [--profile]

What is timed, for each file:

* the check — what the controller does for each quarantined file: read its bytes from disk and
  run `controller.disclosure.check_file` on them (content sniffing and UTF-8 validation, the
  CSV read into Arrow, identifiers and pseudonyms looked up in every cell and every word of
  every cell, row-level detection, and — for a table of counts — threshold and zeros per cell);
* the baseline — `pandas.read_csv(path)` of the same file, default options.

Runs are interleaved (one warm-up of each, then `--repeat` rounds of baseline then check); the
medians are reported. ratio = baseline seconds / check seconds: 0.5 means the check takes twice
as long as the plain read. Target: ratio >= 0.5. Throughputs are MB/s of the file and cells/s,
cells being rows x columns (every cell is looked up for identifiers).

The needles are those the controller builds for a project of 100,000 pupils
(controller/exports.py, Exports.needles): 100,000 INE-shaped identifiers ('99' + 8 digits +
check letter, as catalog/synthetic.py makes them), their 100,000 pseudonyms in a project
(32 hex characters, connectors/pseudonyms.py) and the key column `ine`. The rules are
policies/data/exports.json's. The files, generated with a fixed seed in a temporary directory and
written as pandas' `to_csv(index=False)` writes them (plain header, nothing quoted):

1. `table.csv`, ~100 MB: a wide statistical table as a researcher would export it — académie,
   UAI-like school code, level and sex (text), then 12 count columns (integers, mostly >= 10,
   a share — `--small-share`, 0.5% — under 10 or zero). Over 5,000 rows, so it also goes to row-level review.
2. `frequencies.csv`, 10^6 cells: a frequency table in long format — school (UAI) x level x
   social category x school year (1,000 x 10 x 10 x 10 by default) and one count column.

No needle value occurs in them by construction (lengths and alphabets differ), except a handful
planted on purpose — identifiers as whole cells of the UAI column, pseudonyms as words inside
académie cells — that the check must find, exactly, for the run to count. With `--profile`,
one check of each file runs under cProfile and the top functions are printed. A per-phase
split of the check (the public functions check_file chains) is written as well.
Writes bench/results/exports.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import cProfile
import io
import json
import os
import platform as host
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.csv as pacsv  # noqa: E402

from catalog.synthetic import INE_MARKER, ine_check_letter  # noqa: E402
from connectors.pseudonyms import Pseudonymiser, project_key  # noqa: E402
from controller import disclosure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "exports.json"
TARGET_RATIO = 0.5
SEED = 11

ACADEMIES = ["Aix-Marseille", "Amiens", "Besançon", "Bordeaux", "Clermont-Ferrand", "Corse", "Créteil", "Dijon",
             "Grenoble", "Guadeloupe", "Guyane", "La Réunion", "Lille", "Limoges", "Lyon", "Martinique", "Mayotte",
             "Montpellier", "Nancy-Metz", "Nantes", "Nice", "Normandie", "Orléans-Tours", "Paris", "Poitiers",
             "Reims", "Rennes", "Strasbourg", "Toulouse", "Versailles"]
LEVELS = ["CP", "CE1", "CE2", "CM1", "CM2", "6e", "5e", "4e", "3e", "2nde"]
SEXES = ["F", "M"]
SOCIAL = ["Très favorisée", "Favorisée", "Moyenne supérieure", "Moyenne", "Moyenne inférieure", "Défavorisée",
          "Très défavorisée", "Agriculteurs", "Sans activité", "Non renseignée"]
COUNTS = ["effectif", "boursiers", "redoublants", "internes", "demi_pensionnaires", "allophones", "ulis", "segpa",
          "latin", "grec", "lv2_allemand", "lv2_espagnol"]
YEARS = [f"{y}-{y + 1}" for y in range(2014, 2024)]


# ------------------------------------------------------------------ needles


def make_needles(count: int, seed: int) -> disclosure.Needles:
    """`count` INE-shaped identifiers, their pseudonyms in a project, the key column `ine`."""
    rng = np.random.default_rng(seed)
    bodies = rng.choice(10 ** (10 - len(INE_MARKER)), size=count, replace=False)
    identifiers = []
    for body in bodies:
        digits = f"{INE_MARKER}{int(body):0{10 - len(INE_MARKER)}d}"
        identifiers.append(digits + ine_check_letter(digits))
    pseudonymiser = Pseudonymiser(project_key(b"\0" * 32, "bench"))
    pseudonyms = [pseudonymiser.value(v) for v in identifiers]
    return disclosure.Needles(frozenset(identifiers), frozenset(pseudonyms), {"ine": "eleves-synthetiques"})


# ------------------------------------------------------------------ files


def _text(rng: np.random.Generator, labels: list[str], n: int) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(rng.integers(0, len(labels), n).astype(np.int32)),
                                          pa.array(labels)).dictionary_decode()


def _uais(rng: np.random.Generator, n: int) -> list[str]:
    """Distinct UAI-like codes: '0' + 6 digits + letter (8 characters)."""
    numbers = rng.choice(10**6, size=n, replace=False)
    letters = "ABCDEFGHJKLMNPRSTUVWXYZ"
    return [f"0{int(x):06d}{letters[int(x) % 23]}" for x in numbers]


def _counts(rng: np.random.Generator, n: int, small_share: float) -> np.ndarray:
    values = rng.integers(10, 400, n)
    small = rng.random(n) < small_share
    values[small] = rng.integers(0, 10, int(small.sum()))
    return values


def _write(table: pa.Table, sink: Any) -> None:
    """As pandas' `to_csv(index=False)` writes it: a plain header, nothing quoted."""
    sink.write((",".join(table.column_names) + "\n").encode())
    pacsv.write_csv(table, sink, write_options=pacsv.WriteOptions(include_header=False, quoting_style="none"))


def wide_table(rows: int, rng: np.random.Generator, small_share: float, schools: list[str]) -> pa.Table:
    columns = {
        "academie": _text(rng, ACADEMIES, rows),
        "uai": _text(rng, schools, rows),
        "niveau": _text(rng, LEVELS, rows),
        "sexe": _text(rng, SEXES, rows),
    }
    for name in COUNTS:
        columns[name] = pa.array(_counts(rng, rows, small_share))
    return pa.table(columns)


def plant(table: pa.Table, rng: np.random.Generator, needles: disclosure.Needles, identifiers: int,
          pseudonyms: int) -> pa.Table:
    """Identifiers as whole cells of `uai`, pseudonyms as a word inside `academie` cells."""
    ids = sorted(needles.identifiers)[:identifiers]
    pseudos = sorted(needles.pseudonyms)[:pseudonyms]
    rows = rng.choice(table.num_rows, size=identifiers + pseudonyms, replace=False)
    uai = table.column("uai").to_pylist()
    academie = table.column("academie").to_pylist()
    for row, value in zip(rows[:identifiers], ids):
        uai[row] = value
    for row, value in zip(rows[identifiers:], pseudos):
        academie[row] = f"{academie[row]} {value}"
    table = table.set_column(table.column_names.index("uai"), "uai", pa.array(uai))
    return table.set_column(table.column_names.index("academie"), "academie", pa.array(academie))


def make_table_csv(path: Path, megabytes: float, seed: int, small_share: float, needles: disclosure.Needles,
                   planted: tuple[int, int]) -> None:
    rng = np.random.default_rng(seed)
    schools = _uais(rng, 60_000)
    sample = io.BytesIO()
    _write(wide_table(20_000, rng, small_share, schools), sample)
    rows = int(megabytes * 1e6 / (len(sample.getvalue()) / 20_000))
    table = plant(wide_table(rows, rng, small_share, schools), rng, needles, *planted)
    with path.open("wb") as sink:
        _write(table, sink)


def make_frequencies_csv(path: Path, cells: int, seed: int, small_share: float) -> None:
    """Long format: every combination of school x level x social category x year, one count."""
    rng = np.random.default_rng(seed + 1)
    inner = len(LEVELS) * len(SOCIAL) * len(YEARS)
    if cells % inner:
        raise SystemExit(f"--cells must be a multiple of {inner}")
    schools = sorted(_uais(rng, cells // inner))
    grid = np.indices((len(schools), len(LEVELS), len(SOCIAL), len(YEARS))).reshape(4, -1)
    columns = {}
    for name, labels, codes in zip(("uai", "niveau", "categorie_sociale", "annee_scolaire"),
                                   (schools, LEVELS, SOCIAL, YEARS), grid):
        columns[name] = pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                                       pa.array(labels)).dictionary_decode()
    columns["effectif"] = pa.array(_counts(rng, cells, small_share))
    with path.open("wb") as sink:
        _write(pa.table(columns), sink)


# ------------------------------------------------------------------ measures


def baseline(path: Path) -> tuple[float, pd.DataFrame]:
    start = time.perf_counter()
    frame = pd.read_csv(path)
    return time.perf_counter() - start, frame


def check(path: Path, needles: disclosure.Needles, rules: disclosure.Rules) -> tuple[float, list[dict]]:
    start = time.perf_counter()
    data = path.read_bytes()
    found = disclosure.check_file(path.name, data, needles, rules)
    return time.perf_counter() - start, found


def phases(path: Path, needles: disclosure.Needles, rules: disclosure.Rules) -> dict[str, float]:
    """The steps check_file chains, timed one by one (one pass)."""
    out = {}
    t = time.perf_counter()
    data = path.read_bytes()
    out["read_bytes"] = time.perf_counter() - t
    t = time.perf_counter()
    assert disclosure.sniff(data, "csv") is None
    disclosure.text_of(data)
    out["sniff_and_decode"] = time.perf_counter() - t
    t = time.perf_counter()
    table = disclosure.read_table(data)
    out["read_table"] = time.perf_counter() - t
    t = time.perf_counter()
    disclosure.identifiers_in_table(path.name, table, needles, rules)
    out["identifiers_in_table"] = time.perf_counter() - t
    t = time.perf_counter()
    disclosure.row_level(path.name, table, needles, rules)
    out["row_level"] = time.perf_counter() - t
    t = time.perf_counter()
    disclosure.frequency_checks(path.name, table, rules)
    out["frequency_checks"] = time.perf_counter() - t
    return {k: round(v, 3) for k, v in out.items()}


def profile(path: Path, needles: disclosure.Needles, rules: disclosure.Rules, top: int = 20) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    check(path, needles, rules)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def summarise(found: list[dict]) -> list[dict]:
    return [{"check": f["check"], "severity": f["severity"], **({"count": f["count"]} if "count" in f else {})}
            for f in found]


def measure(name: str, path: Path, needles: disclosure.Needles, rules: disclosure.Rules, repeat: int,
            expect: dict[str, int]) -> dict:
    size = path.stat().st_size
    seconds, frame = baseline(path)  # warm-up, and the table's shape
    rows, columns = frame.shape
    del frame
    check(path, needles, rules)  # warm-up
    base_runs, check_runs = [], []
    found: list[dict] = []
    for _ in range(repeat):
        seconds, frame = baseline(path)
        del frame
        base_runs.append(seconds)
        seconds, found = check(path, needles, rules)
        check_runs.append(seconds)
    identifiers = {f["message"].split(" hold ")[1].split("s of")[0]: f["count"] for f in found
                   if f["check"] == "identifiers"}
    if identifiers != expect:
        raise SystemExit(f"{name}: the check found {identifiers}, planted {expect}")
    base, checked = statistics.median(base_runs), statistics.median(check_runs)
    cells = rows * columns

    def rates(s: float) -> dict:
        return {"seconds": round(s, 3), "mb_per_second": round(size / 1e6 / s, 1),
                "cells_per_second": round(cells / s)}

    return {
        "bytes": size, "rows": rows, "columns": columns, "cells": cells,
        "pandas_read_csv": {**rates(base), "runs": [round(s, 3) for s in base_runs]},
        "check": {**rates(checked), "runs": [round(s, 3) for s in check_runs]},
        "ratio": round(base / checked, 3),
        "target_met": base / checked >= TARGET_RATIO,
        "planted_found": identifiers,
        "findings": summarise(found),
        "check_phases_seconds": phases(path, needles, rules),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="size of the wide table (MB)")
    parser.add_argument("--cells", type=int, default=1_000_000, help="cells of the frequency table")
    parser.add_argument("--needles", type=int, default=100_000, help="identifiers (and as many pseudonyms)")
    parser.add_argument("--small-share", type=float, default=0.005, help="share of count cells under 10")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10 MB, 100,000 cells, 10,000 needles")
    parser.add_argument("--profile", action="store_true", help="also run each check once under cProfile")
    args = parser.parse_args()
    if args.quick:
        args.mb, args.cells, args.needles = 10.0, 100_000, 10_000
    planted = (3, 2)
    expect = {"identifier": planted[0], "pseudonym": planted[1]}
    rules = disclosure.Rules.from_reference(json.loads((ROOT / "policies/data/exports.json").read_text()))
    start = time.perf_counter()
    needles = make_needles(args.needles, SEED)
    needles_seconds = time.perf_counter() - start
    results, profiles = {}, {}
    with tempfile.TemporaryDirectory(prefix="bulles-bench-exports-") as tmp:
        table_csv, frequencies_csv = Path(tmp) / "table.csv", Path(tmp) / "frequencies.csv"
        make_table_csv(table_csv, args.mb, SEED, args.small_share, needles, planted)
        make_frequencies_csv(frequencies_csv, args.cells, SEED, args.small_share)
        # The frequency table holds no planted value: it must come out clean.
        for name, path, wanted in (("wide_table", table_csv, expect), ("frequency_table", frequencies_csv, {})):
            results[name] = measure(name, path, needles, rules, args.repeat, wanted)
            if args.profile:
                profiles[name] = profile(path, needles, rules)
    result = {
        "benchmark": "exports",
        "measured": "read the file's bytes + disclosure.check_file, against pandas.read_csv of the same file; "
                    "medians of interleaved runs after one warm-up each",
        "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "system": host.platform(),
                    "pyarrow": pa.__version__, "pandas": pd.__version__, "numpy": np.__version__},
        "parameters": {"seed": SEED, "wide_table_mb": args.mb, "frequency_cells": args.cells,
                       "identifiers": len(needles.identifiers), "pseudonyms": len(needles.pseudonyms),
                       "key_columns": dict(needles.key_columns), "small_share": args.small_share,
                       "repeat": args.repeat, "planted": expect, "rules": dataclasses.asdict(rules),
                       "needles_build_seconds": round(needles_seconds, 2)},
        "files": results,
        "targets": {"ratio_to_pandas_read_csv": TARGET_RATIO},
        "met": {name: figures["target_met"] for name, figures in results.items()},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print(f"needles: {len(needles.identifiers):,} identifiers + {len(needles.pseudonyms):,} pseudonyms")
    print(f"{'file':>16} {'MB':>6} {'cells':>11} {'pandas s':>9} {'check s':>8} {'check MB/s':>10} "
          f"{'check cells/s':>13} {'ratio':>6}  target {TARGET_RATIO}")
    for name, f in results.items():
        print(f"{name:>16} {f['bytes'] / 1e6:6.1f} {f['cells']:>11,} {f['pandas_read_csv']['seconds']:9.2f} "
              f"{f['check']['seconds']:8.2f} {f['check']['mb_per_second']:10.1f} {f['check']['cells_per_second']:>13,} "
              f"{f['ratio']:6.2f}  {'met' if f['target_met'] else 'NOT met'}")
        print(f"{'':>16} phases (s): " + ", ".join(f"{k} {v}" for k, v in f["check_phases_seconds"].items()))
    for name, text in profiles.items():
        print(f"\n--- cProfile of one check of {name} (by own time) ---\n{text}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
