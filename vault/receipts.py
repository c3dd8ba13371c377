"""Erasure receipts: signed proof that a patient's keys were destroyed, and when the
data becomes irrecoverable everywhere.

A receipt is a plain JSON document signed with the service's Ed25519 key over its
canonical JSON (:mod:`keys.signing`); anyone holding the published public key
(``GET /v1/erasure-receipts/public-key``) can check it offline, with
``vault keys verify-receipt`` or any Ed25519 library.

The patient is named by a *pseudonymous* reference, ``hmac-sha256:<hex>``: a keyed
HMAC of the patient id under the tenant's blind-index key. The id itself is random
and carries no personal data, but it names the patient everywhere inside the vault
(audit entries, tombstone row); the HMAC means a receipt handed to the patient or a
regulator cannot be joined with those records by anyone but the clinic's vault,
which recomputes it (:func:`patient_ref`) to answer "is this the receipt for X?".

``irrecoverable_after`` is ``completed_at + VAULT_BACKUP_WINDOW`` days: by then every
backup that could hold the wrapped DEK has aged out, and the KEK version that wrapped
it at erasure time is destroyed by the rotation job (versions are destroyed once
older than the backup window, and that version was created before ``completed_at``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from keys.errors import KeysError
from keys.signing import key_fingerprint, sign_document, verify_document
from keys.store import KeyStore
from vault.db import new_id

RECEIPT_TYPE = "erasure_receipt"
RECEIPT_VERSION = 1
PATIENT_REF_PURPOSE = "erasure-receipt.patient-ref"
ALGORITHM = "Ed25519"


async def patient_ref(keys: KeyStore, tenant_id: str, patient_id: str) -> str:
    """The pseudonymous reference a receipt names the patient by (stable per tenant)."""
    return "hmac-sha256:" + await keys.blind_index(tenant_id, PATIENT_REF_PURPOSE, patient_id)


def build_erasure_receipt(
    *,
    tenant_id: str,
    patient_ref: str,
    destroyed_key_ids: Sequence[str],
    object_count: int,
    requested_at: datetime,
    completed_at: datetime,
    legal_hold_checked: bool,
    backup_window_days: int,
    receipt_id: str | None = None,
) -> dict[str, Any]:
    """The unsigned receipt document (plain JSON values only)."""
    for name, value in (("requested_at", requested_at), ("completed_at", completed_at)):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
    if completed_at < requested_at:
        raise ValueError("completed_at is before requested_at")
    if object_count < 0 or backup_window_days < 1:
        raise ValueError("object_count must be >= 0 and backup_window_days >= 1")
    if not all(isinstance(k, str) and k for k in destroyed_key_ids):
        raise ValueError("destroyed_key_ids must be non-empty strings")
    return {
        "type": RECEIPT_TYPE,
        "version": RECEIPT_VERSION,
        "receipt_id": receipt_id or new_id(),
        "tenant_id": tenant_id,
        "patient_ref": patient_ref,
        "destroyed_key_ids": list(destroyed_key_ids),
        "object_count": int(object_count),
        "requested_at": _iso(requested_at),
        "completed_at": _iso(completed_at),
        "legal_hold_checked": bool(legal_hold_checked),
        "irrecoverable_after": _iso(completed_at + timedelta(days=backup_window_days)),
    }


async def sign_receipt(keys: KeyStore, receipt: Mapping[str, Any]) -> dict[str, Any]:
    """``{"receipt": {..., "signing_key": fingerprint}, "signature": base64}`` — what an erasure returns."""
    if receipt.get("type") != RECEIPT_TYPE:
        raise ValueError("not an erasure receipt")
    private = await keys.signing_key()
    document = {**receipt, "signing_key": key_fingerprint(await keys.public_key_pem())}
    return sign_document(document, private_key=private, field="receipt")


def verify_receipt(doc: Mapping[str, Any], signature: str, public_key_pem: str | bytes) -> bool:
    """True only for an erasure receipt signed, exactly as it is, by that key.

    Raises ``ValueError`` when ``public_key_pem`` is not an Ed25519 public key.
    """
    try:
        fingerprint = key_fingerprint(public_key_pem)
    except KeysError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(doc, Mapping) or not isinstance(signature, str) or doc.get("type") != RECEIPT_TYPE:
        return False
    if doc.get("signing_key", fingerprint) != fingerprint:
        return False
    return verify_document(doc, signature, public_key_pem)


async def public_key_document(keys: KeyStore) -> dict[str, str]:
    pem = await keys.public_key_pem()
    return {"algorithm": ALGORITHM, "public_key_pem": pem, "fingerprint": key_fingerprint(pem)}


def _iso(value: datetime) -> str:
    # Whole seconds, UTC, "Z": the same text in every language that re-derives the bytes.
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
