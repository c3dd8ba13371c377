"""Sealing the free-text reasons of lifecycle actions.

A legal hold's reason is patient data about a living record: it is sealed under the
patient DEK like any personal column, and dies with it.

An erasure's reason cannot be: the patient DEK is destroyed by the very act the reason
explains, yet the clinic must be able to show later why it erased (accountability).
It is sealed under a tenant-level key instead, derived from the tenant's blind-index
key in the key store (a keyed HMAC of a fixed label: 32 bytes only a holder of the key
store and its root key can compute), with AES-256-GCM bound to tenant, patient and
request. A dump of the metadata database alone does not open it. The reason is never
logged, audited or echoed in an error; callers are told (docs/lifecycle.md) to state
the legal ground, not details about the person.
"""

from __future__ import annotations

from keys import aead

_KEY_PURPOSE = "lifecycle.erasure-reason-key"
_LABEL = "vault.lifecycle.v1.erasure-reason"
HOLD_TABLE, HOLD_COLUMN = "legal_holds", "reason"


async def _tenant_key(keys, tenant_id: str) -> bytes:
    return bytes.fromhex(await keys.blind_index(tenant_id, _KEY_PURPOSE, tenant_id))


async def seal_erasure_reason(keys, tenant_id: str, patient_id: str, request_id: str, reason: str) -> bytes:
    return aead.seal(await _tenant_key(keys, tenant_id), reason.encode(), aead.aad(_LABEL, tenant_id, patient_id, request_id))


async def open_erasure_reason(keys, tenant_id: str, patient_id: str, request_id: str, sealed: bytes) -> str:
    key = await _tenant_key(keys, tenant_id)
    return aead.open_sealed(key, sealed, aead.aad(_LABEL, tenant_id, patient_id, request_id)).decode()


async def seal_hold_reason(keys, tenant_id: str, patient_id: str, reason: str) -> bytes:
    return await keys.seal_field(tenant_id, patient_id, table=HOLD_TABLE, column=HOLD_COLUMN, row_id=patient_id, value=reason)


async def open_hold_reason(keys, tenant_id: str, patient_id: str, sealed: bytes) -> str:
    return (await keys.open_field(tenant_id, patient_id, table=HOLD_TABLE, column=HOLD_COLUMN, row_id=patient_id,
                                  sealed=sealed)).decode()
