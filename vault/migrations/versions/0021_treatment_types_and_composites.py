"""treatment types (a tenant-level vocabulary) and before/after composite releases

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-05 08:00:00

``treatment_types`` is the tenant's shared vocabulary ("lip filler"): the only grouping
marketing may filter de-identified items by. A treatment may name one (``type_id``). A
release of a before/after composite names its second photo in ``pair_media_id`` (the
first stays ``media_id``), so a withdrawal covering either photo recalls it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0021'
down_revision = '0020'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'treatment_types',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('tenant_id', sa.String(length=32), nullable=False),
        sa.Column('name', sa.String(length=80), nullable=False),
        sa.Column('created_at', vault.db.base.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], name=op.f('fk_treatment_types_tenant_id_tenants')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_treatment_types')),
        sa.UniqueConstraint('tenant_id', 'name', name=op.f('uq_treatment_types_tenant_id_name')),
    )
    with op.batch_alter_table('treatments') as batch:
        batch.add_column(sa.Column('type_id', sa.String(length=32), nullable=True))
        batch.create_foreign_key(batch.f('fk_treatments_type_id_treatment_types'), 'treatment_types', ['type_id'], ['id'])
    with op.batch_alter_table('releases') as batch:
        batch.add_column(sa.Column('pair_media_id', sa.String(length=32), nullable=True))
        batch.create_foreign_key(batch.f('fk_releases_pair_media_id_media'), 'media', ['pair_media_id'], ['id'])
        batch.create_index(batch.f('ix_releases_pair_media_id'), ['pair_media_id'])


def downgrade() -> None:
    with op.batch_alter_table('releases') as batch:
        batch.drop_index(batch.f('ix_releases_pair_media_id'))
        batch.drop_constraint(batch.f('fk_releases_pair_media_id_media'), type_='foreignkey')
        batch.drop_column('pair_media_id')
    with op.batch_alter_table('treatments') as batch:
        batch.drop_constraint(batch.f('fk_treatments_type_id_treatment_types'), type_='foreignkey')
        batch.drop_column('type_id')
    op.drop_table('treatment_types')
