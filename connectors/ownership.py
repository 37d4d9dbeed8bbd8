"""Whose warehouse a location is: the rule that a source names only its own organisation's.

A location names a credential set, a database, a file root or an HTTP host that the site
declares; the site's configuration says which organisations each belongs to. Without this
rule a provider of one organisation could register a source on another's bucket, declare it
open, and have the platform read that data for anyone. The rule is one pure function, used
when a source is registered or updated (a 422 naming the field) and every time a connector is
opened (the configuration may have changed since), so that no path reads a location its
source's organisation does not hold.

Refusals speak only of what the caller's own organisation has: "organisation B has no
credential set 'demo'" is said alike whether 'demo' is A's or does not exist, so the answer
tells nothing about other organisations' warehouses.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from pydantic import TypeAdapter, ValidationError

from connectors.location import FileLocation, HttpLocation, Location, PostgresqlLocation, S3Location
from controller.config import S3Credentials, Settings

EVERYONE = "*"
_DEFAULT_PORTS = {"http": 80, "https": 443}


@dataclass(frozen=True)
class Refusal:
    """Why a location is not its source's organisation's: the faulty field and a sentence."""

    field: str
    message: str


def refusal(location: Location, organisation: str, settings: Settings) -> Refusal | None:
    """None when `organisation` may name `location` under `settings`, else why not."""
    if isinstance(location, S3Location):
        return _s3(location, organisation, settings.s3)
    if isinstance(location, PostgresqlLocation):
        database = settings.databases.get(location.database)
        if database is None or organisation not in database.organisations:
            return Refusal("connector.database",
                           f"organisation '{organisation}' has no database '{location.database}' on this site")
        return _schema(location, database.schemas)
    if isinstance(location, FileLocation):
        root = settings.roots().get(location.root)
        if root is None or organisation not in root.organisations:
            return Refusal("connector.root", f"organisation '{organisation}' has no file root '{location.root}' on this site")
        return None
    if isinstance(location, HttpLocation):
        return url_refusal(location.url, organisation, settings.http_hosts)
    return Refusal("connector.kind", f"no rule for locations of kind '{location.kind}'")


def _s3(location: S3Location, organisation: str, sets: Mapping[str, S3Credentials]) -> Refusal | None:
    name = location.credentials or "default"
    credentials = sets.get(name)
    if credentials is None or organisation not in credentials.organisations:
        return Refusal("connector.credentials",
                       f"organisation '{organisation}' has no S3 credential set '{name}' on this site")
    if credentials.buckets is None:
        return None
    path = location.key if location.key is not None else location.prefix
    assert path is not None  # the location model requires one of them
    if any(_covers(entry, location.bucket, path) for entry in credentials.buckets):
        return None
    covered = ", ".join(credentials.buckets) or "nothing"
    if not any(entry.partition("/")[0] == location.bucket for entry in credentials.buckets):
        return Refusal("connector.bucket", f"credential set '{name}' does not cover bucket '{location.bucket}' "
                                           f"(it covers {covered})")
    field = "connector.key" if location.key is not None else "connector.prefix"
    return Refusal(field, f"credential set '{name}' does not cover '{path}' in bucket '{location.bucket}' "
                          f"(it covers {covered})")


def _covers(entry: str, bucket: str, path: str) -> bool:
    """Whether `bucket/prefix` (or a whole `bucket`) holds `path`. A prefix is a directory, and
    a path with `.` or `..` segments never matches one: some S3 servers clean such keys into
    another directory's."""
    entry_bucket, _, prefix = entry.partition("/")
    if entry_bucket != bucket:
        return False
    if not prefix.strip("/"):
        return True
    if any(part in (".", "..") for part in path.split("/")):
        return False
    return path.startswith(prefix.rstrip("/") + "/")


def _schema(location: PostgresqlLocation, schemas: Sequence[str] | None) -> Refusal | None:
    if schemas is None:
        return None
    allowed = ", ".join(schemas) or "none"
    if location.table is None:
        return Refusal("connector.query", f"database '{location.database}' is limited to tables of schemas "
                                          f"{allowed}: name a table, not a query")
    schema, _, _table = location.table.rpartition(".")
    if schema not in schemas:
        return Refusal("connector.table", f"database '{location.database}' is limited to tables of schemas "
                                          f"{allowed}: give the table as schema.table in one of them")
    return None


def url_refusal(url: str, organisation: str, hosts: Mapping[str, Sequence[str]]) -> Refusal | None:
    """Whether `organisation` may fetch `url` (also asked of every redirect's target).

    An entry `host:port` decides for that port before an entry `host` decides for every port,
    so that one service of a host can be owned while the host's others are open to all."""
    refused = Refusal("connector.url", f"this site does not open host '{_host_of(url)}' to organisation "
                                       f"'{organisation}'")
    try:
        parts = urlsplit(url)
        host, port = (parts.hostname or "").lower(), parts.port or _DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return refused
    by_port, by_host = None, None
    for entry, allowed in hosts.items():
        declared = urlsplit(f"//{entry}")
        if (declared.hostname or "").lower() != host:
            continue
        if declared.port is None:
            by_host = allowed
        elif declared.port == port:
            by_port = allowed
    allowed = by_port if by_port is not None else by_host
    if allowed is not None and (EVERYONE in allowed or organisation in allowed):
        return None
    return refused


def _host_of(url: str) -> str:
    try:
        return urlsplit(url).netloc.rpartition("@")[2] or url
    except ValueError:
        return url


_LOCATION: TypeAdapter[Location] = TypeAdapter(Location)


def refused_sources(sources: Iterable[tuple[str, str, Mapping[str, Any]]],
                    settings: Settings) -> list[tuple[str, Refusal]]:
    """The (id, refusal) of each (id, publisher, stored connector) that breaks the rule: what
    the site reports at start, after its configuration changed under registered sources."""
    refused = []
    for source_id, publisher, connector in sources:
        try:
            location = _LOCATION.validate_python(connector)
        except ValidationError:  # stored under an older model: unusable too, and no reason to stop the site
            refused.append((source_id, Refusal("connector", "the stored location is no longer a valid one")))
            continue
        found = refusal(location, publisher, settings)
        if found is not None:
            refused.append((source_id, found))
    return refused
