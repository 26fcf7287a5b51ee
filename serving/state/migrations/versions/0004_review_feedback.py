"""review feedback: a brand may take genuine references from reviews; a review records what it removed

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('brands') as batch:
        batch.add_column(sa.Column('genuine_from_reviews', sa.Boolean(), nullable=False, server_default=sa.false()))
    with op.batch_alter_table('reviews') as batch:
        batch.add_column(sa.Column('removed_reference_id', sa.Integer(), nullable=True))
    op.create_index('ix_reviews_image_sha256', 'reviews', ['image_sha256'])


def downgrade() -> None:
    op.drop_index('ix_reviews_image_sha256', table_name='reviews')
    with op.batch_alter_table('reviews') as batch:
        batch.drop_column('removed_reference_id')
    with op.batch_alter_table('brands') as batch:
        batch.drop_column('genuine_from_reviews')
