"""Who a request acts for: the tenant from ``X-Scope-OrgID`` and, when credentials are
configured, a bearer token or basic-auth user bound to a tenant.

Pure functions and one class over request headers; no aiohttp here (``tenancy.py`` is the
seam the handlers call). Secrets are only ever stored as hashes and compared in constant
time (``hmac.compare_digest``).

Decision table (401 = no or wrong credential, 403 = credential for another tenant):

================  ===================  =========================================
credentials       multitenancy         tenant
================  ===================  =========================================
none              off                  ``tenancy.default_tenant`` (header ignored)
none              on                   ``X-Scope-OrgID``; missing 401, invalid 400
configured        either               the credential's; a different header 403
================  ===================  =========================================
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gob_metrics.errors import BadRequest, ConfigError, Forbidden, Unauthorized

if TYPE_CHECKING:
    from gob_metrics.config import Credential, TenancyConfig

ORG_ID_HEADER = "X-Scope-OrgID"
# Mimir's tenant id rules (pkg/util/validation: ValidTenantID): at most 150 characters of
# letters, digits and ! - _ . * ' ( ), and not "." or "..".
MAX_TENANT_ID_LENGTH = 150
_TENANT_CHARS = re.compile(r"[A-Za-z0-9!\-_.*'()]*")
PBKDF2_ITERATIONS = 100_000
_VERIFIED_CACHE_SIZE = 1024


def tenant_id_problem(tenant: str) -> str | None:
    """Say why ``tenant`` is not a valid tenant id, or return None when it is."""
    if not tenant:
        return "empty"
    if len(tenant) > MAX_TENANT_ID_LENGTH:
        return f"{len(tenant)} characters, at most {MAX_TENANT_ID_LENGTH} allowed"
    if tenant in {".", ".."}:
        return f"{tenant!r} is reserved"
    if not _TENANT_CHARS.fullmatch(tenant):
        bad = next(c for c in tenant if not _TENANT_CHARS.fullmatch(c))
        return f"character {bad!r} not allowed (letters, digits and ! - _ . * ' ( ) are)"
    return None


def validate_tenant_id(tenant: str) -> str:
    """Return ``tenant`` or raise BadRequest naming what is wrong with it."""
    problem = tenant_id_problem(tenant)
    if problem is not None:
        raise BadRequest(f"invalid tenant id {tenant[:160]!r} in {ORG_ID_HEADER}: {problem}")
    return tenant


# ------------------------------------------------------------------------ secret hashes

@dataclass(frozen=True)
class SecretHash:
    """A parsed ``sha256:<hex>`` or ``pbkdf2_sha256$<iterations>$<salt>$<hash>``."""

    scheme: str
    digest: bytes
    salt: bytes = b""
    iterations: int = 0

    def verify(self, secret: bytes) -> bool:
        """Constant-time check of ``secret`` against this hash."""
        if self.scheme == "sha256":
            return hmac.compare_digest(hashlib.sha256(secret).digest(), self.digest)
        got = hashlib.pbkdf2_hmac("sha256", secret, self.salt, self.iterations)
        return hmac.compare_digest(got, self.digest)


def _b64decode(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def parse_secret_hash(text: str) -> SecretHash:
    """Parse a stored hash; raise ValueError saying which format is expected."""
    if text.startswith("sha256:"):
        hexdigest = text[len("sha256:"):]
        if not re.fullmatch(r"[0-9a-fA-F]{64}", hexdigest):
            raise ValueError("sha256: must be followed by 64 hex digits")
        return SecretHash("sha256", bytes.fromhex(hexdigest))
    if text.startswith("pbkdf2_sha256$"):
        parts = text.split("$")
        if len(parts) != 4 or not parts[1].isdigit() or int(parts[1]) < 1:
            raise ValueError("expected pbkdf2_sha256$<iterations>$<salt b64>$<hash b64>")
        try:
            salt, digest = _b64decode(parts[2]), _b64decode(parts[3])
        except (binascii.Error, ValueError) as exc:
            raise ValueError(f"pbkdf2_sha256 salt or hash is not base64: {exc}") from exc
        if len(digest) != 32:
            raise ValueError("pbkdf2_sha256 hash must be 32 bytes")
        return SecretHash("pbkdf2_sha256", digest, salt, int(parts[1]))
    raise ValueError("expected sha256:<hex> or pbkdf2_sha256$<iterations>$<salt>$<hash>")


def hash_secret(secret: str, scheme: str = "pbkdf2_sha256",
                iterations: int = PBKDF2_ITERATIONS) -> str:
    """Hash a secret for the config: sha256 for random tokens, salted pbkdf2 for passwords."""
    raw = secret.encode()
    if scheme == "sha256":
        return "sha256:" + hashlib.sha256(raw).hexdigest()
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", raw, salt, iterations)
    b64 = base64.b64encode
    return f"pbkdf2_sha256${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def check_credentials(creds: Sequence[Credential], key: str) -> None:
    """Raise ConfigError naming ``key[i].field`` for the first malformed credential."""
    users: set[str] = set()
    tokens: set[bytes] = set()
    for i, c in enumerate(creds):
        where = f"{key}[{i}]"
        problem = tenant_id_problem(c.tenant)
        if problem is not None:
            raise ConfigError(f"invalid value {c.tenant!r} for {where}.tenant: "
                              f"expected a tenant id ({problem})")
        if bool(c.bearer_token_hash) == bool(c.username):
            raise ConfigError(f"{where}: set either bearer_token_hash, or username and "
                              "password_hash")
        if c.bearer_token_hash:
            if c.password_hash:
                raise ConfigError(f"{where}: password_hash needs a username")
            try:
                h = parse_secret_hash(c.bearer_token_hash)
            except ValueError as exc:
                raise ConfigError(f"invalid value for {where}.bearer_token_hash: {exc}") from exc
            if h.scheme != "sha256":
                raise ConfigError(f"invalid value for {where}.bearer_token_hash: bearer tokens "
                                  "are hashed with sha256 (gob-metrics hash-secret --token)")
            if h.digest in tokens:
                raise ConfigError(f"{where}.bearer_token_hash: the same token appears twice")
            tokens.add(h.digest)
            continue
        try:
            parse_secret_hash(c.password_hash)
        except ValueError as exc:
            raise ConfigError(f"invalid value for {where}.password_hash: {exc}") from exc
        if c.username in users or ":" in c.username:
            raise ConfigError(f"invalid value {c.username!r} for {where}.username: "
                              "user names are unique and contain no ':'")
        users.add(c.username)


# ------------------------------------------------------------------------ authenticator

class Authenticator:
    """Decides the tenant of a request from its headers (see the module's table)."""

    def __init__(self, cfg: TenancyConfig) -> None:
        self.multitenancy = cfg.multitenancy_enabled
        self.default_tenant = cfg.default_tenant
        self.tokens: list[tuple[bytes, str]] = []
        self.users: dict[str, tuple[SecretHash, str]] = {}
        for c in cfg.credentials:
            if c.bearer_token_hash:
                self.tokens.append((parse_secret_hash(c.bearer_token_hash).digest, c.tenant))
            else:
                self.users[c.username] = (parse_secret_hash(c.password_hash), c.tenant)
        self.auth_enabled = bool(self.tokens or self.users)
        # Salted hashes are slow on purpose; a verified (user, sha256(password)) is
        # remembered so a sender paying it once per request does not stall the server.
        self._verified: OrderedDict[tuple[str, bytes], str | None] = OrderedDict()
        self._dummy = parse_secret_hash(hash_secret("dummy", iterations=PBKDF2_ITERATIONS))

    # -- the two halves: credential -> tenant, then the header against it

    def tenant_for(self, headers: Mapping[str, str]) -> str:
        """Resolve synchronously (a salted password hash is computed inline)."""
        bound = self._credential_tenant(headers, self._verify_user)
        return self._decide(headers, bound)

    async def tenant_for_async(self, headers: Mapping[str, str]) -> str:
        """Resolve, computing an uncached salted password hash in a worker thread."""
        user = self._basic_user(headers)
        if user is not None and self._cached(*user) is _MISSING:
            await asyncio.to_thread(self._verify_user, *user)
        return self.tenant_for(headers)

    def _decide(self, headers: Mapping[str, str], bound: str | None) -> str:
        header = headers.get(ORG_ID_HEADER)
        if bound is not None:
            if header is not None and header != bound:
                validate_tenant_id(header)
                raise Forbidden(f"the credential of tenant {bound!r} may not act for tenant "
                                f"{header!r} named in {ORG_ID_HEADER}")
            return bound
        if not self.multitenancy:
            return self.default_tenant
        if not header:
            raise Unauthorized(f"no org id: multi-tenancy is on (tenancy.multitenancy_enabled)"
                               f" and the request has no {ORG_ID_HEADER} header")
        return validate_tenant_id(header)

    def _credential_tenant(self, headers: Mapping[str, str],
                           verify_user: Callable[[str, bytes], str | None]) -> str | None:
        if not self.auth_enabled:
            return None
        value = headers.get("Authorization", "")
        scheme, _, cred = value.strip().partition(" ")
        scheme = scheme.lower()
        if scheme == "bearer" and self.tokens:
            digest = hashlib.sha256(cred.strip().encode()).digest()
            found = None
            for stored, tenant in self.tokens:  # no early exit: same time for every token
                if hmac.compare_digest(stored, digest):
                    found = tenant
            if found is not None:
                return found
            raise Unauthorized("invalid bearer token", challenge="Bearer")
        if scheme == "basic" and self.users:
            user = self._basic_user(headers)
            if user is None:
                raise Unauthorized("malformed basic-auth credentials", challenge="Basic")
            tenant = verify_user(*user)
            if tenant is None:
                raise Unauthorized("invalid user name or password", challenge="Basic")
            return tenant
        what = "a bearer token" if not self.users else (
            "basic-auth credentials" if not self.tokens else "a bearer token or basic-auth")
        raise Unauthorized(f"authentication required: send {what} (Authorization header)",
                           challenge="Basic" if self.users else "Bearer")

    @staticmethod
    def _basic_user(headers: Mapping[str, str]) -> tuple[str, bytes] | None:
        scheme, _, cred = headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, sep, password = base64.b64decode(cred.strip(), validate=True).partition(b":")
            name = user.decode()
        except (binascii.Error, ValueError):
            return None
        return (name, password) if sep else None

    def _cached(self, name: str, password: bytes) -> object:
        key = (name, hashlib.sha256(password).digest())
        return self._verified.get(key, _MISSING)

    def _verify_user(self, name: str, password: bytes) -> str | None:
        key = (name, hashlib.sha256(password).digest())
        if key in self._verified:
            return self._verified[key]
        entry = self.users.get(name)
        # An unknown user costs the same hash as a known one: no user enumeration by timing.
        ok = (entry[0] if entry else self._dummy).verify(password) and entry is not None
        tenant = entry[1] if ok and entry else None
        self._verified[key] = tenant
        if len(self._verified) > _VERIFIED_CACHE_SIZE:
            self._verified.popitem(last=False)
        return tenant


_MISSING = object()
