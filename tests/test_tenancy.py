"""Tenancy: tenant ids, credentials, and isolation of tenants on every endpoint."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import pytest
import snappy

from gob_metrics.app import build_app
from gob_metrics.config import Credential, TenancyConfig
from gob_metrics.errors import BadRequest, Forbidden, Unauthorized
from gob_metrics.proto.prometheus import remote_pb2, types_pb2
from gob_metrics.tenants.auth import (
    Authenticator,
    hash_secret,
    parse_secret_hash,
    tenant_id_problem,
)
from tests.writes import HEADERS, body

NOW = int(time.time() * 1000)
TOKEN_A, TOKEN_B = "token-of-team-a-0123456789", "token-of-team-b-9876543210"
CREDENTIALS = [
    {"tenant": "team-a", "bearer_token_hash": hash_secret(TOKEN_A, "sha256")},
    {"tenant": "team-b", "bearer_token_hash": hash_secret(TOKEN_B, "sha256")},
    {"tenant": "team-a", "username": "alice",
     "password_hash": hash_secret("wonderland", iterations=1000)},
    {"tenant": "team-b", "username": "bob", "password_hash": hash_secret("builder", "sha256")},
]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# ------------------------------------------------------------------------ tenant ids

@pytest.mark.parametrize(("tenant", "ok"), [
    ("team-a", True), ("a", True), ("x" * 150, True), ("A.b_c-d!e*f'g(h)", True),
    ("", False), ("x" * 151, False), (".", False), ("..", False), ("a|b", False),
    ("a b", False), ("a/b", False), ("ä", False), ("a:b", False), ("a\nb", False),
], ids=["plain", "one-char", "150-chars", "every-symbol", "empty", "151-chars", "dot",
        "dotdot", "pipe-federation", "space", "slash", "non-ascii", "colon", "newline"])
def test_tenant_id_rules(tenant: str, ok: bool) -> None:
    assert (tenant_id_problem(tenant) is None) is ok


# ------------------------------------------------------------- the decision, unit-level

def auth(multitenancy: bool = False, creds: list[dict[str, str]] | None = None) -> Authenticator:
    return Authenticator(TenancyConfig(multitenancy_enabled=multitenancy,
                                       credentials=[Credential(**c) for c in creds or []]))


# (id, multitenancy, credentials?, headers, tenant or error type)
DECISIONS: list[tuple[str, bool, bool, dict[str, str], str | type[Exception]]] = [
    ("off-default", False, False, {}, "anonymous"),
    ("off-header-ignored", False, False, {"X-Scope-OrgID": "team-a"}, "anonymous"),
    ("on-header", True, False, {"X-Scope-OrgID": "team-a"}, "team-a"),
    ("on-no-header", True, False, {}, Unauthorized),
    ("on-empty-header", True, False, {"X-Scope-OrgID": ""}, Unauthorized),
    ("on-invalid-header", True, False, {"X-Scope-OrgID": "a|b"}, BadRequest),
    ("auth-bearer", True, True, {"Authorization": f"Bearer {TOKEN_A}"}, "team-a"),
    ("auth-bearer-other", True, True, {"Authorization": f"Bearer {TOKEN_B}"}, "team-b"),
    ("auth-bearer-same-header", True, True,
     {"Authorization": f"Bearer {TOKEN_A}", "X-Scope-OrgID": "team-a"}, "team-a"),
    ("auth-bearer-other-header", True, True,
     {"Authorization": f"Bearer {TOKEN_A}", "X-Scope-OrgID": "team-b"}, Forbidden),
    ("auth-bearer-invalid-header", True, True,
     {"Authorization": f"Bearer {TOKEN_A}", "X-Scope-OrgID": "../x"}, BadRequest),
    ("auth-bearer-wrong", True, True, {"Authorization": "Bearer nope"}, Unauthorized),
    ("auth-none", True, True, {}, Unauthorized),
    ("auth-header-only", True, True, {"X-Scope-OrgID": "team-a"}, Unauthorized),
    ("auth-basic", True, True, {"Authorization": basic("alice", "wonderland")}, "team-a"),
    ("auth-basic-sha256", True, True, {"Authorization": basic("bob", "builder")}, "team-b"),
    ("auth-basic-wrong-password", True, True, {"Authorization": basic("alice", "x")},
     Unauthorized),
    ("auth-basic-unknown-user", True, True, {"Authorization": basic("eve", "wonderland")},
     Unauthorized),
    ("auth-basic-other-header", True, True,
     {"Authorization": basic("alice", "wonderland"), "X-Scope-OrgID": "team-b"}, Forbidden),
    ("auth-basic-malformed", True, True, {"Authorization": "Basic !!!"}, Unauthorized),
    ("auth-other-scheme", True, True, {"Authorization": f"Token {TOKEN_A}"}, Unauthorized),
    ("auth-without-multitenancy", False, True, {"Authorization": f"Bearer {TOKEN_B}"},
     "team-b"),
]


@pytest.mark.parametrize(("multitenancy", "with_creds", "headers", "expected"),
                         [c[1:] for c in DECISIONS], ids=[c[0] for c in DECISIONS])
async def test_tenant_decision(multitenancy: bool, with_creds: bool, headers: dict[str, str],
                               expected: str | type[Exception]) -> None:
    a = auth(multitenancy, CREDENTIALS if with_creds else None)
    for resolve in (a.tenant_for, a.tenant_for_async):
        if isinstance(expected, str):
            result = resolve(headers)
            got = await result if not isinstance(result, str) else result
            assert got == expected
        else:
            with pytest.raises(expected):
                result = resolve(headers)
                if not isinstance(result, str):
                    await result


def test_secret_hashes_verify_and_reject() -> None:
    for scheme in ("sha256", "pbkdf2_sha256"):
        h = parse_secret_hash(hash_secret("s3cret", scheme, iterations=1000))
        assert h.verify(b"s3cret") and not h.verify(b"s3cret ")
    for bad in ("md5:abc", "sha256:xyz", "pbkdf2_sha256$x$a$b", "pbkdf2_sha256$10$!!$AAAA"):
        with pytest.raises(ValueError):
            parse_secret_hash(bad)


@pytest.mark.parametrize(("creds", "message"), [
    ([{"tenant": "a|b", "bearer_token_hash": hash_secret("t", "sha256")}],
     "tenancy.credentials[0].tenant"),
    ([{"tenant": "a"}], "set either bearer_token_hash, or username and password_hash"),
    ([{"tenant": "a", "bearer_token_hash": "plain"}], "tenancy.credentials[0].bearer_token_hash"),
    ([{"tenant": "a", "bearer_token_hash": hash_secret("t", iterations=10)}], "sha256"),
    ([{"tenant": "a", "username": "u", "password_hash": "x"}],
     "tenancy.credentials[0].password_hash"),
    ([{"tenant": "a", "username": "u", "password_hash": hash_secret("p", "sha256")}] * 2,
     "tenancy.credentials[1].username"),
    ([{"tenant": "a", "bearer_token_hash": hash_secret("t", "sha256")}] * 2,
     "the same token appears twice"),
    ([{"tenant": "a", "nope": 1}], "unknown setting tenancy.credentials[0].nope"),
], ids=["bad-tenant", "no-secret", "token-not-hash", "token-pbkdf2", "bad-password-hash",
        "duplicate-user", "duplicate-token", "unknown-field"])
def test_credential_config_errors(make_config: Any, creds: list[dict[str, str]],
                                  message: str) -> None:
    from gob_metrics.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        make_config(**{"tenancy.credentials": creds})
    assert message in str(err.value)


def test_credentials_from_environment_yaml() -> None:
    from gob_metrics.config import load_config

    h = hash_secret(TOKEN_A, "sha256")
    cfg = load_config(env={"GOB_TENANCY__CREDENTIALS": f"[{{tenant: team-a, "
                                                       f"bearer_token_hash: '{h}'}}]"})
    assert cfg.tenancy.credentials == [Credential(tenant="team-a", bearer_token_hash=h)]


# -------------------------------------------------------------------- over HTTP

def series(name: str, i: int = 0) -> tuple[dict[str, str], list[tuple[int, float]]]:
    return {"__name__": name, "job": "j", "instance": f"i{i}"}, [(NOW - 1000, 1.0)]


# (id, headers, write status, status of GET /api/v1/status/tsdb)
HTTP_AUTH = [
    ("no-credential", {}, 401),
    ("wrong-token", {"Authorization": "Bearer wrong"}, 401),
    ("token", {"Authorization": f"Bearer {TOKEN_A}"}, 204),
    ("token-own-tenant-header", {"Authorization": f"Bearer {TOKEN_A}",
                                 "X-Scope-OrgID": "team-a"}, 204),
    ("token-other-tenant-header", {"Authorization": f"Bearer {TOKEN_A}",
                                   "X-Scope-OrgID": "team-b"}, 403),
    ("basic", {"Authorization": basic("alice", "wonderland")}, 204),
    ("basic-wrong-password", {"Authorization": basic("alice", "nope")}, 401),
    ("basic-other-tenant-header", {"Authorization": basic("alice", "wonderland"),
                                   "X-Scope-OrgID": "team-b"}, 403),
    ("header-without-credential", {"X-Scope-OrgID": "team-a"}, 401),
]


@pytest.fixture
async def auth_client(aiohttp_client: Any, make_config: Any) -> Any:
    cfg = make_config(**{"tenancy.multitenancy_enabled": "true",
                         "tenancy.credentials": CREDENTIALS})
    return await aiohttp_client(build_app(cfg))


async def test_auth_over_http(auth_client: Any) -> None:
    """One app for the whole table: each row on the write and a JSON endpoint."""
    for case, headers, status in HTTP_AUTH:
        resp = await auth_client.post("/api/v1/write", data=body([series("up")]),
                                      headers={**HEADERS, **headers})
        assert resp.status == status, (case, await resp.text())
        if status == 401:
            assert resp.headers["WWW-Authenticate"] in ('Bearer realm="gob-metrics"',
                                                        'Basic realm="gob-metrics"'), case
        resp = await auth_client.get("/api/v1/status/tsdb", headers=headers)
        assert resp.status == (200 if status == 204 else status), case
        if status != 204:
            js = await resp.json()
            assert js["status"] == "error", case
    for open_path in ("/-/healthy", "/-/ready", "/metrics"):
        assert (await auth_client.get(open_path)).status == 200, open_path
    metrics = await (await auth_client.get("/metrics")).text()
    assert 'gob_http_requests_total{code="401",handler="/api/v1/write"} 4.0' in metrics
    assert 'gob_http_requests_total{code="403",handler="/api/v1/write"} 2.0' in metrics


async def test_multitenancy_header_over_http(aiohttp_client: Any, make_config: Any) -> None:
    client = await aiohttp_client(build_app(make_config(**{
        "tenancy.multitenancy_enabled": "true"})))
    for headers, status, text in [
        ({}, 401, "no org id"),
        ({"X-Scope-OrgID": "a|b"}, 400, "invalid tenant id 'a|b'"),
        ({"X-Scope-OrgID": ".."}, 400, "'..' is reserved"),
        ({"X-Scope-OrgID": "x" * 151}, 400, "151 characters, at most 150"),
        ({"X-Scope-OrgID": "team-a"}, 204, ""),
    ]:
        resp = await client.post("/api/v1/write", data=body([series("up")]),
                                 headers={**HEADERS, **headers})
        assert resp.status == status
        assert text in await resp.text()


# --------------------------------------------------------------- isolation table

def _names_tsdb(js: Any) -> set[str]:
    return {x["name"] for x in js["data"]["seriesCountByMetricName"]}


async def _remote_read(client: Any, headers: dict[str, str]) -> set[str]:
    req = remote_pb2.ReadRequest(queries=[remote_pb2.Query(
        start_timestamp_ms=NOW - 3_600_000, end_timestamp_ms=NOW + 60_000,
        matchers=[types_pb2.LabelMatcher(type=types_pb2.LabelMatcher.RE, name="__name__",
                                         value=".+")])])
    resp = await client.post("/api/v1/read", data=snappy.compress(req.SerializeToString()),
                             headers={**headers, "Content-Encoding": "snappy",
                                      "Content-Type": "application/x-protobuf"})
    assert resp.status == 200, await resp.text()
    out = remote_pb2.ReadResponse()
    out.ParseFromString(snappy.uncompress(await resp.read()))
    return {lab.value for r in out.results for ts in r.timeseries for lab in ts.labels
            if lab.name == "__name__"}


async def _get_json(client: Any, path: str, params: dict[str, str],
                    headers: dict[str, str]) -> Any:
    resp = await client.get(path, params=params, headers=headers)
    assert resp.status == 200, await resp.text()
    return await resp.json()


async def _sql(client: Any, headers: dict[str, str]) -> set[str]:
    resp = await client.post("/api/v1/sql", params={"format": "csv"}, headers=headers,
                             data="SELECT DISTINCT metric_name FROM series")
    assert resp.status == 200, await resp.text()
    return {line.strip().strip('"') for line in (await resp.text()).splitlines()} - {
        "metric_name", ""}


Reader = Callable[[Any, dict[str, str]], Any]
MATCH_ALL = {"match[]": '{__name__=~".+"}'}
# One line per endpoint that shows stored data: (id, route it needs, metric names it shows).
ISOLATION: list[tuple[str, str, Reader]] = [
    ("status-tsdb", "/api/v1/status/tsdb",
     lambda c, h: _get_json(c, "/api/v1/status/tsdb", {}, h)),
    ("series", "/api/v1/series", lambda c, h: _get_json(c, "/api/v1/series", MATCH_ALL, h)),
    ("label-values", "/api/v1/label/{name}/values",
     lambda c, h: _get_json(c, "/api/v1/label/__name__/values", {}, h)),
    ("labels", "/api/v1/labels", lambda c, h: _get_json(c, "/api/v1/labels", {}, h)),
    ("metadata", "/api/v1/metadata", lambda c, h: _get_json(c, "/api/v1/metadata", {}, h)),
    ("remote-read", "/api/v1/read", _remote_read),
    ("query", "/api/v1/query", lambda c, h: _get_json(
        c, "/api/v1/query", {"query": '{__name__=~".+"}', "time": str(NOW / 1000)}, h)),
    ("query-range", "/api/v1/query_range", lambda c, h: _get_json(
        c, "/api/v1/query_range", {"query": 'count by (__name__) ({__name__=~".+"})',
                                   "start": str(NOW / 1000 - 60), "end": str(NOW / 1000),
                                   "step": "15"}, h)),
    ("sql", "/api/v1/sql", _sql),
]


def _names(case: str, data: Any) -> set[str]:
    """The metric names (or, for labels, label names) an endpoint's answer shows."""
    if isinstance(data, set):
        return data
    if case == "status-tsdb":
        return _names_tsdb(data)
    if case == "series":
        return {s["__name__"] for s in data["data"]}
    if case in ("query", "query-range"):
        return {r["metric"].get("__name__", "") for r in data["data"]["result"]}
    if case == "metadata":
        return set(data["data"])
    return set(data["data"])


