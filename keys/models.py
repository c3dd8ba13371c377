"""Key-store tables. They live apart from the vault's metadata tables.

Tables carry the placeholder schema ``keystore``; the engine maps it to the real schema
on PostgreSQL and to none on SQLite (the key store is its own file there).
Only wrapped keys are stored; no column holds key material in the clear.
"""

from __future__ import annotations

import sqlalchemy as sa

SCHEMA = "keystore"

metadata = sa.MetaData(schema=SCHEMA)

_ID = sa.String(128)
_NOW = sa.DateTime(timezone=True)
_VERSION = sa.String(200)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("current_kek_version", sa.Integer, nullable=False),
    # The legacy long-lived blind-index key of a tenant made before per-epoch index keys
    # (tenant_keks.index_wrapped); NULL for newer tenants, and once retired.
    sa.Column("index_key_wrapped", sa.LargeBinary, nullable=True),
    sa.Column("created_at", _NOW, nullable=False),
    # The root-key version wrapping the index key: the long-lived service version (NULL:
    # the legacy key of a store made before root-key epochs).
    sa.Column("index_root_version", _VERSION, nullable=True),
)

tenant_keks = sa.Table(
    "tenant_keks",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=True),  # NULL once destroyed
    sa.Column("state", sa.String(16), nullable=False),  # active | retired | destroyed
    sa.Column("created_at", _NOW, nullable=False),
    sa.Column("destroyed_at", _NOW, nullable=True),
    # The root-key version (epoch) that wraps this KEK and no other key; NULL: legacy.
    sa.Column("root_version", _VERSION, nullable=True),
    # This epoch's blind-index key, wrapped by the same root-key version (dies with the
    # epoch); NULL: a version from before per-epoch index keys (the tenant's long-lived one).
    sa.Column("index_wrapped", sa.LargeBinary, nullable=True),
    sa.CheckConstraint("state IN ('active', 'retired', 'destroyed')", name="ck_tenant_keks_state"),
    sa.CheckConstraint("(wrapped IS NULL) = (state = 'destroyed')", name="ck_tenant_keks_wrapped"),
)

patient_deks = sa.Table(
    "patient_deks",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("patient_id", _ID, primary_key=True),
    sa.Column("dek_id", sa.String(36), nullable=False, unique=True),
    sa.Column("kek_version", sa.Integer, nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _NOW, nullable=False),
    sa.Index("ix_patient_deks_kek", "tenant_id", "kek_version"),
)

object_keys = sa.Table(
    "object_keys",
    metadata,
    sa.Column("key_id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", _ID, nullable=False),
    sa.Column("patient_id", _ID, nullable=False),
    sa.Column("object_id", _ID, nullable=False),
    sa.Column("dek_id", sa.String(36), nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _NOW, nullable=False),
    sa.UniqueConstraint("tenant_id", "object_id", name="uq_object_keys_object"),
    sa.Index("ix_object_keys_patient", "tenant_id", "patient_id"),
    sa.Index("ix_object_keys_dek", "dek_id"),
)

# Ids only, no key bytes: refuses a new DEK for an erased patient even when a caller races
# the erasure. The authoritative shred ledger lives in the metadata database.
erased_patients = sa.Table(
    "erased_patients",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("patient_id", _ID, primary_key=True),
    sa.Column("erased_at", _NOW, nullable=False),
)

service_keys = sa.Table(
    "service_keys",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("public_key_pem", sa.Text, nullable=False),
    sa.Column("created_at", _NOW, nullable=False),
    sa.Column("root_version", _VERSION, nullable=True),  # NULL: legacy
)

# Every root-key version this store ever asked its provider for. ``destroy_after`` is
# fixed when the version is created (a later VAULT_BACKUP_WINDOW affects only new
# versions), so a receipt signed today stays true; ``irrecoverable_at`` is what the
# provider answered when it destroyed the version (KMS: the end of the pending window).
root_versions = sa.Table(
    "root_versions",
    metadata,
    sa.Column("version_id", _VERSION, primary_key=True),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("kind", sa.String(16), nullable=False),  # tenant-kek | service | legacy
    sa.Column("tenant_id", _ID, nullable=True),
    sa.Column("created_at", _NOW, nullable=False),
    sa.Column("destroy_after", _NOW, nullable=True),  # NULL: never (service) or not yet known (legacy)
    sa.Column("destroyed_at", _NOW, nullable=True),
    sa.Column("irrecoverable_at", _NOW, nullable=True),
    sa.CheckConstraint("kind IN ('tenant-kek', 'service', 'legacy')", name="ck_root_versions_kind"),
)

# Small facts about this store; ``instance_id`` names its root-key versions, so two
# vaults (or two data folders on one machine) never share a keyring entry.
keystore_info = sa.Table(
    "keystore_info",
    metadata,
    sa.Column("name", sa.String(32), primary_key=True),
    sa.Column("value", sa.String(200), nullable=False),
)


# A patient whose DEK must be replaced at the next KEK rotation: one of its object keys
# was destroyed, or a sealed field corrected, while a backup may hold the old wrapped key
# or value, which the live DEK would still open. Ids, times and root-version ids only.
dek_renewals = sa.Table(
    "dek_renewals",
    metadata,
    sa.Column("renewal_id", sa.String(36), primary_key=True),
    sa.Column("tenant_id", _ID, nullable=False),
    sa.Column("patient_id", _ID, nullable=False),
    sa.Column("cause", sa.String(32), nullable=False),  # object_delete | rectification
    sa.Column("requested_at", _NOW, nullable=False),
    sa.Column("renewed_at", _NOW, nullable=True),  # NULL: still pending
    sa.Column("old_dek_id", sa.String(36), nullable=True),
    sa.Column("old_epochs", sa.Text, nullable=True),  # JSON list of the root versions that held the old DEK
    sa.Index("ix_dek_renewals_patient", "tenant_id", "patient_id"),
)

# The patient's next DEK while a renewal reseals its fields: ``seal_field`` seals under it,
# ``open_field`` falls back to it; it replaces the DEK row when the renewal swaps.
pending_deks = sa.Table(
    "pending_deks",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("patient_id", _ID, primary_key=True),
    sa.Column("dek_id", sa.String(36), nullable=False, unique=True),
    sa.Column("kek_version", sa.Integer, nullable=False),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _NOW, nullable=False),
)

# Long-lived tenant keys of one purpose each (signed URLs, webhook secrets), wrapped by
# the service root version: a leak of one reveals nothing of another.
tenant_purpose_keys = sa.Table(
    "tenant_purpose_keys",
    metadata,
    sa.Column("tenant_id", _ID, primary_key=True),
    sa.Column("purpose", sa.String(64), primary_key=True),
    sa.Column("wrapped", sa.LargeBinary, nullable=False),
    sa.Column("root_version", _VERSION, nullable=False),
    sa.Column("created_at", _NOW, nullable=False),
)


def metadata_for(schema: str | None) -> sa.MetaData:
    """These tables in a real schema (``None`` on SQLite), for migration drift checks."""
    target = sa.MetaData()
    for table in metadata.sorted_tables:
        # None means "the target's schema" (none) at run time; the stub only admits a str.
        table.to_metadata(target, schema=schema)  # type: ignore[arg-type]
    return target
