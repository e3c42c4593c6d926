"""Which tenant a request acts for.

Multi-tenancy (X-Scope-OrgID, authentication) is not built yet: every request acts for
the single default tenant, ``write.default_tenant``. Every read and write path asks this
function, so tenancy arrives in one place.
"""

from __future__ import annotations

from aiohttp import web

from gob_metrics.keys import CONFIG


def request_tenant(request: web.Request) -> str:
    """Return the tenant id the request acts for."""
    return request.app[CONFIG].write.default_tenant
