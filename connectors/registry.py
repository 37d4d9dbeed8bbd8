"""From a catalog entry and the site's secrets to a working connector."""

from __future__ import annotations

from catalog.model import SourceSpec
from connectors.base import Connector, ConnectorError, declared_schema
from controller.config import Settings


def open_connector(spec: SourceSpec, settings: Settings) -> Connector:
    declared = declared_schema([(c.name, c.type) for c in spec.schema_])
    location = spec.connector
    if location.kind == "file":
        from connectors.file import FileConnector

        try:
            root = settings.file_root(location.root)
        except KeyError:
            raise ConnectorError(spec.id, "invalid_location", f"this site declares no file root '{location.root}'") from None
        return FileConnector(spec.id, location, root, declared)
    if location.kind == "s3":
        from connectors.s3 import S3Connector

        name = location.credentials or "default"
        credentials = settings.s3.get(name)
        if credentials is None:
            raise ConnectorError(spec.id, "unauthorised", f"this site has no S3 credential set '{name}'")
        return S3Connector(spec.id, location, credentials, declared)
    if location.kind == "postgresql":
        from connectors.postgresql import PostgresqlConnector

        url = settings.databases.get(location.database)
        if url is None:
            raise ConnectorError(spec.id, "invalid_location", f"this site declares no database '{location.database}'")
        return PostgresqlConnector(spec.id, location, url, declared)
    if location.kind == "http":
        from connectors.http import HttpConnector

        return HttpConnector(spec.id, location, declared, allow_private=settings.http_allow_private,
                             ca_bundle=settings.http_ca_bundle)
    raise ConnectorError(spec.id, "unsupported", f"no connector for kind '{location.kind}'")
