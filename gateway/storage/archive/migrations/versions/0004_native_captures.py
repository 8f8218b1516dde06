"""native captures

With ``[archive] capture = "native"`` each archived event also keeps the
bytes it arrived as and each rendering as sent to a network, with notes of
what the translation lost.

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'captures',
        sa.Column('event_id', sa.String(length=32), nullable=False),
        sa.Column('direction', sa.String(length=8), nullable=False),
        sa.Column('network', sa.String(length=32), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('data', sa.Text(), nullable=False),
        sa.Column('notes', sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint('event_id', 'direction', 'network', name=op.f('pk_captures')),
    )


def downgrade():
    op.drop_table('captures')
