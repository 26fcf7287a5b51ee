"""ring_listings and ring_fake_refs: the listings the ring network has taken in, with their title templates
under an indexed key and the known-fake references they matched, so an update looks older listings up
instead of reading the whole catalog; ring_state.listings_kept says whether they are filled (a network
built before this revision fills them on its next update)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')  # as listings.id (0003)


def upgrade() -> None:
    op.create_table('ring_listings',
    sa.Column('listing_row_id', _ROW_ID, nullable=False),
    sa.Column('seller_id', sa.String(length=200), nullable=False),
    sa.Column('template', sa.Text(), nullable=True),
    sa.Column('template_key', sa.String(length=64), nullable=True),
    sa.ForeignKeyConstraint(['listing_row_id'], ['listings.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('listing_row_id')
    )
    op.create_index('ix_ring_listings_template_key', 'ring_listings', ['template_key'], unique=False)
    op.create_table('ring_fake_refs',
    sa.Column('reference_id', sa.Integer(), nullable=False),
    sa.Column('listing_row_id', _ROW_ID, nullable=False),
    sa.ForeignKeyConstraint(['listing_row_id'], ['listings.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('reference_id', 'listing_row_id')
    )
    with op.batch_alter_table('ring_state', schema=None) as batch_op:
        # existing networks were built without ring_listings: false until their next update fills it
        batch_op.add_column(sa.Column('listings_kept', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('ring_state', schema=None) as batch_op:
        batch_op.drop_column('listings_kept')
    op.drop_table('ring_fake_refs')
    op.drop_index('ix_ring_listings_template_key', table_name='ring_listings')
    op.drop_table('ring_listings')
