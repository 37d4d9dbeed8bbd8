"""From a catalog entry and the site's secrets to a working connector.

Every read of a warehouse comes through here (probes, views, the airlock's identifier check),
so this is where the ownership rule is asked again at use time: the site's configuration may
have taken a location away from its source's organisation since the source was registered.
"""

from __future__ import annotations

from catalog.model import SourceSpec
from connectors.base import Connector, ConnectorError, declared_schema
from connectors.ownership import refusal, url_refusal
from controller.config import Settings


def open_connector(spec: SourceSpec, settings: Settings) -> Connector:
    declared = declared_schema([(c.name, c.type) for c in spec.schema_])
    location = spec.connector
    refused = refusal(location, spec.publisher, settings)
    if refused is not None:
        raise ConnectorError(spec.id, "location_refused", f"{refused.field}: {refused.message}", field=refused.field)
    # The rule above holds only for locations the site declares: each lookup below succeeds.
    if location.kind == "file":
        from connectors.file import FileConnector

        return FileConnector(spec.id, location, settings.file_root(location.root), declared)
    if location.kind == "s3":
        from connectors.s3 import S3Connector

        return S3Connector(spec.id, location, settings.s3[location.credentials or "default"], declared)
    if location.kind == "postgresql":
        from connectors.postgresql import PostgresqlConnector

        return PostgresqlConnector(spec.id, location, settings.databases[location.database].url, declared)
    if location.kind == "http":
        from connectors.http import HttpConnector

        def refuse_url(url: str) -> str | None:
            refused_hop = url_refusal(url, spec.publisher, settings.http_hosts)
            return None if refused_hop is None else refused_hop.message

        return HttpConnector(spec.id, location, declared, refuse_url=refuse_url,
                             allow_private=settings.http_allow_private, ca_bundle=settings.http_ca_bundle)
    raise ConnectorError(spec.id, "unsupported", f"no connector for kind '{location.kind}'")
