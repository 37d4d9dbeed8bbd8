"""The embedded site's warehouse: a real SeaweedFS S3 server on loopback, for the demo.

It runs only while a command that needs it runs (`bulles demo`, `bulles serve`, `bulles view
build` on an embedded home) and stops with it; its credentials live in its own data directory
and reach the connectors as the site's `demo` credential set, never through the catalog. The
set belongs to the demo's provider organisation: the warehouse holds the demo's data only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from connectors.seaweed import SeaweedFS
from controller.config import DEMO_ORGANISATION, Settings

CREDENTIALS = "demo"


@contextmanager
def embedded_warehouse(settings: Settings) -> Iterator[SeaweedFS | None]:
    if settings.warehouse != "seaweedfs":
        yield None
        return
    with SeaweedFS(settings.home / "seaweedfs") as weed:
        settings.s3[CREDENTIALS] = weed.credentials().model_copy(update={"organisations": [DEMO_ORGANISATION]})
        try:
            yield weed
        finally:
            settings.s3.pop(CREDENTIALS, None)
