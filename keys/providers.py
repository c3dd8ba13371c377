"""Root-key providers: the top of the key hierarchy, chosen by URL scheme.

A provider wraps small secrets (tenant KEKs, blind-index keys, the service signing key)
and never sees patient data. The context is bound to every wrap (AES-GCM AAD locally,
the EncryptionContext on KMS), so a wrapped KEK cannot be unwrapped as another tenant's
or another version's key.

    open_root_key("file:///var/lib/vault/root.key", production=False)
    open_root_key("aws-kms://alias/vault-root?region=eu-west-1", production=True)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.errors import IntegrityError, ProductionRefused, ProviderError

log = logging.getLogger(__name__)

KEY_BYTES = 32
_FORMAT_V1 = b"\x01"
_NONCE_BYTES = 12


class RootKeyProvider(Protocol):
    name: str

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes: ...

    async def close(self) -> None: ...


def context_aad(context: Mapping[str, str]) -> bytes:
    """Canonical bytes of a wrap context; ordering of the mapping must not matter."""
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ProviderError("wrap context keys and values must be strings")
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


class FileRootKey:
    """A 256-bit key in a local file. Development and the embedded default only.

    Anyone who can read the file can read every key, and its backups travel with the
    data folder, so production deployments must use a KMS or HSM.
    """

    name = "file"

    def __init__(self, path: Path, *, key: bytes) -> None:
        self.path = path
        self._aead = AESGCM(key)

    @classmethod
    def from_url(cls, url: str, *, production: bool) -> FileRootKey:
        if production:
            raise ProductionRefused("the file: root key is for development; configure aws-kms: in production")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path or parts.query:
            raise ProviderError("file root key URL must look like file:///absolute/path/root.key")
        path = Path(unquote(parts.path))
        if not path.is_absolute():
            raise ProviderError("file root key path must be absolute")
        key = _load_or_create_key_file(path)
        log.warning("using a local root key file: development only, never for production data")
        return cls(path, key=key)

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, context_aad(context))

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT_V1:
            raise IntegrityError("wrapped key has an unknown format")
        nonce = blob[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead.decrypt(nonce, blob[1 + _NONCE_BYTES :], context_aad(context))
        except InvalidTag:
            raise IntegrityError("wrapped key failed authentication for this context") from None

    async def close(self) -> None:
        return None


def _load_or_create_key_file(path: Path) -> bytes:
    try:
        return _read_key_file(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Write under a temporary name and hard-link into place: two processes starting at
    # once must agree on one key, and none may ever read a half-written file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key_file(path)


def _read_key_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        info = os.fstat(fd)
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise ProviderError(f"root key file {path} must not be accessible to group or others (chmod 600)")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise ProviderError(f"root key file {path} does not hold a {KEY_BYTES}-byte key")
    return key


class AwsKmsRootKey:
    """AWS KMS (or a compatible endpoint): Encrypt/Decrypt with the context as EncryptionContext.

    boto3 is blocking, so every call runs in a worker thread; the client is thread-safe.
    """

    name = "aws-kms"
    _QUERY = frozenset({"region", "endpoint_url"})

    def __init__(self, client: Any, *, key_id: str) -> None:
        self._client = client
        self.key_id = key_id

    @classmethod
    def from_url(cls, url: str, *, production: bool) -> AwsKmsRootKey:
        import boto3
        from botocore.config import Config

        parts = urlsplit(url)
        key_id = unquote(parts.netloc + parts.path)
        if not key_id:
            raise ProviderError("aws-kms URL must name a key: aws-kms://<key-id|arn|alias/name>?region=...")
        query = dict(parse_qsl(parts.query, keep_blank_values=False))
        unknown = sorted(set(query) - cls._QUERY)
        if unknown:
            raise ProviderError(f"aws-kms URL has unknown parameters: {', '.join(unknown)}")
        config = Config(
            connect_timeout=5,
            read_timeout=10,
            retries={"max_attempts": 4, "mode": "standard"},
        )
        try:
            client = boto3.client(
                "kms",
                region_name=query.get("region"),
                endpoint_url=query.get("endpoint_url"),
                config=config,
            )
        except Exception as exc:  # botocore raises several unrelated types for bad config
            raise ProviderError(f"cannot create KMS client: {type(exc).__name__}") from None
        return cls(client, key_id=key_id)

    async def wrap(self, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        context_aad(context)
        response = await self._call(
            "Encrypt",
            self._client.encrypt,
            KeyId=self.key_id,
            Plaintext=plaintext,
            EncryptionContext=dict(context),
        )
        return response["CiphertextBlob"]

    async def unwrap(self, blob: bytes, context: Mapping[str, str]) -> bytes:
        context_aad(context)
        response = await self._call(
            "Decrypt",
            self._client.decrypt,
            KeyId=self.key_id,
            CiphertextBlob=blob,
            EncryptionContext=dict(context),
        )
        return response["Plaintext"]

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
            raise ProviderError(f"KMS {operation} failed: {code}") from None
        except BotoCoreError as exc:
            raise ProviderError(f"KMS {operation} failed: {type(exc).__name__}") from None


_PROVIDERS: dict[str, Callable[..., RootKeyProvider]] = {
    "file": FileRootKey.from_url,
    "aws-kms": AwsKmsRootKey.from_url,
}


def open_root_key(url: str, *, production: bool) -> RootKeyProvider:
    """Open the provider named by the URL scheme (a fixed registry, never a class path)."""
    scheme = urlsplit(url).scheme
    factory = _PROVIDERS.get(scheme)
    if factory is None:
        raise ProviderError(f"unknown root key scheme {scheme!r}; known: {', '.join(sorted(_PROVIDERS))}")
    return factory(url, production=production)
