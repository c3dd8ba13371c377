"""A strict in-memory KMS for the finality property (moto still decrypts after
ScheduleKeyDeletion and accepts any window): Encrypt/Decrypt are refused on Disabled
and PendingDeletion keys, and only 7-30 day windows are accepted, as AWS does.
It answers the same boto3 client calls the provider makes; tests pass it in directly."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _error(code: str, operation: str) -> ClientError:
    return ClientError({"Error": {"Code": code, "Message": "strict fake"}}, operation)


class StrictKms:
    def __init__(self) -> None:
        self.keys: dict[str, dict] = {}
        self.aliases: dict[str, str] = {}
        self.calls: list[tuple[str, dict]] = []

    def _resolve(self, key: str, operation: str) -> dict:
        key_id = self.aliases.get(key, key)
        if key_id not in self.keys:
            raise _error("NotFoundException", operation)
        return self.keys[key_id]

    def create_key(self, **kwargs) -> dict:
        self.calls.append(("CreateKey", kwargs))
        key_id = str(uuid.uuid4())
        self.keys[key_id] = {"KeyId": key_id, "KeyState": "Enabled", "material": AESGCM.generate_key(256)}
        return {"KeyMetadata": {"KeyId": key_id, "KeyState": "Enabled"}}

    def create_alias(self, *, AliasName: str, TargetKeyId: str) -> dict:  # noqa: N803 - boto3's names
        self.calls.append(("CreateAlias", {"AliasName": AliasName, "TargetKeyId": TargetKeyId}))
        if AliasName in self.aliases:
            raise _error("AlreadyExistsException", "CreateAlias")
        self.aliases[AliasName] = TargetKeyId
        return {}

    def _usable(self, key: str, operation: str) -> dict:
        meta = self._resolve(key, operation)
        if meta["KeyState"] != "Enabled":
            raise _error("KMSInvalidStateException" if meta["KeyState"] == "PendingDeletion" else "DisabledException",
                         operation)
        return meta

    def encrypt(self, *, KeyId: str, Plaintext: bytes, EncryptionContext: dict) -> dict:  # noqa: N803
        meta = self._usable(KeyId, "Encrypt")
        nonce = secrets.token_bytes(12)
        aad = json.dumps(EncryptionContext, sort_keys=True).encode()
        blob = meta["KeyId"].encode() + b"|" + nonce + AESGCM(meta["material"]).encrypt(nonce, Plaintext, aad)
        return {"CiphertextBlob": blob, "KeyId": meta["KeyId"]}

    def decrypt(self, *, KeyId: str, CiphertextBlob: bytes, EncryptionContext: dict) -> dict:  # noqa: N803
        meta = self._usable(KeyId, "Decrypt")
        owner, _, rest = CiphertextBlob.partition(b"|")
        if owner.decode(errors="replace") != meta["KeyId"]:
            raise _error("IncorrectKeyException", "Decrypt")
        aad = json.dumps(EncryptionContext, sort_keys=True).encode()
        try:
            return {"Plaintext": AESGCM(meta["material"]).decrypt(rest[:12], rest[12:], aad)}
        except InvalidTag:
            raise _error("InvalidCiphertextException", "Decrypt") from None

    def describe_key(self, *, KeyId: str) -> dict:  # noqa: N803
        meta = self._resolve(KeyId, "DescribeKey")
        return {"KeyMetadata": {k: v for k, v in meta.items() if k != "material"}}

    def schedule_key_deletion(self, *, KeyId: str, PendingWindowInDays: int) -> dict:  # noqa: N803
        self.calls.append(("ScheduleKeyDeletion", {"KeyId": KeyId, "PendingWindowInDays": PendingWindowInDays}))
        if not 7 <= PendingWindowInDays <= 30:
            raise _error("ValidationException", "ScheduleKeyDeletion")
        meta = self._resolve(KeyId, "ScheduleKeyDeletion")
        if meta["KeyState"] == "PendingDeletion":
            raise _error("KMSInvalidStateException", "ScheduleKeyDeletion")
        meta["KeyState"] = "PendingDeletion"
        meta["DeletionDate"] = datetime.now(UTC) + timedelta(days=PendingWindowInDays)
        return {"KeyId": meta["KeyId"], "DeletionDate": meta["DeletionDate"], "KeyState": "PendingDeletion"}

    def close(self) -> None:
        return None
