"""the perceptual hash's three bands as indexed columns (vision.phash.BANDS): the near-duplicate search
looks up each band's values within 2 bits instead of reading every listing's hash

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 23:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None

# (shift, bits) as vision.phash.BANDS at this revision: a migration keeps its own copy, so a later change
# to the bands comes with a migration of its own
_BANDS = ((0, 21), (21, 21), (42, 22))


def upgrade() -> None:
    with op.batch_alter_table('listings', schema=None) as batch_op:
        for i in range(len(_BANDS)):
            batch_op.add_column(sa.Column(f'phash_b{i}', sa.Integer(), nullable=True))
    # signed BIGINT in both dialects: `>>` and `&` keep the same low bits as on the unsigned hash
    op.execute('UPDATE listings SET ' + ', '.join(
        f'phash_b{i} = (phash >> {shift}) & {(1 << bits) - 1}' for i, (shift, bits) in enumerate(_BANDS))
        + ' WHERE phash IS NOT NULL')
    with op.batch_alter_table('listings', schema=None) as batch_op:
        for i in range(len(_BANDS)):
            batch_op.create_index(f'ix_listings_phash_b{i}', [f'phash_b{i}'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('listings', schema=None) as batch_op:
        for i in range(len(_BANDS)):
            batch_op.drop_index(f'ix_listings_phash_b{i}')
        for i in range(len(_BANDS)):
            batch_op.drop_column(f'phash_b{i}')
