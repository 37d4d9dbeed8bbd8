"""Keyed pseudonyms: HMAC-SHA256 under a key derived per project from the master secret.

HKDF with the project id as context gives each project its own key, so two projects cannot
link their pseudonyms and nobody without the master secret can recompute (or, by enumerating
the small space of INEs, reverse) them. Each distinct value is hashed once: a batch is
dictionary-encoded in Arrow, only its new distinct values go through HMAC, and the pseudonyms
are put back with one vectorised `take`.
"""

from __future__ import annotations

import hmac

import pyarrow as pa
import pyarrow.compute as pc
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PSEUDONYM_BYTES = 16  # 128 bits, written as 32 hex characters
_SALT = b"bulles/pseudonym/v1"


def project_key(master: bytes, project: str) -> bytes:
    if not project:
        raise ValueError("a pseudonymisation key needs a project")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=_SALT, info=project.encode()).derive(master)


class Pseudonymiser:
    """Pseudonyms for one project. Remembers what it has hashed (memory grows with the number of
    distinct identifiers, never with rows)."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._known: dict[str, str] = {}

    def value(self, value: str) -> str:
        known = self._known.get(value)
        if known is None:
            known = hmac.digest(self._key, value.encode(), "sha256")[:PSEUDONYM_BYTES].hex()
            self._known[value] = known
        return known

    def array(self, values: pa.Array | pa.ChunkedArray) -> pa.Array:
        """Same length and nulls as `values`; every non-null value replaced by its pseudonym."""
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
            values = values.cast(pa.string())
        encoded = pc.dictionary_encode(values)
        digest = self.value
        pseudonyms = pa.array([digest(v) for v in encoded.dictionary.to_pylist()], type=pa.string())
        return pseudonyms.take(encoded.indices)

    @property
    def distinct(self) -> int:
        return len(self._known)
