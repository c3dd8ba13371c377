"""Erasure receipts: signed proof that a patient's keys were destroyed, and when the
data becomes irrecoverable everywhere.

A receipt is a plain JSON document signed with the service's Ed25519 key over its
canonical JSON (:mod:`keys.signing`); anyone holding the published public key
(``GET /v1/erasure-receipts/public-key``) can check it offline, with
``vault keys verify-receipt`` or any Ed25519 library.

The patient is named by a *pseudonymous* reference, ``hmac-sha256:<hex>``: a keyed
HMAC of the patient id under the tenant's long-lived patient-reference key (a purpose
key of the key store, never destroyed, used for nothing else). The id itself is random
and carries no personal data, but it names the patient everywhere inside the vault
(audit entries, tombstone row); the HMAC means a receipt handed to the patient or a
regulator cannot be joined with those records by anyone but the clinic's vault,
which recomputes it (:func:`patient_ref`) to answer "is this the receipt for X?".

``irrecoverable_after`` (version 2) is the latest recorded destruction date of every
root-key version (epoch) that can have wrapped the patient's DEK — fixed when each
version was created — plus, for KMS, the pending-deletion window (``cancellable_until``:
an operator can cancel a KMS deletion until then). From that date no copy of the key
store (backup, replica, WAL archive) opens the patient's keys, because the root-key
version under which they were wrapped no longer exists in the provider. The receipt
names the provider kind and the epochs. When it cannot promise a date — no worker is
running the periodic key jobs, or part of the tenant still sits under the legacy root
key of a vault from before epochs with no destruction scheduled — it says so
(``irrecoverable_after: null`` and ``no_date_reason``) instead of signing a date.

Once every epoch has been destroyed, :func:`finality_attestation` issues a signed
``erasure_finality`` document for the receipt (``GET /v1/erasure-receipts/{id}/finality``,
``vault keys verify-receipt --online``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from keys.errors import KeysError
from keys.renewal import AWAITING_ROTATION
from keys.signing import key_fingerprint, sign_document, verify_document
from keys.store import ErasureSchedule, KeyStore
from vault.db import new_id

RECEIPT_TYPE = "erasure_receipt"
RECEIPT_VERSION = 2
FINALITY_TYPE = "erasure_finality"
NO_WORKER = "no worker is running the periodic key jobs, so no destruction date can be promised"
LEGACY_UNSCHEDULED = "part of this tenant is still under the legacy root key, whose destruction is not scheduled yet"
AWAITING_RENEWAL = AWAITING_ROTATION
PATIENT_REF_PURPOSE = "erasure-receipt.patient-ref"
ALGORITHM = "Ed25519"


async def patient_ref(keys: KeyStore, tenant_id: str, patient_id: str) -> str:
    """The pseudonymous reference a receipt names the patient by (stable per tenant)."""
    return "hmac-sha256:" + await keys.purpose_hmac(tenant_id, PATIENT_REF_PURPOSE, patient_id)


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
    schedule: ErasureSchedule | None = None,
    jobs_running: bool = True,
) -> dict[str, Any]:
    """The unsigned receipt document (plain JSON values only). With ``schedule`` (the key
    store's :meth:`erasure_schedule`), the date is the epochs' recorded destruction
    schedule; without, the plain backup window (callers without a key store)."""
    for name, value in (("requested_at", requested_at), ("completed_at", completed_at)):
        if value.tzinfo is None:
            raise ValueError(f"{name} must be timezone-aware")
    if completed_at < requested_at:
        raise ValueError("completed_at is before requested_at")
    if object_count < 0 or backup_window_days < 1:
        raise ValueError("object_count must be >= 0 and backup_window_days >= 1")
    if not all(isinstance(k, str) and k for k in destroyed_key_ids):
        raise ValueError("destroyed_key_ids must be non-empty strings")
    document = {
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
    if schedule is not None:
        reason = None if jobs_running else NO_WORKER
        if reason is None and schedule.irrecoverable_after is None:
            reason = LEGACY_UNSCHEDULED
        document.update({
            "provider": schedule.provider,
            "epochs": [{"root_version": e.version_id, "kind": e.kind,
                        "destroy_after": _iso(e.destroy_after) if e.destroy_after else None} for e in schedule.epochs],
            "legacy_epoch": schedule.legacy,
            "irrecoverable_after": None if reason or schedule.irrecoverable_after is None
            else _iso_up(schedule.irrecoverable_after),
            "cancellable_until": None if reason or schedule.cancellable_until is None
            else _iso_up(schedule.cancellable_until),
            "no_date_reason": reason,
        })
    return document


def object_promise(schedule: ErasureSchedule, *, jobs_running: bool) -> dict[str, Any]:
    """What may be promised for one shredded object (a photo or video deleted alone):
    its wrapped key stays in copies under the patient's DEK, which outlives epochs until
    it is renewed at the next rotation (keys/renewal.py). Before that, no date; after,
    the destruction of every epoch that held the old DEK (the key store's
    :meth:`renewal_schedule`)."""
    reason = None
    if schedule.awaiting_renewal:
        reason = AWAITING_RENEWAL
    elif not jobs_running:
        reason = NO_WORKER
    elif schedule.irrecoverable_after is None:
        reason = LEGACY_UNSCHEDULED
    return {
        "irrecoverable_after": None if reason or schedule.irrecoverable_after is None
        else _iso_up(schedule.irrecoverable_after),
        "epochs": [e.version_id for e in schedule.epochs],
        "no_date_reason": reason,
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


async def finality_attestation(keys: KeyStore, receipt: Mapping[str, Any], *, now: datetime) -> dict[str, Any]:
    """A signed statement of whether the receipt's epochs are destroyed: ``final`` once
    every one is irrecoverable (KMS: its pending window is over), with the date. The
    document of a final receipt is the same at every call (Ed25519 is deterministic)."""
    ids = [e["root_version"] for e in receipt.get("epochs") or []]
    known = {v.version_id: v for v in await keys.root_versions(ids=ids)}
    epochs, final = [], bool(ids)
    for version_id in ids:
        v = known.get(version_id)
        gone = v is not None and v.irrecoverable_at is not None and v.irrecoverable_at <= now
        final = final and gone
        epochs.append({"root_version": version_id,
                       "destroyed_at": _iso(v.destroyed_at) if v and v.destroyed_at else None,
                       "irrecoverable_at": _iso_up(v.irrecoverable_at) if v and v.irrecoverable_at else None})
    document: dict[str, Any] = {
        "type": FINALITY_TYPE, "version": 1, "receipt_id": receipt["receipt_id"], "tenant_id": receipt["tenant_id"],
        "patient_ref": receipt["patient_ref"], "epochs": epochs, "final": final,
        "final_at": max(e["irrecoverable_at"] for e in epochs) if final else None,
    }
    if not final:
        document["checked_at"] = _iso(now)  # a status as of now, not a lasting statement
    private = await keys.signing_key()
    document["signing_key"] = key_fingerprint(await keys.public_key_pem())
    return sign_document(document, private_key=private, field="finality")


def verify_finality(doc: Mapping[str, Any], signature: str, public_key_pem: str | bytes) -> bool:
    if not isinstance(doc, Mapping) or doc.get("type") != FINALITY_TYPE or not isinstance(signature, str):
        return False
    if doc.get("signing_key") != key_fingerprint(public_key_pem):
        return False
    return verify_document(doc, signature, public_key_pem)


def _iso_up(value: datetime) -> str:
    # Rounded up: a promised date must never be earlier than the recorded one.
    return _iso(value + timedelta(seconds=1) if value.microsecond else value)


def _iso(value: datetime) -> str:
    # Whole seconds, UTC, "Z": the same text in every language that re-derives the bytes.
    return value.astimezone(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
