"""listing_evidence.listing_row_id as BIGINT on PostgreSQL, like the listings.id it refers to (0003)

Migration 0005 made the column INTEGER: the first listing past 2^31 could not keep its ring evidence.
Found by comparing the migrated catalog with the declared models (tests/serving/test_catalog.py).
SQLite's INTEGER is 64-bit already.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 23:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('listing_evidence', 'listing_row_id', type_=sa.BigInteger(), existing_type=sa.Integer(),
                        existing_nullable=False)


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.alter_column('listing_evidence', 'listing_row_id', type_=sa.Integer(), existing_type=sa.BigInteger(),
                        existing_nullable=False)
