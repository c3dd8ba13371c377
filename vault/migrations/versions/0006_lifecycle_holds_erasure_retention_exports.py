"""lifecycle: legal holds, erasure requests and receipts, retention, exports

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22 01:08:15.125894
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('retention_policies',
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('rules', sa.Text(), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_retention_policies_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_retention_policies'))
    )
    op.create_table('retention_sweeps',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('dry_run', sa.Boolean(), nullable=False),
    sa.Column('origin', sa.String(length=12), nullable=False),
    sa.Column('due', sa.Text(), nullable=False),
    sa.Column('erased', sa.Text(), nullable=False),
    sa.Column('outcome', sa.String(length=32), nullable=False),
    sa.Column('review_id', sa.String(length=32), nullable=True),
    sa.Column('used_by', sa.String(length=32), nullable=True),
    sa.Column('policy_updated_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_retention_sweeps_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_sweeps'))
    )
    with op.batch_alter_table('retention_sweeps', schema=None) as batch_op:
        batch_op.create_index('ix_retention_sweeps_tenant_id_created_at', ['tenant_id', 'created_at'], unique=False)

    op.create_table('erasure_receipts',
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('receipt_id', sa.String(length=32), nullable=False),
    sa.Column('document', sa.Text(), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_erasure_receipts_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_erasure_receipts_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('patient_id', name=op.f('pk_erasure_receipts')),
    sa.UniqueConstraint('receipt_id', name=op.f('uq_erasure_receipts_receipt_id'))
    )
    op.create_table('erasure_requests',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('origin', sa.String(length=12), nullable=False),
    sa.Column('sweep_id', sa.String(length=32), nullable=True),
    sa.Column('dek_id', sa.String(length=64), nullable=True),
    sa.Column('reason', sa.LargeBinary(), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('requested_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('completed_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("origin IN ('request', 'retention')", name=op.f('ck_erasure_requests_origin')),
    sa.CheckConstraint("state IN ('pending', 'done')", name=op.f('ck_erasure_requests_state')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_erasure_requests_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_erasure_requests_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_erasure_requests')),
    sa.UniqueConstraint('patient_id', name=op.f('uq_erasure_requests_patient_id'))
    )
    with op.batch_alter_table('erasure_requests', schema=None) as batch_op:
        batch_op.create_index('ix_erasure_requests_state', ['state'], unique=False)

    op.create_table('exports',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('progress', sa.Float(), nullable=False),
    sa.Column('items_done', sa.Integer(), nullable=False),
    sa.Column('items_total', sa.Integer(), nullable=False),
    sa.Column('blob_id', sa.String(length=32), nullable=True),
    sa.Column('plain_size', sa.BigInteger(), nullable=True),
    sa.Column('error', sa.String(length=100), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('ready_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('expires_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('downloaded_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_exports_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_exports_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_exports'))
    )
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.create_index('ix_exports_patient_id', ['patient_id'], unique=False)
        batch_op.create_index('ix_exports_status_expires_at', ['status', 'expires_at'], unique=False)

    op.create_table('legal_holds',
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('reason', sa.LargeBinary(), nullable=True),
    sa.Column('placed_by', sa.String(length=64), nullable=False),
    sa.Column('placed_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lifted_by', sa.String(length=64), nullable=True),
    sa.Column('lifted_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_legal_holds_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_legal_holds_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('patient_id', name=op.f('pk_legal_holds'))
    )


def downgrade() -> None:
    op.drop_table('legal_holds')
    with op.batch_alter_table('exports', schema=None) as batch_op:
        batch_op.drop_index('ix_exports_status_expires_at')
        batch_op.drop_index('ix_exports_patient_id')

    op.drop_table('exports')
    with op.batch_alter_table('erasure_requests', schema=None) as batch_op:
        batch_op.drop_index('ix_erasure_requests_state')

    op.drop_table('erasure_requests')
    op.drop_table('erasure_receipts')
    with op.batch_alter_table('retention_sweeps', schema=None) as batch_op:
        batch_op.drop_index('ix_retention_sweeps_tenant_id_created_at')

    op.drop_table('retention_sweeps')
    op.drop_table('retention_policies')
