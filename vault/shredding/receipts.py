"""The public side of erasure receipts: the key that verifies them (and audit
checkpoints), and the signed attestation of whether a receipt's erasure is final
everywhere. The receipts themselves are written by the erasure (vault/lifecycle/erasure.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from keys.store import KeyStore
from vault.actor import Actor
from vault.receipts import public_key_document


class Finality(Protocol):
    """What answers for a receipt's finality: ``ErasureService.finality``."""

    async def finality(self, actor: Actor, receipt_id: str) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class PublicKey:
    algorithm: str
    public_key_pem: str
    fingerprint: str


@dataclass(frozen=True)
class SignedFinality:
    finality: dict[str, Any]  # the signed document, exactly as signed
    signature: str


class ReceiptService:
    def __init__(self, keys: KeyStore, erasure: Finality) -> None:
        self.keys = keys
        self.erasure = erasure

    async def public_key(self) -> PublicKey:
        return PublicKey(**await public_key_document(self.keys))

    async def finality(self, actor: Actor, receipt_id: str) -> SignedFinality:
        signed = await self.erasure.finality(actor, receipt_id)
        return SignedFinality(finality=dict(signed["finality"]), signature=signed["signature"])
