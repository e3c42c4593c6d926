"""The read path: remote_read and the Prometheus metadata API over the shared selector
layer (``select.py``), registered on the app by :func:`add_routes`."""

from __future__ import annotations

import time

from aiohttp import web

from gob_metrics.read import api
from gob_metrics.read.remote_read import read_handler


def add_routes(app: web.Application) -> None:
    """Register every read endpoint; GET and POST (form) for the JSON API."""
    app[api.START_TIME] = time.time()
    app.router.add_post("/api/v1/read", read_handler)
    for path, handler in [
        ("/api/v1/series", api.series_handler),
        ("/api/v1/labels", api.labels_handler),
        ("/api/v1/label/{name}/values", api.label_values_handler),
        ("/api/v1/metadata", api.metadata_handler),
        ("/api/v1/status/buildinfo", api.buildinfo_handler),
        ("/api/v1/status/flags", api.flags_handler),
        ("/api/v1/status/runtimeinfo", api.runtimeinfo_handler),
    ]:
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
