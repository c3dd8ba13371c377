"""Key hierarchy: tenants and KEK versions, patient DEKs, object keys, erased patients, service keys.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_ID = sa.String(128)
_NOW = sa.DateTime(timezone=True)


def _schema() -> str | None:
    # None on SQLite (the key store is its own file), the key store schema on PostgreSQL.
    schema: str | None = context.config.attributes["keystore_schema"]
    return schema


def upgrade() -> None:
    schema = _schema()
    op.create_table(
        "tenants",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("current_kek_version", sa.Integer, nullable=False),
        sa.Column("index_key_wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        schema=schema,
    )
    op.create_table(
        "tenant_keks",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("version", sa.Integer, primary_key=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("destroyed_at", _NOW, nullable=True),
        sa.CheckConstraint("state IN ('active', 'retired', 'destroyed')", name="ck_tenant_keks_state"),
        sa.CheckConstraint("(wrapped IS NULL) = (state = 'destroyed')", name="ck_tenant_keks_wrapped"),
        schema=schema,
    )
    op.create_table(
        "patient_deks",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("patient_id", _ID, primary_key=True),
        sa.Column("dek_id", sa.String(36), nullable=False, unique=True),
        sa.Column("kek_version", sa.Integer, nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        schema=schema,
    )
    op.create_index("ix_patient_deks_kek", "patient_deks", ["tenant_id", "kek_version"], schema=schema)
    op.create_table(
        "object_keys",
        sa.Column("key_id", sa.String(36), primary_key=True),
        sa.Column("tenant_id", _ID, nullable=False),
        sa.Column("patient_id", _ID, nullable=False),
        sa.Column("object_id", _ID, nullable=False),
        sa.Column("dek_id", sa.String(36), nullable=False),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        sa.UniqueConstraint("tenant_id", "object_id", name="uq_object_keys_object"),
        schema=schema,
    )
    op.create_index("ix_object_keys_patient", "object_keys", ["tenant_id", "patient_id"], schema=schema)
    op.create_index("ix_object_keys_dek", "object_keys", ["dek_id"], schema=schema)
    op.create_table(
        "erased_patients",
        sa.Column("tenant_id", _ID, primary_key=True),
        sa.Column("patient_id", _ID, primary_key=True),
        sa.Column("erased_at", _NOW, nullable=False),
        schema=schema,
    )
    op.create_table(
        "service_keys",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("wrapped", sa.LargeBinary, nullable=False),
        sa.Column("public_key_pem", sa.Text, nullable=False),
        sa.Column("created_at", _NOW, nullable=False),
        schema=schema,
    )


def downgrade() -> None:
    schema = _schema()
    for table in ("service_keys", "erased_patients", "object_keys", "patient_deks", "tenant_keks", "tenants"):
        op.drop_table(table, schema=schema)
