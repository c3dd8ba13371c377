"""blob writer leases, for the leftover sweep

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'blob_writes',
        sa.Column('blob_id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('patient_id', sa.String(length=64), nullable=False),
        sa.Column('writer', sa.String(length=100), nullable=False),
        sa.Column('started_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('lease_until', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('blob_id', name=op.f('pk_blob_writes')),
    )
    with op.batch_alter_table('blob_writes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_blob_writes_lease_until'), ['lease_until'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('blob_writes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_blob_writes_lease_until'))
    op.drop_table('blob_writes')
