"""the shared rate-limit counters' table on PostgreSQL (serving.ratelimit), made by migration rather than
by each server at start-up; SQLite homes keep their counters in a file of their own, not in the catalog

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 15:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

_TABLE = 'markguard_rate_limits'


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != 'postgresql':
        return
    if sa.inspect(bind).has_table(_TABLE):  # made at start-up by a server older than this migration
        return
    op.create_table(_TABLE,
    sa.Column('key', sa.String(length=300), nullable=False),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == 'postgresql':
        op.execute(f'DROP TABLE IF EXISTS {_TABLE}')  # counters only: dropping them resets the budgets
