"""The key package's own exception tree (``keys/`` imports nothing from ``vault/``).

The vault maps these onto its own tree at the service boundary. Messages never carry
key bytes, wrapped keys, patient data or vendor error messages: only ids and codes.

::

    KeysError
    ├── IntegrityError     -- ciphertext, wrapped key or blob failed authentication
    ├── KeyDestroyed       -- the key row is gone (erased, shredded, never created)
    ├── KeyNotFound        -- a tenant hierarchy or KEK version that does not exist
    ├── KeyExists          -- refusing to replace a key that already exists
    ├── KeyInUse           -- refusing to destroy a KEK version that still wraps DEKs
    ├── ProviderError      -- root-key provider misconfigured or unreachable
    │   └── RootKeyMissing -- the key store holds keys but its root key is gone
    └── ProductionRefused  -- a development-only backend asked to run in production
"""

from __future__ import annotations


class KeysError(Exception):
    """Base of every error raised by ``keys/``."""


class IntegrityError(KeysError):
    """Authenticated decryption failed: tampered, truncated, moved or wrong binding ids."""


class KeyDestroyed(KeysError):
    """The key no longer exists; the data it protected is unrecoverable."""


class KeyNotFound(KeysError):
    """A tenant key hierarchy or KEK version that was never created."""


class KeyExists(KeysError):
    """A key for this id already exists and is never silently replaced."""


class KeyInUse(KeysError):
    """A KEK version still wraps data keys, or is the tenant's current version."""


class ProviderError(KeysError):
    """The root-key provider failed or is misconfigured (vendor detail is not included)."""


class RootKeyMissing(ProviderError):
    """The configured root key does not exist (a data folder restored without it)."""


class ProductionRefused(KeysError):
    """A development-only backend was configured for a production deployment."""
