"""The ``file:`` root keyring: a directory (0700) with one key file (0600) per root-key
version. Development and the embedded default only.

Each version is 32 random bytes in ``<version_id>.key``. Destroying a version
overwrites the file with random bytes, fsyncs it, leaves a ``<version_id>.destroyed``
marker (so the name is never used again), unlinks the key and fsyncs the directory.
Erasure is final for ``file:`` only if the keyring itself is never kept in a backup
longer than the backup window: a copy of the keyring made while an epoch lived holds
that epoch's key (docs/keys.md).
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keys.errors import (
    IntegrityError, KeyDestroyed, KeyExists, ProductionRefused, ProviderError, RootKeyMissing,
)
from keys.providers import LEGACY_VERSION, check_version_id, context_aad

log = logging.getLogger(__name__)
_WARNED: set[Path] = set()

KEY_BYTES = 32
_FORMAT_V1 = b"\x01"
_NONCE_BYTES = 12
_PRIVATE = stat.S_IRWXG | stat.S_IRWXO


class FileKeyring:
    name = "file"

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._keys: dict[str, AESGCM] = {}

    @classmethod
    def from_url(cls, url: str, *, production: bool, create: bool = True) -> FileKeyring:
        if production:
            raise ProductionRefused("the file: keyring is for development; configure aws-kms: or pkcs11: in production")
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost") or not parts.path or parts.query:
            raise ProviderError("file root keyring URL must look like file:///absolute/keyring-directory")
        directory = Path(unquote(parts.path))
        if not directory.is_absolute():
            raise ProviderError("file root keyring path must be absolute")
        if directory.is_file():
            # The layout before root-key epochs: one key for everything, forever.
            raise ProviderError(
                f"VAULT_ROOT_KEY_URL names a single root key file ({directory}), the layout before root-key "
                "epochs; point it at a keyring directory (or unset it for the default) and the vault imports "
                "the old key as the legacy epoch (docs/keys.md, 'Upgrading')"
            )
        if not directory.exists():
            if not create:
                # A key store whose keyring is missing (a data folder copied or restored
                # without it) must not get a new one: nothing would decrypt, silently.
                raise RootKeyMissing(f"root keyring {directory} is missing; restore it or fix VAULT_ROOT_KEY_URL")
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        if directory.stat().st_mode & _PRIVATE:
            raise ProviderError(f"root keyring {directory} must not be accessible to group or others (chmod 700)")
        if directory not in _WARNED:  # once per keyring and process, not at every runtime opened
            _WARNED.add(directory)
            log.warning("using a local root keyring: development only, never for production data")
        return cls(directory)

    # -- the provider contract -----------------------------------------------------------
    async def create_version(self, version_id: str) -> None:
        path = self._path(version_id)
        if self._marker(version_id).exists():
            raise KeyExists("root key version was used before and destroyed; versions are never reused")
        _write_new(path, secrets.token_bytes(KEY_BYTES))

    async def wrap(self, version_id: str, plaintext: bytes, context: Mapping[str, str]) -> bytes:
        nonce = secrets.token_bytes(_NONCE_BYTES)
        return _FORMAT_V1 + nonce + self._aead(version_id).encrypt(nonce, plaintext, _aad(version_id, context))

    async def unwrap(self, version_id: str, blob: bytes, context: Mapping[str, str]) -> bytes:
        if len(blob) < 1 + _NONCE_BYTES + 16 or blob[:1] != _FORMAT_V1:
            raise IntegrityError("wrapped key has an unknown format")
        nonce = blob[1 : 1 + _NONCE_BYTES]
        try:
            return self._aead(version_id).decrypt(nonce, blob[1 + _NONCE_BYTES :], _aad(version_id, context))
        except InvalidTag:
            raise IntegrityError("wrapped key failed authentication for this context") from None

    async def destroy_version(self, version_id: str) -> datetime:
        path, marker = self._path(version_id), self._marker(version_id)
        self._keys.pop(version_id, None)
        # The marker first: after a crash the name still counts as used.
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.fsync(fd)
        os.close(fd)
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError:
            _fsync_dir(self.directory)
            return datetime.now(UTC)  # destroyed before (idempotent)
        try:
            size = os.fstat(fd).st_size
            os.pwrite(fd, secrets.token_bytes(max(size, KEY_BYTES)), 0)
            os.fsync(fd)
        finally:
            os.close(fd)
        path.unlink()
        _fsync_dir(self.directory)
        return datetime.now(UTC)

    async def close(self) -> None:
        self._keys.clear()

    # -- the legacy single key (upgrade of an older data folder) -------------------------
    def import_legacy(self, source: Path) -> bool:
        """Move an old single root-key file into the keyring as the legacy version.
        The old file is overwritten and removed only once the copy is durable. Returns
        whether anything was imported."""
        if not source.is_file():
            return False
        key = _read_key(source)
        target = self._path(LEGACY_VERSION)
        if target.exists():
            if _read_key(target) != key:
                raise ProviderError(f"the keyring already holds another legacy key than {source}")
        else:
            _write_new(target, key)
        _shred_file(source)
        return True

    # -- internals -----------------------------------------------------------------------
    def _path(self, version_id: str) -> Path:
        return self.directory / f"{check_version_id(version_id)}.key"

    def _marker(self, version_id: str) -> Path:
        return self.directory / f"{check_version_id(version_id)}.destroyed"

    def _aead(self, version_id: str) -> AESGCM:
        aead = self._keys.get(version_id)
        if aead is None:
            path = self._path(version_id)
            try:
                aead = AESGCM(_read_key(path))
            except FileNotFoundError:
                if self._marker(version_id).exists():
                    raise KeyDestroyed("root key version is destroyed") from None
                raise RootKeyMissing(f"root key version {version_id} is missing from the keyring {self.directory}") from None
            self._keys[version_id] = aead
        return aead


def _aad(version_id: str, context: Mapping[str, str]) -> bytes:
    # The legacy key was used with the bare context; new versions also bind their name.
    if version_id == LEGACY_VERSION:
        return context_aad(context)
    return context_aad({**context, "root_version": version_id})


def _write_new(path: Path, key: bytes) -> None:
    # Written under a temporary name and hard-linked into place: no reader ever sees a
    # half-written file, and an existing version is never replaced.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise KeyExists("root key version already exists") from None
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def _read_key(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        if os.fstat(fd).st_mode & _PRIVATE:
            raise ProviderError(f"root key file {path} must not be accessible to group or others (chmod 600)")
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise ProviderError(f"root key file {path} does not hold a {KEY_BYTES}-byte key")
    return key


def _shred_file(path: Path) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, secrets.token_bytes(max(os.fstat(fd).st_size, KEY_BYTES)), 0)
        os.fsync(fd)
    finally:
        os.close(fd)
    path.unlink()
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
