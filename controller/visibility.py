"""Who may see where a source's data lives, and the one way documents are redacted for others.

A location (the `connector` block beyond its kind: bucket, key, endpoint, database, table,
query, root, path, URL) and a warehouse's own words about it are shown only to the providers
of the source's organisation and to admins: they run or may change it. Everybody else —
researchers, reviewers, auditors, members of the organisation without the provider role —
learns what kind of warehouse it is and what went wrong, never where. Every place that
echoes a source document (the catalog, recorded policy inputs) goes through `redact`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from catalog.vocab import Role


class Principal(Protocol):
    """What is asked of a caller (controller.auth.Principal is one): its roles and organisation.
    A protocol, so that the API's error handlers, which the authentication module needs, can
    use this module without depending on it."""

    @property
    def organisation(self) -> str | None: ...

    def has(self, *roles: Role) -> bool: ...


def sees_location(principal: Principal | None, publisher: str | None) -> bool:
    """Whether `principal` may see the locations of `publisher`'s sources and their warehouse errors."""
    if principal is None:
        return False
    if principal.has(Role.admin):
        return True
    return publisher is not None and principal.has(Role.provider) and principal.organisation == publisher


def redact_source(document: Mapping[str, Any], principal: Principal | None) -> dict[str, Any]:
    """A source document as `principal` may see it: its connector reduced to its kind for others."""
    shown = dict(document)
    connector = shown.get("connector")
    if isinstance(connector, Mapping) and not sees_location(principal, shown.get("publisher")):
        shown["connector"] = {"kind": connector.get("kind")}
    return shown


def redact(value: Any, principal: Principal | None) -> Any:
    """`value` (any JSON) with every source document in it redacted for `principal`.

    A source document is recognised by its shape (a mapping with a `connector` mapping and a
    `publisher`), wherever it sits: a policy input embeds it under a key of its package's
    choosing, and a new package must not need a new redaction. A copy is returned: recorded
    inputs keep their bytes and their hash."""
    if isinstance(value, Mapping):
        if isinstance(value.get("connector"), Mapping) and "publisher" in value:
            value = redact_source(value, principal)
        return {key: redact(item, principal) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, principal) for item in value]
    return value
