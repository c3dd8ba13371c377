"""Root-key providers: the top of the key hierarchy, chosen by URL scheme.

A provider holds *versions* of the root key (epochs). Each tenant KEK version is
wrapped by its own root-key version, and destroying that version in the provider
makes every copy of that epoch (backups, replicas, WAL archives) unreadable. A
long-lived "service" version wraps what must outlive epochs (docs/keys.md).

A provider wraps small secrets and never sees patient data. The context is bound to
every wrap (AES-GCM AAD locally, the EncryptionContext on KMS), so a wrapped KEK cannot
be unwrapped as another tenant's or another version's key.

    open_root_key("file:///var/lib/vault-keyring", production=False)
    open_root_key("aws-kms://alias/vault?region=eu-west-1", production=True)
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Protocol
from urllib.parse import urlsplit

from keys.errors import ProviderError

# The root-key version that existed before epochs: the single key of older vaults
# (a data folder's root.key, a single KMS key). Providers map it to that key; only the
# upgrade path (KeyStore.upgrade_legacy) and old rows refer to it.
LEGACY_VERSION = "legacy"

_VERSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


class RootKeyProvider(Protocol):
    name: str  # "file" | "aws-kms" | "pkcs11"

    async def create_version(self, version_id: str) -> None: ...

    async def wrap(self, version_id: str, plaintext: bytes, context: Mapping[str, str]) -> bytes: ...

    async def unwrap(self, version_id: str, blob: bytes, context: Mapping[str, str]) -> bytes: ...

    async def destroy_version(self, version_id: str) -> datetime: ...

    async def close(self) -> None: ...


def check_version_id(version_id: str) -> str:
    """Version ids become file names, KMS aliases and PKCS#11 labels: a closed alphabet."""
    if not isinstance(version_id, str) or not _VERSION_ID.match(version_id) or version_id in (".", ".."):
        raise ProviderError("root key version ids are 1-200 characters of [A-Za-z0-9._-]")
    return version_id


def context_aad(context: Mapping[str, str]) -> bytes:
    """Canonical bytes of a wrap context; ordering of the mapping must not matter."""
    for k, v in context.items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise ProviderError("wrap context keys and values must be strings")
    return json.dumps(dict(context), sort_keys=True, separators=(",", ":")).encode()


def _file(url: str, *, production: bool, create: bool = True) -> RootKeyProvider:
    from keys.keyring import FileKeyring

    return FileKeyring.from_url(url, production=production, create=create)


def _aws_kms(url: str, *, production: bool, create: bool = True) -> RootKeyProvider:
    from keys.kms import AwsKmsEpochs

    return AwsKmsEpochs.from_url(url, production=production)


def _pkcs11(url: str, *, production: bool, create: bool = True) -> RootKeyProvider:
    from keys.pkcs11 import Pkcs11RootKey

    return Pkcs11RootKey.from_url(url, production=production)


# Imported lazily: boto3 (and python-pkcs11) load only for the scheme in use.
_PROVIDERS: dict[str, Callable[..., RootKeyProvider]] = {
    "file": _file,
    "aws-kms": _aws_kms,
    "pkcs11": _pkcs11,
}


def open_root_key(url: str, *, production: bool, create: bool = True) -> RootKeyProvider:
    """Open the provider named by the URL scheme (a fixed registry, never a class path).

    ``create=False`` refuses to make a new local keyring where none exists: pass it
    whenever the key store already holds wrapped keys."""
    scheme = urlsplit(url).scheme
    factory = _PROVIDERS.get(scheme)
    if factory is None:
        raise ProviderError(f"unknown root key scheme {scheme!r}; known: {', '.join(sorted(_PROVIDERS))}")
    return factory(url, production=production, create=create)
