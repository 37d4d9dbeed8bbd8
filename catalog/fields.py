"""Field types shared by every model that reads what a client sends: text without control
characters, and numbers that the store, canonical JSON and the policies can all hold.

One definition for every title, name, path and comment, so that each refuses the same
characters with the same message whichever endpoint it comes through. Control characters are
refused because they are never meaningful in these fields and do harm downstream: PostgreSQL
text cannot hold NUL, a NUL in a path reaches the operating system, bidirectional overrides
make a name read differently from what it is, and a lone surrogate cannot be encoded as UTF-8
(it would fail the audit entry or the answer).
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field

INT64_MAX = 2**63 - 1

# C0 and C1 controls, DEL, bidirectional embeddings, overrides and isolates, lone surrogates.
_BIDI_AND_SURROGATES = "\u202a-\u202e\u2066-\u2069\ud800-\udfff"
_LINE_FORBIDDEN = re.compile(f"[\x00-\x1f\x7f-\x9f{_BIDI_AND_SURROGATES}]")
_TEXT_FORBIDDEN = re.compile(f"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f{_BIDI_AND_SURROGATES}]")


def _refuse(pattern: re.Pattern[str], kind: str) -> AfterValidator:
    def check(value: str) -> str:
        found = pattern.search(value)
        if found is not None:
            raise ValueError(f"{kind} must not contain the control character U+{ord(found.group()):04X} "
                             f"(at position {found.start()})")
        return value

    return AfterValidator(check)


def forbidden_character(value: str) -> str | None:
    """The first character a one-line field refuses, as U+XXXX, or None: for text that is not
    a model field (a URL's path and query)."""
    found = _LINE_FORBIDDEN.search(value)
    return None if found is None else f"U+{ord(found.group()):04X}"


# One line: ids, names, titles, paths, URLs, references. No control character at all.
Line = Annotated[str, _refuse(_LINE_FORBIDDEN, "a one-line field")]
# Free text (descriptions, justifications, comments, queries): tabs and line breaks allowed.
Text = Annotated[str, _refuse(_TEXT_FORBIDDEN, "text")]

# A count of things (records, rows): what a 64-bit integer column and canonical JSON hold.
Count = Annotated[int, Field(ge=0, le=INT64_MAX)]
