"""Ed25519 signatures over canonical JSON: erasure receipts and audit-chain checkpoints.

Canonical JSON is ``json.dumps(doc, sort_keys=True, separators=(",", ":"),
ensure_ascii=False, allow_nan=False)`` encoded as UTF-8, so anyone can re-derive the
signed bytes with a standard JSON library and check the signature with the published
public key (``openssl pkeyutl -verify -rawin`` works too). Keep values to strings,
integers, booleans, null, lists and objects: floats do not round-trip between languages.

Every document signed with the service key should carry a ``"type"`` field (e.g.
``"erasure_receipt"``, ``"audit_checkpoint"``) so a signature made for one kind of
document can never be passed off as another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from keys.errors import KeysError


def canonical_json(document: Mapping[str, Any]) -> bytes:
    try:
        text = json.dumps(
            document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError):
        raise KeysError(
            "document is not plain JSON (strings, integers, booleans, null, lists, objects)"
        ) from None
    return text.encode("utf-8")


def sign_document(
    document: Mapping[str, Any], *, private_key: Ed25519PrivateKey, field: str = "document"
) -> dict[str, Any]:
    """Return ``{field: document, "signature": base64(Ed25519(canonical_json(document)))}``."""
    if field == "signature":
        raise KeysError("the document field cannot be called 'signature'")
    signature = private_key.sign(canonical_json(document))
    return {field: dict(document), "signature": base64.b64encode(signature).decode("ascii")}


def verify_document(document: Mapping[str, Any], signature: str, public_key_pem: str | bytes) -> bool:
    """True only when ``signature`` is a valid signature of exactly this document."""
    public_key = load_public_key(public_key_pem)
    try:
        raw = base64.b64decode(signature, validate=True)
        public_key.verify(raw, canonical_json(document))
    except (InvalidSignature, binascii.Error, ValueError, TypeError, KeysError):
        return False
    return True


def load_public_key(public_key_pem: str | bytes) -> Ed25519PublicKey:
    data = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeysError("not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeysError("not an Ed25519 public key")
    return key


def key_fingerprint(public_key_pem: str | bytes) -> str:
    """A short stable id of a public key (SHA-256 of its raw bytes, hex), to name it in documents."""
    raw = load_public_key(public_key_pem).public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return hashlib.sha256(raw).hexdigest()[:32]