@pytest.fixture
async def two_tenants(aiohttp_client: Any, make_config: Any) -> Any:
    client = await aiohttp_client(build_app(make_config(**{
        "tenancy.multitenancy_enabled": "true"})))
    for tenant, name, label in (("team-a", "a_metric", "only_a"), ("team-b", "b_metric", "only_b")):
        labels = {"__name__": name, label: "1"}
        resp = await client.post("/api/v1/write", headers={**HEADERS, "X-Scope-OrgID": tenant},
                                 data=body([(labels, [(NOW - 1000, 1.0)])],
                                           metadata=[(name, 2, f"help of {name}", "")]))
        assert resp.status == 204
    return client


@pytest.mark.parametrize(("route", "read"), [c[1:] for c in ISOLATION],
                         ids=[c[0] for c in ISOLATION])
async def test_tenants_see_only_their_own_data(two_tenants: Any, route: str,
                                               read: Reader) -> None:
    case = next(c[0] for c in ISOLATION if c[1] == route)
    routes = {r.resource.canonical for r in two_tenants.app.router.routes()}
    if route not in routes:
        pytest.skip(f"{route} is not built yet")
    mine = {"team-a": {"a_metric", "only_a"}, "team-b": {"b_metric", "only_b"}}
    for tenant, theirs in (("team-a", "team-b"), ("team-b", "team-a")):
        seen = _names(case, await read(two_tenants, {"X-Scope-OrgID": tenant}))
        assert seen & mine[tenant], (tenant, seen)
        assert not seen & mine[theirs], (tenant, seen)
    seen = _names(case, await read(two_tenants, {"X-Scope-OrgID": "team-c"}))
    assert not seen & (mine["team-a"] | mine["team-b"])
