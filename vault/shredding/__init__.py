"""The shred ledger: which keys the vault destroyed, kept apart from the key store."""
