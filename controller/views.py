"""Views: a source turned into exactly what a grant allows, materialised as Parquet plus a
manifest, atomically and idempotently, with an audit event either way.

`plan` is pure: from the catalog entry and the request it fixes the columns, the parameters
and the view's id (a hash of everything that determines the content), so asking twice for the
same view returns the one already built. `materialise` streams the source through the mode's
transform into a temporary directory and renames it into place only when complete: a failure
leaves nothing behind but an audit event saying why.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from catalog.fields import INT64_MAX, Line
from catalog.model import SourceSpec
from catalog.vocab import AccessMode, ColumnRole, ColumnType
from connectors.aggregate import check_request
from connectors.base import Connector, ConnectorError, DataError
from connectors.pseudonyms import Pseudonymiser, project_key
from connectors.registry import open_connector
from controller.audit.canonical import canonical
from controller.audit.log import Event
from controller.digests import file_sha256
from controller.errors import ApiError, validation_problems
from controller.store import iso, utcnow

log = logging.getLogger(__name__)

DATA_FILE = "data.parquet"
MANIFEST = "manifest.json"
SCAN_ROWS = 1 << 20  # large batches: pseudonymisation hashes each batch's distinct values once
MAX_SYNTHETIC_ROWS = 10_000_000


class _Parameters(BaseModel):
    """What a mode takes, each bounded: a value no build could use is refused here with the
    parameter named, before anything is read."""

    model_config = ConfigDict(extra="forbid")


class _NoParameters(_Parameters):
    pass


class GeneralisedParameters(_Parameters):
    k: int = Field(5, ge=2, le=1_000_000, description="k-anonymity: every class holds at least k records")


class AggregatedParameters(_Parameters):
    dimensions: list[Line] = Field(min_length=1, max_length=20, description="Columns to group by")
    measures: list[Line] = Field([], max_length=100, description="Numeric columns summed and averaged")
    threshold: int = Field(10, ge=1, le=1_000_000, description="Smallest count published")


class SyntheticParameters(_Parameters):
    size: int | None = Field(None, strict=True, ge=1, le=MAX_SYNTHETIC_ROWS, description="Rows to draw")
    seed: int = Field(0, strict=True, ge=0, le=INT64_MAX, description="Seed of the generator")


PARAMETERS: dict[AccessMode, type[_Parameters]] = {
    AccessMode.raw: _NoParameters,
    AccessMode.minimised: _NoParameters,
    AccessMode.pseudonymised: _NoParameters,
    AccessMode.generalised: GeneralisedParameters,
    AccessMode.aggregated: AggregatedParameters,
    AccessMode.synthetic: SyntheticParameters,
}


def _bad(field_name: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{field_name}: {message}", field=field_name)


def parameters_of(mode: AccessMode, given: Mapping[str, Any]) -> dict[str, Any]:
    """The mode's parameters with their defaults, or a 422 naming the first one at fault."""
    try:
        checked = PARAMETERS[mode].model_validate(dict(given))
    except ValidationError as exc:
        problem = validation_problems(exc)[0]
        name = problem["field"] if problem["field"] != "body" else ""
        where = f"parameters.{name}" if name else "parameters"
        if problem["message"].startswith("Extra inputs"):
            raise _bad(where, f"not a parameter of the {mode} mode") from None
        raise _bad(where, problem["message"]) from None
    return checked.model_dump(exclude_none=True)


@dataclass(frozen=True)
class ViewRequest:
    source: str
    mode: AccessMode
    project: str
    columns: Sequence[str] | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    grant: str | None = None
    decision_id: str | None = None


def request_for_grant(grant: Any, parameters: Mapping[str, Any]) -> ViewRequest:
    """The view a grant allows. The caller chooses only what the mode leaves open (dimensions
    and measures of an aggregate, size and seed of a synthetic sample); k and the threshold are
    the policy's, and cannot be lowered."""
    mode = AccessMode(grant.mode)
    chosen = {k: v for k, v in parameters.items() if k not in ("k", "threshold")}
    fixed = {k: grant.parameters[k] for k in ("k", "threshold")
             if k in grant.parameters and k in PARAMETERS[mode].model_fields}
    return ViewRequest(source=grant.source_id, mode=mode, project=grant.project_id, columns=list(grant.columns),
                       parameters={**chosen, **fixed}, grant=grant.id, decision_id=grant.decision_id)


