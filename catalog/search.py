"""Full-text search over catalog entries, portable across SQLite and PostgreSQL.

Each entry keeps a normalised text (lowercase, accents folded) so that "eleve" finds
"élève" in either database with a plain LIKE; ranking weighs where a term was found.
A catalog holds thousands of entries, not millions: this is the right size of tool.
"""

from __future__ import annotations

import re
import unicodedata
from catalog.model import SourceSpec

_WORD = re.compile(r"[\w'-]+")
WEIGHTS = {"title": 5, "keywords": 4, "columns": 2, "description": 1}


def normalise(text: str) -> str:
    """Casefolded, accents removed, white space folded to single spaces (no newlines)."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).split())


def terms(query: str) -> list[str]:
    return [normalise(t) for t in _WORD.findall(query) if t.strip("'-")]


def fields(spec: SourceSpec, publisher_name: str = "") -> dict[str, str]:
    return {
        "title": normalise(spec.title),
        "keywords": normalise(" ".join([*spec.keywords, *spec.themes, publisher_name, spec.publisher])),
        "columns": normalise(" ".join(c.name + " " + (c.description or "") for c in spec.schema_)),
        "description": normalise(spec.description),
    }


def search_text(spec: SourceSpec, publisher_name: str = "") -> str:
    """One line per weighted field, in the order of WEIGHTS."""
    parts = fields(spec, publisher_name)
    return "\n".join(parts[name] for name in WEIGHTS)


def rank(text: str, query_terms: list[str]) -> int:
    """Sum of the weights of the fields each term appears in (presence, not count, so that a
    schema repeating a word in fifty column names does not outweigh a title)."""
    lines = text.split("\n")
    return sum(weight for term in query_terms for weight, line in zip(WEIGHTS.values(), lines) if term in line)


def like_pattern(term: str) -> str:
    escaped = term.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"
