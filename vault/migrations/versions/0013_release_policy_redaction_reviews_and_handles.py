"""release policy, redaction reviews and handles

Revision ID: 0013
Revises: 0008
Create Date: 2026-12-05 04:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('release_policies',
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('deidentified', sa.String(length=8), nullable=False),
    sa.Column('updated_by', sa.String(length=64), nullable=False),
    sa.Column('updated_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.CheckConstraint("deidentified IN ('review', 'auto')", name=op.f('ck_release_policies_deidentified')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_release_policies_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('tenant_id', name=op.f('pk_release_policies'))
    )
    op.create_table('redaction_approvals',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('media_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('rects', sa.Text(), nullable=False),
    sa.Column('approved_by', sa.String(length=64), nullable=False),
    sa.Column('approved_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('voided_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('voided_by', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['media_id'], ['media.id'], name=op.f('fk_redaction_approvals_media_id_media')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_redaction_approvals_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_redaction_approvals_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_redaction_approvals'))
    )
    with op.batch_alter_table('redaction_approvals', schema=None) as batch_op:
        batch_op.create_index('ix_redaction_approvals_tenant_id_approved_at', ['tenant_id', 'approved_at'], unique=False)

    op.create_table('redactions',
    sa.Column('media_id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('boxes', sa.Text(), nullable=True),
    sa.Column('boxes_by', sa.String(length=64), nullable=True),
    sa.Column('original_blob_id', sa.String(length=32), nullable=True),
    sa.Column('original_sha256', sa.String(length=64), nullable=True),
    sa.Column('orientation', sa.Integer(), nullable=True),
    sa.Column('rendered_digest', sa.String(length=64), nullable=True),
    sa.Column('approval_id', sa.String(length=32), nullable=True),
    sa.Column('updated_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['media_id'], ['media.id'], name=op.f('fk_redactions_media_id_media')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_redactions_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_redactions_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('media_id', name=op.f('pk_redactions'))
    )
    op.create_table('release_handles',
    sa.Column('handle', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('media_id', sa.String(length=32), nullable=False),
    sa.Column('purpose', sa.String(length=20), nullable=False),
    sa.ForeignKeyConstraint(['media_id'], ['media.id'], name=op.f('fk_release_handles_media_id_media')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_release_handles_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('handle', name=op.f('pk_release_handles')),
    sa.UniqueConstraint('media_id', 'purpose', name=op.f('uq_release_handles_media_id_purpose'))
    )
    with op.batch_alter_table('release_handles', schema=None) as batch_op:
        batch_op.create_index('ix_release_handles_tenant_id_handle', ['tenant_id', 'handle'], unique=False)

    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.add_column(sa.Column('approval_id', sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column('handle', sa.String(length=40), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('releases', schema=None) as batch_op:
        batch_op.drop_column('handle')
        batch_op.drop_column('approval_id')

    with op.batch_alter_table('release_handles', schema=None) as batch_op:
        batch_op.drop_index('ix_release_handles_tenant_id_handle')

    op.drop_table('release_handles')
    op.drop_table('redactions')
    with op.batch_alter_table('redaction_approvals', schema=None) as batch_op:
        batch_op.drop_index('ix_redaction_approvals_tenant_id_approved_at')

    op.drop_table('redaction_approvals')
    op.drop_table('release_policies')
