"""intelligence: listing evidence, seller edges, rings, case exports, alliance sharing

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('listing_evidence',
    sa.Column('listing_row_id', sa.Integer(), nullable=False),
    sa.Column('model_tag', sa.String(length=200), nullable=False),
    sa.Column('vector', sa.LargeBinary(), nullable=True),
    sa.Column('fake_refs', sa.JSON(), nullable=False),
    sa.Column('listed_at', _TS, nullable=True),
    sa.Column('created_at', _TS, nullable=False),
    sa.ForeignKeyConstraint(['listing_row_id'], ['listings.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('listing_row_id')
    )
    op.create_table('seller_edges',
    sa.Column('seller_a', sa.String(length=200), nullable=False),
    sa.Column('seller_b', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=40), nullable=False),
    sa.Column('weight', sa.Float(), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('examples', sa.JSON(), nullable=False),
    sa.Column('first_seen', _TS, nullable=False),
    sa.Column('last_seen', _TS, nullable=False),
    sa.PrimaryKeyConstraint('seller_a', 'seller_b', 'kind')
    )
    op.create_index('ix_seller_edges_b', 'seller_edges', ['seller_b'])
    op.create_table('rings',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('score', sa.Float(), nullable=False),
    sa.Column('sellers', sa.Integer(), nullable=False),
    sa.Column('listings', sa.Integer(), nullable=False),
    sa.Column('brand_ids', sa.JSON(), nullable=False),
    sa.Column('flagged_share', sa.Float(), nullable=False),
    sa.Column('first_seen', _TS, nullable=False),
    sa.Column('last_seen', _TS, nullable=False),
    sa.Column('updated_at', _TS, nullable=False),
    sa.Column('dissolved_at', _TS, nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('ring_members',
    sa.Column('ring_id', sa.Integer(), nullable=False),
    sa.Column('seller_id', sa.String(length=200), nullable=False),
    sa.ForeignKeyConstraint(['ring_id'], ['rings.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('ring_id', 'seller_id')
    )
    op.create_index('ix_ring_members_seller_id', 'ring_members', ['seller_id'])
    op.create_table('ring_state',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('last_listing_row', sa.Integer(), nullable=False),
    sa.Column('updated_at', _TS, nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_table('case_exports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ring_id', sa.Integer(), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=False),
    sa.Column('role', sa.String(length=20), nullable=False),
    sa.Column('brand_id', sa.Integer(), nullable=True),
    sa.Column('files', sa.Integer(), nullable=False),
    sa.Column('manifest_sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', _TS, nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_case_exports_ring_id', 'case_exports', ['ring_id'])
    op.create_table('brand_sharing',
    sa.Column('brand_id', sa.Integer(), nullable=False),
    sa.Column('shared', sa.Boolean(), nullable=False),
    sa.Column('reference_ids', sa.JSON(), nullable=True),
    sa.Column('updated_at', _TS, nullable=False),
    sa.ForeignKeyConstraint(['brand_id'], ['brands.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('brand_id')
    )


def downgrade() -> None:
    op.drop_table('brand_sharing')
    op.drop_index('ix_case_exports_ring_id', table_name='case_exports')
    op.drop_table('case_exports')
    op.drop_table('ring_state')
    op.drop_index('ix_ring_members_seller_id', table_name='ring_members')
    op.drop_table('ring_members')
    op.drop_table('rings')
    op.drop_index('ix_seller_edges_b', table_name='seller_edges')
    op.drop_table('seller_edges')
    op.drop_table('listing_evidence')
