"""Who is calling: bearer tokens mapped to a tenant (and an admin flag), and namespace scoping.

Tokens file (TOML):

    [[tokens]]
    token = "s3cr3t-team-a"
    tenant = "team-a"

    [[tokens]]
    token = "s3cr3t-ops"
    tenant = "ops"
    admin = true

Every data-plane call is scoped to the caller's tenant: a non-admin caller naming another
namespace is refused, never silently redirected. Without a tokens file there is one tenant and
the client's namespace (or the default one) is used as is.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import tomllib

from kvbucket.core.errors import InvalidArgument, PermissionDenied, Unauthenticated
from kvbucket.core.keys import check_name


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    admin: bool


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Authenticator:
    def __init__(self, tokens: dict[str, Caller] | None, default_namespace: str = "default") -> None:
        # Keyed by the token's digest: lookups compare fixed-size digests, not secrets.
        self._by_digest = {_digest(t): c for t, c in (tokens or {}).items()}
        self.enabled = tokens is not None
        self.default_namespace = check_name("default namespace", default_namespace)
        self._anonymous = Caller(tenant=self.default_namespace, admin=True)

    @classmethod
    def from_file(cls, path: Path | None, default_namespace: str = "default") -> Authenticator:
        if path is None:
            return cls(None, default_namespace)
        try:
            doc = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidArgument(f"cannot read tokens file {path}: {exc}") from None
        tokens: dict[str, Caller] = {}
        for i, row in enumerate(doc.get("tokens", [])):
            if not row.get("token") or not row.get("tenant"):
                raise InvalidArgument(f"tokens file {path}: entry {i} needs both 'token' and 'tenant'")
            tokens[row["token"]] = Caller(check_name("tenant", row["tenant"]), bool(row.get("admin", False)))
        return cls(tokens, default_namespace)

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Caller:
        if not self.enabled:
            return self._anonymous
        header = next((v for k, v in metadata or () if k == "authorization"), None)
        if header is None:
            raise Unauthenticated("this daemon requires a token: send 'authorization: Bearer <token>'")
        value = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = value.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("malformed authorization header: expected 'Bearer <token>'")
        caller = self._by_digest.get(_digest(token.strip()))
        if caller is None:
            raise Unauthenticated("unknown token")
        return caller

    def namespace(self, caller: Caller, requested: str) -> str:
        """The namespace a data-plane call acts on."""
        if not self.enabled:
            return check_name("namespace", requested or self.default_namespace)
        if not requested or requested == caller.tenant:
            return caller.tenant
        if caller.admin:
            return check_name("namespace", requested)
        raise PermissionDenied(f"tenant {caller.tenant!r} may not use namespace {requested!r}")

    def require_admin(self, caller: Caller, what: str) -> None:
        if not caller.admin:
            raise PermissionDenied(f"{what} needs an admin token")
