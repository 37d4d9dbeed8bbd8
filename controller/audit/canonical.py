"""Canonical JSON for audit entries.

An entry is hashed as bytes, so the same event must always serialise to the same bytes on
every machine: keys sorted, no whitespace, UTF-8, integers within 64 bits (orjson refuses
others), no NaN or infinities (orjson would write them as null, silently recording something
else than what was given: they are refused here).
The entry is rebuilt from the stored columns at verification time; any change to any column
changes the bytes.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

_OPTS = orjson.OPT_SORT_KEYS


def canonical(value: Any) -> bytes:
    _refuse_non_finite(value)
    return orjson.dumps(value, option=_OPTS)


def _refuse_non_finite(value: Any) -> None:
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{item!r} has no canonical JSON form")
        elif isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, (list, tuple)):
            pending.extend(item)


def entry_bytes(
    seq: int,
    ts: str,
    actor: str,
    action: str,
    subject_type: str,
    subject_id: str,
    decision_id: str | None,
    policy_revision: str | None,
    details: str,
) -> bytes:
    """The bytes a leaf commits to. `details` is already canonical JSON text (as stored).

    Built by concatenation in sorted key order, which equals `canonical()` of the whole entry
    but avoids re-parsing the details on every verification.
    """
    dumps = orjson.dumps
    return b"".join(
        (
            b'{"action":',
            dumps(action),
            b',"actor":',
            dumps(actor),
            b',"decision_id":',
            dumps(decision_id),
            b',"details":',
            details.encode(),
            b',"policy_revision":',
            dumps(policy_revision),
            b',"seq":',
            str(seq).encode(),
            b',"subject":{"id":',
            dumps(subject_id),
            b',"type":',
            dumps(subject_type),
            b'},"ts":',
            dumps(ts),
            b"}",
        )
    )
