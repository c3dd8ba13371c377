"""Blob storage: where encrypted media lives, behind one narrow protocol.

``open_store(settings.storage_url)`` picks the backend from a fixed registry of URL
schemes (never a dotted class path from configuration)::

    file:///var/lib/vault/blobs                    LocalStore (embedded default)
    s3://bucket/prefix?endpoint_url=...&region=... S3Store

Usage::

    store = open_store(url)
    key = new_key()
    n = await store.put(key, chunks)               # chunks: AsyncIterable[bytes]
    async with await store.get(key, start=0, end=1 << 20) as blob:
        async for chunk in blob: ...
    await store.close()
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from vault.errors import ConfigError
from vault.storage.base import BlobReader, BlobStore, check_key, new_key
from vault.storage.local import LocalStore

if TYPE_CHECKING:
    from vault.storage.s3 import S3Store

__all__ = ["BlobReader", "BlobStore", "LocalStore", "S3Store", "check_key", "new_key", "open_store"]


def _s3() -> type[S3Store]:
    # boto3 and botocore (~10 MiB resident, ~200 modules) load only for an s3:// store.
    from vault.storage.s3 import S3Store

    return S3Store


_BACKENDS: dict[str, Callable[[], type[LocalStore | S3Store]]] = {"file": lambda: LocalStore, "s3": _s3}


def open_store(url: str) -> BlobStore:
    """The blob store a ``VAULT_STORAGE_URL`` names; :class:`ConfigError` if it names none."""
    scheme = urlsplit(url).scheme
    backend = _BACKENDS.get(scheme)
    if backend is None:
        # The URL itself stays out of the message: it is configuration, not ours to echo.
        raise ConfigError("VAULT_STORAGE_URL", f"scheme must be one of {sorted(_BACKENDS)}")
    return backend().from_url(url)


def __getattr__(name: str) -> Any:
    """``from vault.storage import S3Store`` still works (PEP 562), importing boto3 then."""
    if name == "S3Store":
        return _s3()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
