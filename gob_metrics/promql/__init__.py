"""The PromQL engine and the Prometheus query API: parse (``ast.py``) -> plan and fetch,
one selection per selector (``engine.py``) -> evaluate with numpy over all steps
(``binary.py``, ``aggregate.py``, ``functions.py``, ``rangefuncs.py``) -> encode
(``encode.py``); handlers in ``api.py``, registered by :func:`add_routes`."""

from __future__ import annotations

from aiohttp import web


def add_routes(app: web.Application) -> None:
    """Register /api/v1/query, /api/v1/query_range and /api/v1/format_query (GET, POST),
    and keep freed memory for the evaluator's large temporaries (see memory.py)."""
    from gob_metrics.promql import api, memory

    memory.keep_freed_memory()

    for path, handler in [
        ("/api/v1/query", api.query_handler),
        ("/api/v1/query_range", api.query_range_handler),
        ("/api/v1/format_query", api.format_query_handler),
    ]:
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
