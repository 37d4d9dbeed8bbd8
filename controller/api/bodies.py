"""Documents the API reads by hand (a source in JSON or YAML): parsed within bounds and turned
into plain JSON data, or refused with the place at fault.

Whoever may call an endpoint may send it anything, so a document is parsed with limits that
hold whatever it contains: at most `MAX_DEPTH` levels of nesting and `MAX_VALUES` values once
YAML aliases are expanded (an alias names a whole subtree, so a few hundred of them can stand
for billions of values). YAML is read with libyaml (`CSafeLoader`) when PyYAML has it, and its
event stream is checked before anything is built, so that neither a deep document nor an alias
bomb costs more than reading it once. The result holds only what JSON can carry and the audit
log can encode: YAML's dates become ISO 8601 text; numbers beyond 64 bits, NaN and infinities,
binary values, sets and keys that are not text are refused, each naming its field. Parsing is
CPU work: callers run it off the event loop.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import orjson
import yaml

from catalog.fields import INT64_MAX
from controller.errors import ApiError

MAX_DEPTH = 32
MAX_VALUES = 100_000
YAML_TYPES = ("application/yaml", "application/x-yaml", "text/yaml")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_document(raw: bytes, content_type: str) -> dict[str, Any]:
    """A JSON or YAML mapping as plain JSON data; ApiError 400/415/422 otherwise."""
    if not raw.strip():
        raise ApiError(400, "empty_body", "the request body is empty; send a source document")
    if content_type in YAML_TYPES:
        data = _yaml(raw)
    elif content_type == "application/json":
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ApiError(400, "invalid_json", f"the body is not valid JSON: {exc}") from None
    else:
        raise ApiError(415, "unsupported_media_type", f"send application/json or application/yaml, not {content_type}")
    if not isinstance(data, dict):
        raise _refused("body", "a source document is a mapping")
    return plain(data)


def _yaml(raw: bytes) -> Any:
    try:
        _check_events(raw)
        return yaml.load(raw, Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ApiError(400, "invalid_yaml", f"the body is not valid YAML{where}") from None


def _check_events(raw: bytes) -> None:
    """Depth and expanded size from the parser's events alone, before any node is built.

    An alias counts as many values as the node it names; an alias to a node still open (a
    recursive structure) is refused, as JSON cannot hold one."""
    sizes: dict[str, int] = {}
    open_nodes: list[tuple[str | None, int]] = []  # (anchor, values counted when it opened)
    total = 0
    for event in yaml.parse(raw, Loader=_Loader):
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(open_nodes) >= MAX_DEPTH:
                raise _refused("body", f"nested deeper than {MAX_DEPTH} levels")
            open_nodes.append((event.anchor, total))
            total += 1
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            anchor, before = open_nodes.pop()
            if anchor is not None:
                sizes[anchor] = total - before
        elif isinstance(event, yaml.ScalarEvent):
            total += 1
            if event.anchor is not None:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.AliasEvent):
            if event.anchor not in sizes:
                raise _refused("body", f"the alias *{event.anchor} refers to a node that contains it")
            total += sizes[event.anchor]
        if total > MAX_VALUES:
            raise _refused("body", f"holds more than {MAX_VALUES:,} values (aliases expanded)")


def plain(document: dict[str, Any]) -> dict[str, Any]:
    """The document with dates as ISO 8601 text, checked to hold only what canonical JSON can
    encode; changed in place (it is the parser's own) and returned. Iterative: the depth is
    checked here too, for JSON."""
    pending: list[tuple[Any, str, int]] = [(document, "", 1)]
    while pending:
        container, path, depth = pending.pop()
        if depth > MAX_DEPTH:
            raise _refused(path or "body", f"nested deeper than {MAX_DEPTH} levels")
        items = container.items() if isinstance(container, dict) else enumerate(container)
        for key, value in list(items):
            if isinstance(container, dict) and not isinstance(key, str):
                raise _refused(path or "body", f"a key must be text, not {key!r}"[:200])
            where = f"{path}.{key}" if path else str(key)
            if isinstance(value, (dict, list)):
                pending.append((value, where, depth + 1))
            else:
                container[key] = _scalar(value, where)
    return document


def _scalar(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, int):
        if not -INT64_MAX - 1 <= value <= INT64_MAX:
            raise _refused(where, "a whole number beyond 64 bits")
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refused(where, "not a finite number")
        return value
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    raise _refused(where, f"a {type(value).__name__} value has no JSON form")


def _refused(where: str, message: str) -> ApiError:
    return ApiError(422, "validation_error", f"{where}: {message}", field=where)
