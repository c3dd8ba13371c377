"""Key management for the vault: root-key providers, key store, blob format, signing.

Importable without ``vault/``; see docs/keys.md and docs/FORMAT.md.
"""
