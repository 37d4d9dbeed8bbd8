"""Local Parquet, CSV and JSON files under a root the site declares.

A provider names a root and a relative path; the file must resolve (symlinks included) inside
that root, so a catalog entry cannot point the platform at /etc/shadow or at its own keys.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from connectors.base import BATCH_ROWS, ConnectorError, Probe, check_columns
from connectors.formats import NOT_PARQUET, batches_for, text_probe
from connectors.location import FileLocation


class FileConnector:
    def __init__(self, source_id: str, location: FileLocation, root: Path, declared: pa.Schema) -> None:
        self.source_id, self.location, self.declared = source_id, location, declared
        root = root.resolve()
        path = (root / location.path).resolve()
        if not path.is_relative_to(root):
            raise ConnectorError(source_id, "invalid_location", f"'{location.path}' leaves its root '{location.root}'")
        self.path = path

    def _open(self) -> pa.NativeFile:
        if not self.path.is_file():
            raise ConnectorError(self.source_id, "not_found", f"no file '{self.location.path}' under root "
                                                             f"'{self.location.root}'")
        try:
            return pa.OSFile(str(self.path), "rb")
        except OSError as exc:
            raise ConnectorError(self.source_id, "unreachable", f"cannot open '{self.location.path}' under root "
                                                                f"'{self.location.root}': {exc}") from None

    def probe(self) -> Probe:
        with self._open() as handle:
            if self.location.format == "parquet":
                try:
                    meta = pq.ParquetFile(handle).metadata
                except (pa.ArrowInvalid, OSError) as exc:
                    raise ConnectorError(self.source_id, "schema_mismatch",
                                         f"'{self.location.path}' under root '{self.location.root}' is not a "
                                         f"readable Parquet file: {str(exc).splitlines()[0]}",
                                         public=NOT_PARQUET) from None
                return Probe(meta.schema.to_arrow_schema(), meta.num_rows, exact=True)
            size = self.path.stat().st_size
            head = handle.read(64 * 1024)
        if not head.strip():
            raise ConnectorError(self.source_id, "empty", f"'{self.location.path}' under root '{self.location.root}' "
                                                          "is empty")
        return text_probe(self.location.format, head, size, self.declared)

    def scan(self, columns: Sequence[str] | None = None, batch_rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
        chosen = check_columns(self.source_id, columns, self.declared.names)
        with self._open() as handle:
            try:
                yield from batches_for(self.location.format, handle, self.source_id, self.declared, chosen, batch_rows)
            except ConnectorError as exc:
                raise exc.locate(f"'{self.location.path}' under root '{self.location.root}'") from None
