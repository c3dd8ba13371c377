"""Sealing the free-text reasons of lifecycle actions.

A legal hold's reason is patient data about a living record: it is sealed under the
patient DEK like any personal column, and dies with it.

An erasure's reason cannot be: the patient DEK is destroyed by the very act the reason
explains, yet the clinic must be able to show later why it erased (accountability).
It is sealed under a key of the tenant's current KEK epoch instead
(:meth:`KeyStore.seal_for_epoch`), with AES-256-GCM bound to tenant, patient and request:
readable while that epoch lives (the backup window), and by nobody once it is destroyed —
copies of the metadata database included, so the reason does not outlive the patient's
epoch. A dump of the metadata database alone never opens it. Reasons sealed before
(format 0x01) used a key derived from the tenant's legacy index key and go with it. The reason is never
logged, audited or echoed in an error; callers are told (docs/lifecycle.md) to state
the legal ground, not details about the person.
"""

from __future__ import annotations

from keys import aead

_KEY_PURPOSE = "lifecycle.erasure-reason-key"
_LABEL = "vault.lifecycle.v1.erasure-reason"
HOLD_TABLE, HOLD_COLUMN = "legal_holds", "reason"


async def seal_erasure_reason(keys, tenant_id: str, patient_id: str, request_id: str, reason: str) -> bytes:
    return await keys.seal_for_epoch(tenant_id, _LABEL, tenant_id, patient_id, request_id, value=reason.encode())


async def open_erasure_reason(keys, tenant_id: str, patient_id: str, request_id: str, sealed: bytes) -> str:
    """``KeyDestroyed`` once the epoch it was sealed in is destroyed."""
    if sealed[:1] == aead.FORMAT_V1:  # sealed before per-epoch keys
        key = bytes.fromhex(await keys.legacy_blind_index(tenant_id, _KEY_PURPOSE, tenant_id))
        return aead.open_sealed(key, sealed, aead.aad(_LABEL, tenant_id, patient_id, request_id)).decode()
    return (await keys.open_for_epoch(tenant_id, _LABEL, tenant_id, patient_id, request_id, sealed=sealed)).decode()


async def seal_hold_reason(keys, tenant_id: str, patient_id: str, reason: str) -> bytes:
    return await keys.seal_field(tenant_id, patient_id, table=HOLD_TABLE, column=HOLD_COLUMN, row_id=patient_id, value=reason)


async def open_hold_reason(keys, tenant_id: str, patient_id: str, sealed: bytes) -> str:
    return (await keys.open_field(tenant_id, patient_id, table=HOLD_TABLE, column=HOLD_COLUMN, row_id=patient_id,
                                  sealed=sealed)).decode()
