"""DEK renewal after a single-object shred or a rectification, pending DEKs, blind-index
keys per KEK epoch, and per-purpose long-lived tenant keys.

- ``dek_renewals``: a patient whose DEK must be replaced at the next KEK rotation (an
  object key was destroyed, or a sealed field corrected): until then a backup's wrapped
  object key / old field value still opens with the live DEK. ``renewed_at`` and
  ``old_epochs`` (the root versions that held the old DEK) say when that ends.
- ``pending_deks``: the new DEK while a renewal reseals the patient's fields.
- ``tenant_keks.index_wrapped``: the epoch's blind-index key, wrapped by the epoch's own
  root-key version (NULL: an older version, whose index key is the tenant's long-lived one,
  ``tenants.index_key_wrapped``, now nullable: retired once no live epoch needs it).
- ``tenant_purpose_keys``: long-lived keys of one purpose each (signed URLs, webhook
  secrets), wrapped by the service root version.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_ID = sa.String(128)
_NOW = sa.DateTime(timezone=True)
_VERSION = sa.String(200)


def _schema() -> str | None:
    schema: str | None = context.config.attributes["keystore_schema"]
    return schema


def upgrade() -> None:
    schema = _schema()
    op.create_table(
        "dek_renewals",
        sa.Column("renewal_id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("cause", sa.String(32), nullable=False),
        sa.Column("requested_at", _NOW, nullable=False),
        sa.Column("renewed_at", _NOW, nullable=True),
        sa.Column("old_dek_id", sa.String(36), nullable=True),
        sa.Column("old_epochs", sa.Text, nullable=True),
        sa.Index("ix_dek_renewals_patient", "tenant_id", "patient_id"),
        schema=schema,
    )
    op.create_table(
        "pending_deks",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("patient_id", _ID, primary_key=True),
        sa.Column("dek_id", sa.String(36), nullable=False, unique=True),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        schema=schema,
    )
    op.add_column("tenant_keks", sa.Column("index_wrapped", sa.LargeBinary, nullable=True), schema=schema)
    # The tenant's long-lived index key is legacy now: new tenants have none, and an
    # upgraded tenant's is retired once no live epoch needs it.
    with op.batch_alter_table("tenants", schema=schema) as batch:
        batch.alter_column("index_key_wrapped", existing_type=sa.LargeBinary, nullable=True)
    op.create_table(
        "tenant_purpose_keys",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("purpose", sa.String(64), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("root_version", _VERSION, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    schema = _schema()
    op.drop_table("tenant_purpose_keys", schema=schema)
    with op.batch_alter_table("tenants", schema=schema) as batch:
        batch.alter_column("index_key_wrapped", existing_type=sa.LargeBinary, nullable=False)
    with op.batch_alter_table("tenant_keks", schema=schema) as batch:
        batch.drop_column("index_wrapped")
    op.drop_table("pending_deks", schema=schema)
    op.drop_table("dek_renewals", schema=schema)
