"""Root-key epochs: every root-key version on record, and which one wraps each key.

Existing rows keep NULL (the legacy single root key); a store that already holds keys
gets a ``legacy`` root version row with no destruction date yet: the vault's upgrade
step (KeyStore.upgrade_legacy) moves everything off it and then schedules it.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import context, op

revision = "0002"
down_revision = "0001"
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
    for table in ("tenant_keks", "service_keys"):
        op.add_column(table, sa.Column("root_version", _VERSION, nullable=True), schema=schema)
    op.add_column("tenants", sa.Column("index_root_version", _VERSION, nullable=True), schema=schema)
    root_versions = op.create_table(
        "root_versions",
        sa.Column("version_id", _VERSION, primary_key=True),
        sa.Column("provider", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tenant_id", _ID, nullable=True),
        sa.Column("created_at", _NOW, nullable=False),
        sa.Column("destroy_after", _NOW, nullable=True),
        sa.Column("destroyed_at", _NOW, nullable=True),
        sa.Column("irrecoverable_at", _NOW, nullable=True),
        sa.CheckConstraint("kind IN ('tenant-kek', 'service', 'legacy')", name="ck_root_versions_kind"),
        schema=schema,
    )
    info = op.create_table(
        "keystore_info",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("value", sa.String(200), nullable=False),
        schema=schema,
    )
    # Random, not derived from a host or path: restoring the store elsewhere keeps it.
    op.bulk_insert(info, [{"name": "instance_id", "value": secrets.token_hex(6)}])
    bind = op.get_bind()
    prefix = f"{schema}." if schema else ""
    held = bind.execute(sa.text(
        f"SELECT (SELECT COUNT(*) FROM {prefix}tenants) + (SELECT COUNT(*) FROM {prefix}service_keys)"
    )).scalar()
    if held:
        # The provider kind of the old key is not known here; "legacy" rows say so.
        op.bulk_insert(root_versions, [{"version_id": "legacy", "provider": "legacy", "kind": "legacy",
                                        "tenant_id": None, "created_at": datetime.now(UTC)}])


def downgrade() -> None:
    schema = _schema()
    op.drop_table("keystore_info", schema=schema)
    op.drop_table("root_versions", schema=schema)
    with op.batch_alter_table("tenants", schema=schema) as batch:
        batch.drop_column("index_root_version")
    for table in ("service_keys", "tenant_keks"):
        with op.batch_alter_table(table, schema=schema) as batch:
            batch.drop_column("root_version")
