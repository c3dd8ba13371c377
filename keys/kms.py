"""The ``aws-kms:`` root key: one KMS key per root-key version (epoch).

``aws-kms://alias/<prefix>?region=eu-west-1[&endpoint_url=...][&pending_days=7][&legacy_key=<id>]``

``create_version`` makes a symmetric key (CreateKey) and names it with an alias
``alias/<prefix>/<version id, dots as slashes>``; wrap and unwrap are Encrypt/Decrypt
through that alias with the context (plus the version id) as EncryptionContext.
``destroy_version`` schedules the key's deletion (ScheduleKeyDeletion) with
``pending_days`` (7-30, default 7: the provider's minimum); until then an operator with
kms:CancelKeyDeletion can still bring it back, which receipts say. ``legacy_key``
names the single key of a vault from before epochs, so its rows keep opening until the
upgrade has moved everything off it (docs/keys.md, "Upgrading").

boto3 is blocking, so every call runs in a worker thread; the client is thread-safe.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from keys.errors import IntegrityError, KeyDestroyed, KeyExists, ProviderError, RootKeyMissing
from keys.providers import LEGACY_VERSION, check_version_id, context_aad

_PREFIX = re.compile(r"^alias/[A-Za-z0-9/_-]{1,120}$")
# AWS refuses other windows; moto does not, so we check it ourselves.
MIN_PENDING_DAYS, MAX_PENDING_DAYS = 7, 30


class AwsKmsEpochs:
    name = "aws-kms"
    _QUERY = frozenset({"region", "endpoint_url", "pending_days", "legacy_key"})

    def __init__(self, client: Any, *, prefix: str, pending_days: int = MIN_PENDING_DAYS,
                 legacy_key: str | None = None) -> None:
        if not _PREFIX.match(prefix):
            raise ProviderError("aws-kms URL must name an alias prefix: aws-kms://alias/<name>?region=...")
        if not MIN_PENDING_DAYS <= pending_days <= MAX_PENDING_DAYS:
            raise ProviderError(f"aws-kms pending_days must be {MIN_PENDING_DAYS}..{MAX_PENDING_DAYS}")
        self._client = client
        self.prefix = prefix.rstrip("/")
        self.pending_days = pending_days
        self.legacy_key = legacy_key
        # Read by the key store: how long after destroy_version a key is really gone.
        self.deletion_delay = timedelta(days=pending_days)

    @classmethod
    def from_url(cls, url: str, *, production: bool) -> AwsKmsEpochs:
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        prefix = unquote(parts.netloc + parts.path)
        query = dict(parse_qsl(parts.query, keep_blank_values=False))
        unknown = sorted(set(query) - cls._QUERY)
        if unknown:
            raise ProviderError(f"aws-kms URL has unknown parameters: {', '.join(unknown)}")
        try:
            pending = int(query.get("pending_days", MIN_PENDING_DAYS))
        except ValueError:
            raise ProviderError("aws-kms pending_days must be a whole number of days") from None
        config = Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 4, "mode": "standard"})
        try:
            client = boto3.client("kms", region_name=query.get("region"), endpoint_url=query.get("endpoint_url"),
                                  config=config)
        except Exception as exc:  # botocore raises several unrelated types for bad config
            raise ProviderError(f"cannot create KMS client: {type(exc).__name__}") from None
        return cls(client, prefix=prefix, pending_days=pending, legacy_key=query.get("legacy_key"))

    def alias(self, version_id: str) -> str:
        # Aliases allow [A-Za-z0-9/_-]: a dot becomes a slash (ids never contain one).
        return f"{self.prefix}/{check_version_id(version_id).replace('.', '/')}"

    def _key(self, version_id: str) -> str:
        if version_id == LEGACY_VERSION:
            if not self.legacy_key:
                raise RootKeyMissing("the key store holds keys from before root-key epochs: "
                                     "add legacy_key=<old key id or alias> to VAULT_ROOT_KEY_URL")
            return self.legacy_key
        return self.alias(version_id)

    # -- the provider contract -----------------------------------------------------------
    async def create_version(self, version_id: str) -> None:
        alias = self.alias(version_id)
        created = await self._call("CreateKey", self._client.create_key,
                                    Description="clinical photo vault root key version",
                                    KeyUsage="ENCRYPT_DECRYPT", KeySpec="SYMMETRIC_DEFAULT",
                                    Tags=[{"TagKey": "vault-root-version", "TagValue": version_id}])
        key_id = created["KeyMetadata"]["KeyId"]
        try:
            await self._call("CreateAlias", self._client.create_alias, AliasName=alias, TargetKeyId=key_id)
        except (KeyExists, ProviderError):
            # Never reuse a name: the fresh key is of no use to anyone, so it goes.
            await self._call("ScheduleKeyDeletion", self._client.schedule_key_deletion,
                             KeyId=key_id, PendingWindowInDays=self.pending_days)
            raise

    async def wrap(self, version_id: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        response = await self._call("Encrypt", self._client.encrypt, KeyId=self._key(version_id),
                                    Plaintext=plaintext, EncryptionContext=_context(version_id, context))
        wrapped: bytes = response["CiphertextBlob"]
        return wrapped

    async def unwrap(self, version_id: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        response = await self._call("Decrypt", self._client.decrypt, KeyId=self._key(version_id),
                                    CiphertextBlob=blob, EncryptionContext=_context(version_id, context))
        plaintext: bytes = response["Plaintext"]
        return plaintext

    async def destroy_version(self, version_id: str) -> datetime:
        key = self._key(version_id)
        meta = (await self._call("DescribeKey", self._client.describe_key, KeyId=key))["KeyMetadata"]
        if meta.get("KeyState") == "PendingDeletion" and meta.get("DeletionDate"):
            return _utc(meta["DeletionDate"])  # scheduled before (idempotent)
        response = await self._call("ScheduleKeyDeletion", self._client.schedule_key_deletion,
                                    KeyId=meta["KeyId"], PendingWindowInDays=self.pending_days)
        deletion = response.get("DeletionDate")
        return _utc(deletion) if deletion else datetime.now(UTC) + self.deletion_delay

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    @staticmethod
    async def _call(operation: str, fn: Callable[..., dict[str, Any]], **kwargs: Any) -> dict[str, Any]:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return await asyncio.to_thread(fn, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "Unknown")
            if code == "InvalidCiphertextException":
                raise IntegrityError("wrapped key failed authentication for this context") from None
            if code in ("KMSInvalidStateException", "DisabledException"):
                raise KeyDestroyed(f"KMS {operation}: the root key version is disabled or pending deletion") from None
            if code == "AlreadyExistsException":
                raise KeyExists(f"KMS {operation}: the root key version already exists") from None
            if code == "NotFoundException":
                raise RootKeyMissing(f"KMS {operation}: the root key version does not exist") from None
            raise ProviderError(f"KMS {operation} failed: {code}") from None
        except BotoCoreError as exc:
            raise ProviderError(f"KMS {operation} failed: {type(exc).__name__}") from None


def _context(version_id: str, context: Mapping[str, str]) -> dict[str, str]:
    context_aad(context)  # validates: strings only
    if version_id == LEGACY_VERSION:
        return dict(context)  # how the single pre-epoch key was used
    return {**context, "root_version": version_id}


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)
