"""media.faces_state: the full-resolution face search's state

Revision ID: 0012
Revises: 0008
Create Date: 2026-12-05 05:10:00

``pending`` until the search job has run, ``searched`` when the whole photo was searched,
``incomplete`` when a time or memory bound stopped it (a person must review). Rows made
before this revision were searched only on a 640 px copy: they become ``incomplete``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('media') as batch:
        batch.add_column(sa.Column('faces_state', sa.String(length=12), server_default='incomplete', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('media') as batch:
        batch.drop_column('faces_state')
