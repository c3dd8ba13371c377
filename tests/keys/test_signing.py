"""Ed25519 signatures over canonical JSON (erasure receipts, audit checkpoints)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.rsa import generate_private_key

from keys.errors import KeysError
from keys.migrate import upgrade
from keys.providers import open_root_key
from keys.signing import canonical_json, key_fingerprint, load_public_key, sign_document, verify_document
from keys.store import KeyStore

RECEIPT = {
    "type": "erasure_receipt",
    "tenant": "clinic-a",
    "patient_ref": "c2f1e0d7a9",
    "destroyed_key_ids": ["8d0c7f0e-1", "5b1e2a9c-2"],
    "object_count": 2,
    "legal_hold": {"checked": True, "held": False},
    "erased_at": "2026-11-22T10:00:00Z",
    "irrecoverable_after": "2026-12-27T10:00:00Z",
    "note": None,
}


def pem(private: Ed25519PrivateKey) -> str:
    return (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def edits(document: dict) -> list[tuple[str, dict]]:
    """Every single-field change an attacker could make: edit, drop, add, nested edits."""
    out = []
    for key, value in document.items():
        changed = copy.deepcopy(document)
        if isinstance(value, bool) or value is None:
            changed[key] = not value
        elif isinstance(value, int):
            changed[key] = value + 1
        elif isinstance(value, str):
            changed[key] = value[:-1] + ("x" if value[-1:] != "x" else "y")
        elif isinstance(value, list):
            changed[key] = value[:-1]
        elif isinstance(value, dict):
            inner = next(iter(value))
            changed[key] = {**value, inner: not value[inner]}
        out.append((f"edit:{key}", changed))
        dropped = copy.deepcopy(document)
        del dropped[key]
        out.append((f"drop:{key}", dropped))
    out.append(("add", {**document, "extra": 1}))
    out.append(("type-int-vs-str", {**document, "object_count": str(document["object_count"])}))
    return out


def test_canonical_json_is_sorted_compact_utf8() -> None:
    assert canonical_json({"b": 1, "a": ["é", None, True]}) == '{"a":["é",null,true],"b":1}'.encode()
    assert canonical_json({"a": 1, "b": 2}) == canonical_json({"b": 2, "a": 1})


@pytest.mark.parametrize("bad", [{"x": float("nan")}, {"x": b"bytes"}, {"x": {1, 2}}])
def test_canonical_json_refuses_non_json(bad: dict) -> None:
    with pytest.raises(KeysError):
        canonical_json(bad)


def test_signature_verifies_and_is_over_the_canonical_bytes() -> None:
    private = Ed25519PrivateKey.generate()
    signed = sign_document(RECEIPT, private_key=private, field="receipt")
    assert set(signed) == {"receipt", "signature"} and signed["receipt"] == RECEIPT
    assert verify_document(signed["receipt"], signed["signature"], pem(private))
    # Round-trips through JSON on the wire, in any key order.
    wire = json.loads(json.dumps(signed, indent=2))
    reordered = dict(reversed(list(wire["receipt"].items())))
    assert verify_document(reordered, wire["signature"], pem(private))
    # Anyone can check it with a plain Ed25519 library over the canonical bytes.
    raw = base64.b64decode(signed["signature"])
    load_public_key(pem(private)).verify(
        raw, json.dumps(RECEIPT, sort_keys=True, separators=(",", ":")).encode()
    )


def test_any_edited_field_fails() -> None:
    private = Ed25519PrivateKey.generate()
    signed = sign_document(RECEIPT, private_key=private, field="receipt")
    cases = edits(RECEIPT)
    assert len(cases) == 2 * len(RECEIPT) + 2
    for name, changed in cases:
        assert not verify_document(changed, signed["signature"], pem(private)), name


@pytest.mark.parametrize("signature", ["", "not base64!", base64.b64encode(b"\0" * 64).decode(), "QUJD"])
def test_malformed_signatures_fail(signature: str) -> None:
    assert not verify_document(RECEIPT, signature, pem(Ed25519PrivateKey.generate()))


def test_another_key_fails_and_non_ed25519_keys_are_refused() -> None:
    signed = sign_document(RECEIPT, private_key=Ed25519PrivateKey.generate())
    assert not verify_document(signed["document"], signed["signature"], pem(Ed25519PrivateKey.generate()))
    rsa_pem = (
        generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeysError):
        verify_document(signed["document"], signed["signature"], rsa_pem)
    with pytest.raises(KeysError):
        verify_document(signed["document"], signed["signature"], "not a key")


def test_signature_field_name_is_reserved() -> None:
    with pytest.raises(KeysError):
        sign_document(RECEIPT, private_key=Ed25519PrivateKey.generate(), field="signature")


async def test_service_key_lives_in_the_key_store(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    await upgrade(url)
    root = open_root_key(f"file://{tmp_path}/root.key", production=False)
    first = await KeyStore.open(url, root)
    checkpoint = {"type": "audit_checkpoint", "tenant": "clinic-a", "seq": 41, "head": "ab" * 32}
    private = await first.signing_key()
    signed = sign_document(checkpoint, private_key=private)
    published = await first.public_key_pem()
    await first.close()

    restarted = await KeyStore.open(url, root)  # another node, or after a restart: same key
    assert await restarted.public_key_pem() == published
    assert verify_document(signed["document"], signed["signature"], published)
    assert not verify_document({**checkpoint, "seq": 40}, signed["signature"], published)
    assert len(key_fingerprint(published)) == 32
    await restarted.close()
    assert private.private_bytes_raw() not in (tmp_path / "keys.db").read_bytes()  # stored wrapped only
