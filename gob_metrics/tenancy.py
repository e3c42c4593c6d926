"""Which tenant a request acts for: the one seam every read and write path calls.

The decision itself (X-Scope-OrgID, credentials, the default tenant) is
``gob_metrics.tenants.auth.Authenticator``; the middleware here resolves it before any
handler runs, so an endpoint that forgets to ask is still authenticated, and a salted
password hash is computed off the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from gob_metrics.keys import AUTH

TENANT = web.RequestKey("tenant", str)
# Open without a tenant or credential: liveness, readiness and self-metrics (scraped by
# Prometheus, load balancers and kubelets that know no tenant).
OPEN_PATHS = ("/-/healthy", "/-/ready", "/metrics")


def request_tenant(request: web.Request) -> str:
    """Return the tenant id the request acts for (raises 401/403/400 when it has none)."""
    tenant = request.get(TENANT)
    if tenant is None:
        tenant = request.app[AUTH].tenant_for(request.headers)
        request[TENANT] = tenant
    return tenant


@web.middleware
async def tenancy_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Authenticate every request but the open paths before its handler runs."""
    if request.path not in OPEN_PATHS:
        request[TENANT] = await request.app[AUTH].tenant_for_async(request.headers)
    return await handler(request)
