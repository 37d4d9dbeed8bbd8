"""View materialisation benchmark: each access mode against a plain pyarrow copy of the same
columns, on a 5,000,000-row pupils table stored as Parquet in a real SeaweedFS.

    .venv/bin/python bench/views.py [--rows N] [--quick]

The source has realistic repetition: 100,000 synthetic pupils, each in 50 rows (one per
period), periods one after the other, so every 1M-row batch holds ~100k distinct pupils. The
baseline reads the same columns from the same object and writes them to Parquet (zstd) with
pyarrow, in the same run. Pseudonymisation alone is then measured on one core for real: in a
child process pinned to one CPU (sched_setaffinity) before it imports anything, so neither
pyarrow's thread pool nor anything else can spread it. Writes bench/results/views.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform as host
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import yaml  # noqa: E402

from catalog.model import SourceSpec  # noqa: E402
from catalog.synthetic import ANNUAIRE_CSV, generate_pupils, load_schools  # noqa: E402
from catalog.vocab import ColumnRole, Role  # noqa: E402
from connectors.pseudonyms import Pseudonymiser, project_key  # noqa: E402
from connectors.seaweed import SeaweedFS, ensure_bucket  # noqa: E402
from controller import accounts, sources, views  # noqa: E402
from controller.auth import Principal  # noqa: E402
from controller.config import load_settings  # noqa: E402
from controller.home import init_home  # noqa: E402
from controller.platform import Platform  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "views.json"
BUCKET, KEY = "bench", "pupils-5m.parquet"


def source_table(rows: int, pupils: int) -> pa.Table:
    base = generate_pupils(pupils, seed=7, schools=load_schools(ANNUAIRE_CSV))
    periods = -(-rows // pupils)
    index = np.tile(np.arange(pupils), periods)[:rows]
    table = base.take(pa.array(index))
    period = np.repeat(np.arange(periods, dtype=np.int64), pupils)[:rows]
    return table.append_column("period", pa.array(period))


def upload(table: pa.Table, fs: pafs.S3FileSystem) -> None:
    with fs.open_output_stream(f"{BUCKET}/{KEY}") as out:
        pq.write_table(table, out, row_group_size=1 << 20, compression="zstd")


def baseline(fs: pafs.S3FileSystem, columns: list[str], out: Path) -> float:
    """Plain pyarrow: read the columns from S3, write them to Parquet. Rows per second."""
    start = time.perf_counter()
    rows = 0
    with fs.open_input_file(f"{BUCKET}/{KEY}") as handle:
        parquet = pq.ParquetFile(handle)
        writer = None
        for batch in parquet.iter_batches(batch_size=views.SCAN_ROWS, columns=columns):
            writer = writer or pq.ParquetWriter(out, batch.schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
        writer.close()
    return rows / (time.perf_counter() - start)


def one_core_rate(ine_file: Path, cpu: int) -> float:
    """Rows per second of pseudonymising the `ine` column in SCAN_ROWS batches, in a child
    process whose every thread is confined to `cpu` (the affinity is set before Python starts)."""
    child = subprocess.run([sys.executable, __file__, "--pseudonymise", str(ine_file)], check=True,
                           capture_output=True, text=True, preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))
    return float(child.stdout.strip().splitlines()[-1])


def pseudonymise_only(ine_file: Path) -> None:
    assert len(os.sched_getaffinity(0)) == 1, "the child must run on one CPU"
    ine = pq.read_table(ine_file).column("ine").combine_chunks()
    pseudonymiser = Pseudonymiser(project_key(b"\0" * 32, "bench"))
    start = time.perf_counter()
    for offset in range(0, len(ine), views.SCAN_ROWS):
        pseudonymiser.array(ine.slice(offset, views.SCAN_ROWS))
    print(len(ine) / (time.perf_counter() - start))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--quick", action="store_true", help="500,000 rows")
    parser.add_argument("--pseudonymise", type=Path, help=argparse.SUPPRESS)  # the pinned child
    args = parser.parse_args()
    if args.pseudonymise:
        pseudonymise_only(args.pseudonymise)
        return
    rows = 500_000 if args.quick else args.rows
    pupils = min(100_000, max(1, rows // 50))
    with tempfile.TemporaryDirectory(prefix="bulles-bench-views-") as tmp:
        tmp_path = Path(tmp)
        home = tmp_path / "home"
        init_home(home)
        with SeaweedFS(tmp_path / "weed") as weed:
            creds = weed.credentials()
            ensure_bucket(creds, BUCKET)
            fs = pafs.S3FileSystem(access_key=creds.access_key, secret_key=creds.secret_key,
                                   endpoint_override=creds.endpoint, scheme="http", region=creds.region)
            table = source_table(rows, pupils)
            upload(table, fs)
            del table
            spec_data = yaml.safe_load((ROOT / "catalog/examples/eleves-synthetiques.yaml").read_text(encoding="utf-8"))
            owned = creds.model_copy(update={"organisations": [spec_data["publisher"]]})
            settings = load_settings(home, s3={"default": owned.model_dump()}, checkpoint_interval_seconds=0)
            spec_data["schema"].append({"name": "period", "type": "int64", "role": "attribute"})
            spec_data["access_modes"] = ["raw", "minimised", "pseudonymised", "generalised", "aggregated", "synthetic"]
            spec_data["connector"] = {"kind": "s3", "bucket": BUCKET, "key": KEY, "format": "parquet"}
            spec = SourceSpec.model_validate(json.loads(json.dumps(spec_data, default=str)))
            everything = [c.name for c in spec.schema_]
            identifiers = {c.name for c in spec.schema_ if c.role is ColumnRole.identifier}
            without_ids = [c for c in everything if c not in identifiers]
            results: dict[str, dict] = {}
            with Platform(settings) as platform:
                accounts.add_organisation(platform, "bench", spec.publisher, "Bench")
                sources.register(platform, Principal("p", frozenset({Role.provider}), spec.publisher), spec)
                base_all = baseline(fs, everything, tmp_path / "base-all.parquet")
                base_min = baseline(fs, without_ids, tmp_path / "base-min.parquet")
                modes = [
                    ("raw", {}),
                    ("minimised", {}),
                    ("pseudonymised", {}),
                    ("generalised", {"k": 5}),
                    ("aggregated", {"dimensions": ["sex", "level", "social_category"],
                                    "measures": ["grade_maths", "absences_half_days"]}),
                    ("synthetic", {"size": 1_000_000, "seed": 1}),
                ]
                for mode, parameters in modes:
                    request = views.ViewRequest(source=spec.id, mode=mode, project="bench", parameters=parameters)
                    # The baseline copies exactly the columns this view reads.
                    read = views.plan(spec, request, source_version=1, document_sha256="")["columns"]
                    reference = base_all if read == everything else base_min if read == without_ids else \
                        baseline(fs, read, tmp_path / f"base-{mode}.parquet")
                    start = time.perf_counter()
                    manifest, _ = views.materialise(platform, "bench", request)
                    elapsed = time.perf_counter() - start
                    throughput = rows / elapsed
                    results[mode] = {"seconds": round(elapsed, 2), "source_rows_per_second": round(throughput),
                                     "baseline_rows_per_second": round(reference), "columns_read": len(read),
                                     "ratio_to_baseline": round(throughput / reference, 3),
                                     "output_rows": manifest["row_count"]}
            with fs.open_input_file(f"{BUCKET}/{KEY}") as handle:
                pq.write_table(pq.read_table(handle, columns=["ine"]), tmp_path / "ine.parquet")
            cpu = min(os.sched_getaffinity(0))
            pseudo_rate = one_core_rate(tmp_path / "ine.parquet", cpu)
    result = {
        "benchmark": "views", "rows": rows, "distinct_pupils": pupils,
        "machine": {"cpus": os.cpu_count(), "python": host.python_version(), "system": host.platform()},
        "baseline_rows_per_second": {"all_columns": round(base_all), "without_identifiers": round(base_min)},
        "modes": results,
        "pseudonymisation_rows_per_second_one_core": round(pseudo_rate),
        "pseudonymisation_pinned_to_cpu": cpu,
        "targets": {"minimised_and_pseudonymised_ratio": 0.5, "pseudonymisation_rows_per_second": 5_000_000},
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{rows:,} rows, {pupils:,} distinct pupils, Parquet in SeaweedFS")
    print(f"baseline pyarrow read+write: {base_all:,.0f} rows/s (all columns), {base_min:,.0f} rows/s (no identifier)")
    for mode, figures in results.items():
        print(f"{mode:>14}: {figures['seconds']:7.2f} s  {figures['source_rows_per_second']:>12,} rows/s  "
              f"x{figures['ratio_to_baseline']:.2f} of baseline")
    print(f"pseudonymisation alone, pinned to CPU {cpu}: {pseudo_rate:,.0f} rows/s")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
