"""review claims: a moderator's hold on a listing; listing indexes for the review queue's orders

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 12:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)
_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')


def upgrade() -> None:
    op.create_table('review_claims',
    sa.Column('listing_row_id', _BIG_ID, nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('claimed_at', _TS, nullable=False),
    sa.Column('expires_at', _TS, nullable=False),
    sa.ForeignKeyConstraint(['listing_row_id'], ['listings.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('listing_row_id')
    )
    op.create_index('ix_review_claims_expires_at', 'review_claims', ['expires_at'])
    # the queue's two orders and its brand scope, as keyset scans
    op.create_index('ix_listings_risk_id', 'listings', ['risk', 'id'])
    op.create_index('ix_listings_brand_id_id', 'listings', ['brand_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_listings_brand_id_id', table_name='listings')
    op.drop_index('ix_listings_risk_id', table_name='listings')
    op.drop_index('ix_review_claims_expires_at', table_name='review_claims')
    op.drop_table('review_claims')
