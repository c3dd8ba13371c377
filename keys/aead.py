"""AES-256-GCM sealing of small values (wrapped keys, personal fields) with bound AAD.

Sealed format: ``0x01 | nonce (12) | ciphertext | tag (16)``. The AAD is a label plus
length-prefixed ids, so ``("a|b", "c")`` and ``("a", "b|c")`` can never collide and a
value sealed for one purpose (a wrapped DEK) never opens as another (a field).
"""

from __future__ import annotations

import secrets

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.errors import IntegrityError

FORMAT_V1 = b"\x01"
NONCE_BYTES = 12
TAG_BYTES = 16
OVERHEAD = 1 + NONCE_BYTES + TAG_BYTES

LABEL_DEK = "vault.keys.v1.dek"
LABEL_OBJECT_KEY = "vault.keys.v1.object-key"
LABEL_FIELD = "vault.keys.v1.field"


def aad(label: str, *parts: str | int) -> bytes:
    out = bytearray(label.encode())
    for part in parts:
        raw = str(part).encode()
        out += len(raw).to_bytes(4, "big")
        out += raw
    return bytes(out)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = secrets.token_bytes(NONCE_BYTES)
    return FORMAT_V1 + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes) -> bytes:
    if len(sealed) < OVERHEAD or sealed[:1] != FORMAT_V1:
        raise IntegrityError("sealed value has an unknown format or is truncated")
    nonce = sealed[1 : 1 + NONCE_BYTES]
    try:
        return AESGCM(key).decrypt(nonce, sealed[1 + NONCE_BYTES :], associated)
    except InvalidTag:
        raise IntegrityError("sealed value failed authentication") from None