def plan(spec: SourceSpec, request: ViewRequest, *, source_version: int, document_sha256: str) -> dict[str, Any]:
    """Everything that fixes a view's content, checked against the source; pure."""
    mode = AccessMode(request.mode)
    if mode not in spec.access_modes:
        raise ApiError(422, "mode_not_allowed", f"mode: source '{spec.id}' does not allow '{mode}' "
                       f"(it allows {', '.join(spec.access_modes)})", field="mode")
    if not request.project:
        raise _bad("project", "a view belongs to a project")
    roles = {c.name: c for c in spec.schema_}
    requested = list(request.columns) if request.columns is not None else [c.name for c in spec.schema_]
    for index, name in enumerate(requested):
        if name not in roles:
            raise _bad(f"columns.{index}", f"source '{spec.id}' has no column '{name}'")
    if len(set(requested)) != len(requested):
        raise _bad("columns", "a column is listed twice")
    parameters = parameters_of(mode, request.parameters)
    identifiers = [n for n in requested if roles[n].role is ColumnRole.identifier]
    if mode is AccessMode.raw:
        columns = requested
    elif mode is AccessMode.pseudonymised:
        columns = requested
        parameters["pseudonymised"] = identifiers
    else:
        columns = [n for n in requested if roles[n].role is not ColumnRole.identifier]
        parameters["dropped"] = identifiers
    if not columns:
        raise _bad("columns", f"nothing left to show once identifiers are removed in the {mode} mode")
    if mode is AccessMode.aggregated:
        dims, measures = parameters["dimensions"], parameters["measures"]
        for name in dims:
            if name not in columns:
                raise _bad("parameters.dimensions", f"'{name}' is not among the view's columns")
        for name in measures:
            if name not in columns:
                raise _bad("parameters.measures", f"'{name}' is not among the view's columns")
            if roles[name].type not in (ColumnType.int64, ColumnType.float64):
                raise _bad("parameters.measures", f"'{name}' is not numeric")
        try:  # too many dimensions, a reserved output name: the request's fault, found before reading
            check_request(dims, measures, parameters["threshold"])
        except ValueError as exc:
            raise _bad("parameters.dimensions", str(exc)) from None
        columns = [*dims, *measures]
    if mode is AccessMode.synthetic:
        parameters.setdefault("size", min(spec.number_of_records or 1000, MAX_SYNTHETIC_ROWS))
    content = {
        "source": spec.id, "source_version": source_version, "document_sha256": document_sha256,
        "mode": mode.value, "columns": columns, "parameters": parameters, "project": request.project,
        "grant": request.grant,
    }
    return {**content, "view": hashlib.sha256(canonical(content)).hexdigest()[:32], "decision_id": request.decision_id}



