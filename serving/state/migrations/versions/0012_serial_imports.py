"""serial_imports, and genuine_serials.import_id: an import's serials count once it has finished, so an
import writes in short transactions (other writers go between them) and one killed part-way adds
nothing (its rows are removed by the brand's next import)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 12:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table('serial_imports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('brand_id', sa.Integer(), nullable=False),
    sa.Column('started_at', _TS, nullable=False),
    sa.Column('finished_at', _TS, nullable=True),
    sa.ForeignKeyConstraint(['brand_id'], ['brands.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_serial_imports_brand_id', 'serial_imports', ['brand_id'], unique=False)
    with op.batch_alter_table('genuine_serials', schema=None) as batch_op:
        batch_op.add_column(sa.Column('import_id', sa.Integer(), nullable=True))  # existing rows: registered
        batch_op.create_index('ix_genuine_serials_import_id', ['import_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('genuine_serials', schema=None) as batch_op:
        batch_op.drop_index('ix_genuine_serials_import_id')
        batch_op.drop_column('import_id')
    op.drop_index('ix_serial_imports_brand_id', table_name='serial_imports')
    op.drop_table('serial_imports')
