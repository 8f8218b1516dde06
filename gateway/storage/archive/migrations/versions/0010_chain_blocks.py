"""the chain a block a row

The writer stores each block of chain entries as one row of
``chain_blocks`` (its entries packed) instead of one ``chain`` row an
entry; the entries written before stay in ``chain``.

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'chain_blocks',
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('last', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('first', sa.BigInteger(), nullable=False),
        sa.Column('entries', sa.Text(), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('format', sa.SmallInteger(), nullable=False),
        sa.PrimaryKeyConstraint('node', 'last', name=op.f('pk_chain_blocks')),
    )


def downgrade():
    op.drop_table('chain_blocks')
