"""releases: recall take-down (who confirmed the image removed, and when) and re-notification

Revision ID: 0019
Revises: 0008
Create Date: 2026-12-05 06:00:00

A recalled release stays open until marketing or the dpo records that the image was taken
down (``taken_down_at``, ``taken_down_by``); a recall still open after
``VAULT_RECALL_RENOTIFY_HOURS`` is re-notified to the webhooks (``recall_renotified_at``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0019'
down_revision = '0017'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('releases') as batch:
        batch.add_column(sa.Column('taken_down_at', vault.db.base.UTCDateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column('taken_down_by', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('recall_renotified_at', vault.db.base.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('releases') as batch:
        batch.drop_column('recall_renotified_at')
        batch.drop_column('taken_down_by')
        batch.drop_column('taken_down_at')
