"""64-bit ids for the tables that grow with every scored listing (PostgreSQL)

Listings, their serials and reviews of them get a row per scored photo: a 32-bit id (and the 32-bit
sequence PostgreSQL made for it) would run out at 2^31 rows. SQLite's INTEGER PRIMARY KEY is 64-bit
already, so nothing changes there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

# (table, column, owns a sequence)
_COLUMNS = [
    ('listings', 'id', True),
    ('listing_serials', 'id', True),
    ('listing_serials', 'listing_row_id', False),
    ('reviews', 'listing_row_id', False),
]


def upgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column, sequence in _COLUMNS:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_type=sa.Integer(), existing_nullable=False)
        if sequence:
            op.execute(f"ALTER SEQUENCE {table}_{column}_seq AS bigint MAXVALUE 9223372036854775807")


def downgrade() -> None:
    if op.get_bind().dialect.name != 'postgresql':
        return
    for table, column, sequence in reversed(_COLUMNS):
        if sequence:
            op.execute(f"ALTER SEQUENCE {table}_{column}_seq AS integer MAXVALUE 2147483647")
        op.alter_column(table, column, type_=sa.Integer(), existing_type=sa.BigInteger(), existing_nullable=False)
