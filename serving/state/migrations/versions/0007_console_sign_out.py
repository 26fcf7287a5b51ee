"""console sign-out: revoked session nonces, refused until the session would have expired

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 15:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('console_revoked_sessions',
    sa.Column('nonce', sa.String(length=64), nullable=False),
    sa.Column('key_id', sa.String(length=32), nullable=False),
    sa.Column('expires_at', _TS, nullable=False),
    sa.Column('revoked_at', _TS, nullable=False),
    sa.PrimaryKeyConstraint('nonce')
    )
    op.create_index('ix_console_revoked_sessions_expires_at', 'console_revoked_sessions', ['expires_at'])


def downgrade() -> None:
    op.drop_index('ix_console_revoked_sessions_expires_at', table_name='console_revoked_sessions')
    op.drop_table('console_revoked_sessions')
