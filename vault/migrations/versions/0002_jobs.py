"""jobs: the job queue table and the schedule of periodic jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22 00:43:27.915628
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('job_schedules',
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('next_run_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('last_enqueued_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kind', name=op.f('pk_job_schedules'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('kind', sa.String(length=100), nullable=False),
    sa.Column('payload', sa.Text(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=True),
    sa.Column('fence', sa.Integer(), nullable=False),
    sa.Column('run_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('lease_until', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=100), nullable=True),
    sa.Column('dedupe_key', sa.String(length=200), nullable=True),
    sa.Column('last_error', sa.String(length=300), nullable=True),
    sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('finished_at', vault.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.CheckConstraint("state IN ('queued', 'running', 'done', 'dead')", name=op.f('ck_jobs_state')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('dedupe_key', name=op.f('uq_jobs_dedupe_key'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_state_run_at', ['state', 'run_at'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_state_run_at')

    op.drop_table('jobs')
    op.drop_table('job_schedules')
