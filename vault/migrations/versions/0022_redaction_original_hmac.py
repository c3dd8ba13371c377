"""redactions: the stored original is named by a keyed HMAC, not its plain SHA-256

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-05 08:00:00

``redactions.original_sha256`` held the SHA-256 of the stripped original: anyone with a
copy of the metadata and a guessed photo could confirm it was stored (and the approval
digests, made over it, confirmed it too). It becomes ``original_hmac``: HMAC-SHA256 under
the tenant's ``redaction.original`` purpose key (docs/keys.md), computed by the service
from the decrypted original when it next reads it. A migration has no keys, so existing
values cannot be recomputed here; they are dropped, and with them every approval made
over them:

* every approval still holding is voided (``voided_by = 'migration:0022'``): the photo is
  ``pending`` again and a person approves it once more (its digest is now another one);
* de-identified releases made under those approvals and not yet downloaded are refused at
  download (403 ``needs_review``), as after any change of the boxes: release again once the
  photo is approved;
* the stored redacted renditions are re-rendered on the next look (the old ones are
  shredded then).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

import vault.db.base

revision = '0022'
down_revision = '0021'
branch_labels = None
depends_on = None

_VOIDED_BY = 'migration:0022'


def upgrade() -> None:
    approvals = sa.table('redaction_approvals', sa.column('voided_at', vault.db.base.UTCDateTime(timezone=True)),
                         sa.column('voided_by', sa.String))
    op.execute(approvals.update().where(approvals.c.voided_at.is_(None))
               .values(voided_at=datetime.now(UTC), voided_by=_VOIDED_BY))
    redactions = sa.table('redactions', sa.column('approval_id', sa.String), sa.column('rendered_digest', sa.String))
    op.execute(redactions.update().values(approval_id=None, rendered_digest=None))
    with op.batch_alter_table('redactions') as batch:
        batch.drop_column('original_sha256')
        batch.add_column(sa.Column('original_hmac', sa.String(length=64), nullable=True))


def downgrade() -> None:
    # The HMACs cannot be turned back into SHA-256s: the facts are read again on next use.
    with op.batch_alter_table('redactions') as batch:
        batch.drop_column('original_hmac')
        batch.add_column(sa.Column('original_sha256', sa.String(length=64), nullable=True))
