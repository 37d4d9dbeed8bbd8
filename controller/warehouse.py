"""The embedded site's warehouse: a real SeaweedFS S3 server on loopback, for the demo.

It runs only while a command that needs it runs (`bulles demo`, `bulles serve`, `bulles view
build` on an embedded home) and stops with it, killed or not; its credentials live in its own
data directory and reach the connectors as the site's `demo` credential set, never through the
catalog. One SeaweedFS per home: a short command run beside a serving site (`view build`) uses
the site's, a second site on the same home is refused, and neither touches the running one's
files. The set belongs to the demo's provider organisation: the warehouse holds the demo's data
only.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from connectors.seaweed import SeaweedError, SeaweedFS, WarehouseBusy, attach
from controller.config import DEMO_ORGANISATION, S3Credentials, Settings

CREDENTIALS = "demo"


@contextmanager
def embedded_warehouse(settings: Settings, *, share: bool = False) -> Iterator[S3Credentials | None]:
    """The home's warehouse while the block runs: started here, or with `share` the one another
    process of this home already runs. Raises SeaweedError saying why there is none."""
    if settings.warehouse != "seaweedfs":
        yield None
        return
    directory = settings.home / "seaweedfs"
    server: SeaweedFS | None = SeaweedFS(directory)
    try:
        server.start()
        creds = server.credentials()
    except WarehouseBusy as busy:
        if not share:
            raise SeaweedError(f"{busy}: another bulles site is running on the home {settings.home}; "
                               "stop it first, or give this one another --home") from None
        server, creds = None, attach(directory)
    settings.s3[CREDENTIALS] = creds.model_copy(update={"organisations": [DEMO_ORGANISATION]})
    try:
        yield creds
    finally:
        settings.s3.pop(CREDENTIALS, None)
        if server is not None:
            server.stop()
