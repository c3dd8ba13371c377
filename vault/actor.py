"""Who is acting: resolved from a bearer token by the HTTP layer, or the CLI."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Principal:
    tenant_id: str
    token_id: str  # an API token's id, or "staff:<staff id>" for a web session (vault/staff)
    role: str


@dataclass(frozen=True, slots=True)
class Actor:
    """The principal of one request (or CLI command) plus its request id, which the
    domain services need for authorisation and the audit log."""

    tenant_id: str
    token_id: str
    role: str
    request_id: str

    @classmethod
    def cli(cls, tenant_id: str, request_id: str) -> Actor:
        return cls(tenant_id=tenant_id, token_id="cli", role="operator", request_id=request_id)
