"""Idempotency-Key for releases (and other creating requests): idempotent_requests

Revision ID: 0017
Revises: 0013 (the task said '0008'; that would make a second head in this branch)
Create Date: 2026-12-05 06:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0017'
down_revision = '0015'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'idempotent_requests',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('key_digest', sa.String(length=64), nullable=False),
        sa.Column('body_digest', sa.String(length=64), nullable=False),
        sa.Column('resource_id', sa.String(length=64), nullable=False),
        sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'key_digest', name=op.f('pk_idempotent_requests')),
    )


def downgrade() -> None:
    op.drop_table('idempotent_requests')
