"""dicom_exports: DICOM exports of photos to a PACS (DICOMweb STOW-RS), one row each

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-05 08:00:00

Ids, states, the derived UIDs (keyed hashes) and a short error code; no personal data.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0020'
down_revision = '0019'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('dicom_exports',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('tenant_id', sa.String(length=32), nullable=False),
    sa.Column('patient_id', sa.String(length=32), nullable=False),
    sa.Column('media_id', sa.String(length=32), nullable=False),
    sa.Column('status', sa.String(length=12), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('error', sa.String(length=100), nullable=True),
    sa.Column('study_uid', sa.String(length=64), nullable=True),
    sa.Column('series_uid', sa.String(length=64), nullable=True),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=True),
    sa.Column('transfer_syntax', sa.String(length=64), nullable=True),
    sa.Column('size_bytes', sa.BigInteger(), nullable=True),
    sa.Column('requested_by', sa.String(length=64), nullable=False),
    sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('sent_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'sending', 'sent', 'failed')", name=op.f('ck_dicom_exports_status')),
    sa.ForeignKeyConstraint(['media_id'], ['media.id'], name=op.f('fk_dicom_exports_media_id_media')),
    sa.ForeignKeyConstraint(['patient_id'], ['patients.id'], name=op.f('fk_dicom_exports_patient_id_patients')),
    sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_dicom_exports_tenant_id_tenants')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_dicom_exports'))
    )
    with op.batch_alter_table('dicom_exports', schema=None) as batch_op:
        batch_op.create_index('ix_dicom_exports_media_id', ['media_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('dicom_exports', schema=None) as batch_op:
        batch_op.drop_index('ix_dicom_exports_media_id')
    op.drop_table('dicom_exports')