def _counted(batches: Iterator[pa.RecordBatch], counter: dict[str, int]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        counter["rows_in"] += batch.num_rows
        yield batch


def transform(spec: SourceSpec, view: Mapping[str, Any], connector: Connector,
              master: bytes) -> tuple[Iterator[pa.RecordBatch], dict[str, Any]]:
    """The mode's batches and the statistics its manifest reports (filled as batches flow).

    `rows_in` counts the source's rows in every mode, on the first pass only (generalisation
    reads the source twice). Modes that read the whole source before yielding (generalised,
    aggregated, synthetic) refuse an empty source here, before anything is written.
    """
    mode = AccessMode(view["mode"])
    params = view["parameters"]
    columns = view["columns"]
    stats: dict[str, Any] = {"rows_in": 0}
    passes = 0

    def scan() -> Iterator[pa.RecordBatch]:
        nonlocal passes
        passes += 1
        batches = connector.scan(columns, batch_rows=SCAN_ROWS)
        return _counted(batches, stats) if passes == 1 else batches

    if mode in (AccessMode.raw, AccessMode.minimised):
        return scan(), stats
    if mode is AccessMode.pseudonymised:
        pseudonymiser = Pseudonymiser(project_key(master, view["project"]))
        targets = set(params["pseudonymised"])

        def pseudonymised() -> Iterator[pa.RecordBatch]:
            for batch in scan():
                arrays = [pseudonymiser.array(batch.column(i)) if name in targets else batch.column(i)
                          for i, name in enumerate(batch.schema.names)]
                yield pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)
            stats["distinct_identifiers"] = pseudonymiser.distinct

        return pseudonymised(), stats
    by_name = {c.name: c for c in spec.schema_}
    if mode is AccessMode.generalised:
        from connectors.generalise import generalise

        batches, extra = generalise(scan, [by_name[c] for c in columns], k=params["k"], keep=columns)
        _refuse_empty(spec.id, stats)
        _refuse_all_suppressed(extra)
        return batches, _merge(stats, extra)
    if mode is AccessMode.aggregated:
        from connectors.aggregate import aggregate

        table, extra = aggregate(scan, params["dimensions"], params["measures"], threshold=params["threshold"])
        _refuse_empty(spec.id, stats)
        return iter(table.to_batches()), _merge(stats, extra)
    from connectors.synthetic import synthesise

    batches, extra = synthesise(scan, [by_name[c] for c in columns], size=params["size"], seed=params["seed"])
    _refuse_empty(spec.id, stats)  # a model fitted on nothing would publish rows of nulls
    return batches, _merge(stats, extra)


def _refuse_empty(source_id: str, stats: Mapping[str, Any]) -> None:
    if stats["rows_in"] == 0:
        raise ConnectorError(source_id, "empty", "the source has no rows")


def _refuse_all_suppressed(extra: Mapping[str, Any]) -> None:
    """A generalised view in which k-anonymity suppressed every record is refused rather than
    published empty: an empty file would look like an empty source, and the useful answer is
    which k and quasi-identifiers left nothing, so that the grant can be changed."""
    if extra["records_in"] and extra["records_out"] == 0:
        qis = ", ".join(extra["quasi_identifiers"]) or "none (the whole source is one class)"
        raise DataError("all_suppressed",
                        f"k-anonymity with k={extra['k_requested']} suppresses all {extra['records_in']} records: "
                        f"no combination of the quasi-identifiers ({qis}) is shared by {extra['k_requested']} "
                        "records once generalised; ask for fewer quasi-identifiers or a smaller k")


