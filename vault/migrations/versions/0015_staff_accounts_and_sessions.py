"""staff accounts, enrolment links and web sessions

Revision ID: 0015
Revises: 0008
Create Date: 2026-12-05 04:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0015'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'staff_accounts',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('email', sa.String(length=254), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('password_hash', sa.String(length=255), nullable=True),
        sa.Column('totp_sealed', sa.LargeBinary(), nullable=True),
        sa.Column('totp_last_step', sa.Integer(), nullable=False),
        sa.Column('failed_logins', sa.Integer(), nullable=False),
        sa.Column('locked_until', vault.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('enrolled_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.Column('disabled_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_staff_accounts_tenant_id_tenants')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_staff_accounts')),
        sa.UniqueConstraint('tenant_id', 'email', name=op.f('uq_staff_accounts_tenant_id_email')),
    )
    with op.batch_alter_table('staff_accounts', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_accounts_tenant_id'), ['tenant_id'], unique=False)
    op.create_table(
        'staff_enrolments',
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('staff_id', sa.String(length=32), nullable=False),
        sa.Column('totp_sealed', sa.LargeBinary(), nullable=False),
        sa.Column('expires_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['staff_id'], ['staff_accounts.id'], name=op.f('fk_staff_enrolments_staff_id_staff_accounts')),
        sa.PrimaryKeyConstraint('token_hash', name=op.f('pk_staff_enrolments')),
    )
    with op.batch_alter_table('staff_enrolments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_enrolments_staff_id'), ['staff_id'], unique=False)
    op.create_table(
        'staff_sessions',
        sa.Column('id_hash', sa.String(length=64), nullable=False),
        sa.Column('staff_id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('csrf', sa.String(length=64), nullable=False),
        sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.Column('verified_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['staff_id'], ['staff_accounts.id'], name=op.f('fk_staff_sessions_staff_id_staff_accounts')),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_staff_sessions_tenant_id_tenants')),
        sa.PrimaryKeyConstraint('id_hash', name=op.f('pk_staff_sessions')),
    )
    with op.batch_alter_table('staff_sessions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_staff_sessions_staff_id'), ['staff_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('staff_sessions', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_sessions_staff_id'))
    op.drop_table('staff_sessions')
    with op.batch_alter_table('staff_enrolments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_enrolments_staff_id'))
    op.drop_table('staff_enrolments')
    with op.batch_alter_table('staff_accounts', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_staff_accounts_tenant_id'))
    op.drop_table('staff_accounts')