def _merge(stats: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    stats.update(extra)
    return stats


def write_view(directory: Path, view: Mapping[str, Any], batches: Iterator[pa.RecordBatch],
               stats: dict[str, Any], source_id: str) -> dict[str, Any]:
    """Stream batches into `directory/data.parquet`, then write the manifest; returns it."""
    writer: pq.ParquetWriter | None = None
    rows = 0
    path = directory / DATA_FILE
    try:
        for batch in batches:
            if writer is None:
                writer = pq.ParquetWriter(path, batch.schema, compression="zstd")
            writer.write_batch(batch)
            rows += batch.num_rows
    finally:
        if writer is not None:
            writer.close()
    _refuse_empty(source_id, stats)
    if writer is None:  # every transform yields at least one batch of a non-empty source
        raise RuntimeError("the transform produced no batch, so the view has no schema")
    schema = pq.read_schema(path)
    manifest = {
        "view": view["view"], "source": view["source"], "source_version": view["source_version"],
        "grant": view["grant"], "project": view["project"], "mode": view["mode"], "parameters": view["parameters"],
        "row_count": rows, "schema": [{"name": f.name, "type": str(f.type)} for f in schema],
        "files": [{"path": DATA_FILE, "sha256": file_sha256(path), "bytes": path.stat().st_size}],
        "statistics": stats, "policy_decision_id": view["decision_id"], "created_at": iso(utcnow()),
    }
    (directory / MANIFEST).write_bytes(orjson.dumps(manifest, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    return manifest


def views_root(home: Path) -> Path:
    return home / "views"


# `.<view id>-<tempfile's random part>`: a view being built, or one a crash cut short.
_STAGING = re.compile(r"\.[0-9a-f]{32}-[a-z0-9_]+")


def _building_lock(root: Path) -> IO[bytes]:
    """The lock builds hold shared while they have a staging directory in `root`: beside the
    root, not in it, so that a views root holds views only."""
    return open(root.with_name(root.name + ".lock"), "ab")  # noqa: SIM115 - closed by the callers


def _building(root: Path) -> IO[bytes]:
    """The building lock, held shared until the file returned is closed (waits only while
    remove_unfinished runs)."""
    lock = _building_lock(root)
    fcntl.flock(lock, fcntl.LOCK_SH)
    return lock


def remove_unfinished(home: Path) -> list[str]:
    """Remove the staging directories of builds a crash cut short; the names removed.

    A build renames its staging directory into place only when complete, so one left in the
    views root is garbage and, if it grew large, a full disk in waiting. Removed: directories
    (never through a link) directly in the root whose name is a staging name, and only when
    no build of any process on this home holds the lock (a build under way keeps its own; the
    next start finds what is left). Finished views and anything else are never touched.
    """
    root = views_root(home)
    if not root.is_dir():
        return []
    with _building_lock(root) as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("views are being built in %s: half-built ones are left for the next start", root)
            return []
        removed = []
        with os.scandir(root) as entries:
            for entry in entries:
                if _STAGING.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                    removed.append(entry.name)
        if removed:
            log.warning("removed %d half-built view(s) a crash left in %s: %s", len(removed), root, ", ".join(removed))
        return removed


def read_manifest(home: Path, view_id: str) -> dict[str, Any] | None:
    path = views_root(home) / view_id / MANIFEST
    return orjson.loads(path.read_bytes()) if path.exists() else None


def materialise_into(root: Path, view: Mapping[str, Any], build: Callable[[], tuple[Iterator[pa.RecordBatch], dict]],
                     source_id: str, on_built: Callable[[dict[str, Any]], Any]) -> tuple[dict[str, Any], bool]:
    """(manifest, created): reuse a complete view, or build one in a temporary directory and
    rename it into place. `on_built` runs between the two (the audit event, durable before the
    view exists). A failed build leaves no directory behind."""
    final = root / view["view"]
    if (final / MANIFEST).exists():
        return orjson.loads((final / MANIFEST).read_bytes()), False
    root.mkdir(parents=True, exist_ok=True)
    building = _building(root)
    staging = Path(tempfile.mkdtemp(prefix=f".{view['view']}-", dir=root))
    try:
        batches, stats = build()
        manifest = write_view(staging, view, batches, stats, source_id)
        on_built(manifest)
        os.chmod(staging, 0o755)
        try:
            os.rename(staging, final)
        except OSError:  # built concurrently by someone else: theirs is complete, keep it
            shutil.rmtree(staging, ignore_errors=True)
            return orjson.loads((final / MANIFEST).read_bytes()), False
        return manifest, True
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        building.close()


def materialised_event(actor: str, manifest: Mapping[str, Any]) -> Event:
    return Event(actor, "view.materialised", "view", manifest["view"], {
        "source": manifest["source"], "source_version": manifest["source_version"], "mode": manifest["mode"],
        "project": manifest["project"], "grant": manifest["grant"], "rows": manifest["row_count"],
        "files": {f["path"]: f["sha256"] for f in manifest["files"]},
    }, decision_id=manifest["policy_decision_id"])


def failed_event(actor: str, view: Mapping[str, Any], error: ConnectorError | ApiError) -> Event:
    """Only the code and the source (and, for a warehouse error, its incident id and field):
    messages may quote data values and name locations, which the log never holds; the incident
    id finds the detail in the server's log."""
    details = {"source": view["source"], "mode": view["mode"], "project": view["project"], "grant": view["grant"],
               "error": getattr(error, "code", "error")}
    if isinstance(error, ConnectorError):
        details["incident"] = error.incident
        if error.field is not None:
            details["field"] = error.field
    return Event(actor, "view.failed", "view", view["view"], details, decision_id=view.get("decision_id"))


def probe_refused_event(actor: str, spec: SourceSpec, error: ConnectorError) -> Event:
    """A probe the ownership rule stopped: who tried, on which source, which field is at fault."""
    return Event(actor, "source.probe_refused", "source", spec.id, {
        "publisher": spec.publisher, "error": error.code, "field": error.field, "incident": error.incident})


def probe(platform: Any, actor: str, spec: SourceSpec, *, scan: bool = False) -> dict[str, Any]:
    """What the warehouse holds for `spec`: the schema found, the rows, declared columns it lacks.

    With `scan`, every row is also read as a view reads them, so that a value deep in the source
    that does not fit its declaration is found and reported, in full, to those who may probe.
    A location the ownership rule refuses is recorded as `source.probe_refused`."""
    try:
        connector = open_connector(spec, platform.settings)
        found = connector.probe()
        scanned = sum(batch.num_rows for batch in connector.scan(batch_rows=SCAN_ROWS)) if scan else None
    except ConnectorError as exc:
        if exc.code == "location_refused":
            platform.audit.append(probe_refused_event(actor, spec, exc))
        raise
    declared = {c.name: c.type.value for c in spec.schema_}
    answer = {"source": spec.id, "rows": found.rows, "exact": found.exact,
              "columns": [{"name": f.name, "type": str(f.type), "declared": declared.get(f.name)} for f in found.schema],
              "missing": [name for name in declared if name not in found.schema.names]}
    if scanned is not None:
        answer["scanned_rows"] = scanned
    return answer


def build_error(source_id: str, mode: str, exc: Exception) -> ConnectorError | ApiError:
    """Any failure of a build as an error naming the source and the problem.

    Warehouse problems keep their ConnectorError (answered as `warehouse_<code>`); content a
    transform refuses is a 409 with the transform's code; anything else is our bug, logged
    with its traceback and answered as a 500 that still names the source, never quoting the
    exception's text (it may hold data values the caller may not see, e.g. in a synthetic view).
    """
    if isinstance(exc, (ConnectorError, ApiError)):
        return exc
    if isinstance(exc, DataError):
        return ApiError(409, exc.code, f"source '{source_id}': {exc.message}", source=source_id)
    log.error("building a %s view of source '%s' failed", mode, source_id, exc_info=exc)
    return ApiError(500, "internal_error", f"source '{source_id}': building the {mode} view failed unexpectedly "
                    f"({type(exc).__name__}); it has been logged", source=source_id)


def materialise(platform: Any, actor: str, request: ViewRequest) -> tuple[dict[str, Any], bool]:
    """Plan, build and record a view of a registered source; (manifest, created).

    Whatever goes wrong once the plan is accepted (the warehouse, the content, a bug) appends a
    `view.failed` event and leaves no view directory; the request checks before that change
    nothing, as for any refused request."""
    from controller import sources
    from controller.home import master_secret

    with platform.sessions() as session:
        row = sources.get(session, request.source)
        if row.status != sources.ACTIVE:
            raise ApiError(409, "source_retired", f"source '{request.source}' is retired")
        document, version = dict(row.document), row.version
    spec = SourceSpec.model_validate(document)
    view = plan(spec, request, source_version=version, document_sha256=sources.document_digest(document))
    home = platform.settings.home
    try:
        connector = open_connector(spec, platform.settings)
        return materialise_into(
            views_root(home), view,
            lambda: transform(spec, view, connector, master_secret(home)), spec.id,
            on_built=lambda manifest: platform.audit.append(materialised_event(actor, manifest)),
        )
    except Exception as exc:  # noqa: BLE001 - every failure is reported, and recorded, the same way
        error = build_error(spec.id, view["mode"], exc)
        platform.audit.append(failed_event(actor, view, error))
        if error is exc:
            raise
        raise error from exc
