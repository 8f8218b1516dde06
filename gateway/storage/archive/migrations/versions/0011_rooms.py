"""rooms that outlive their members

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'rooms',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('subject', sa.Text(), nullable=False),
        sa.Column('owner', sa.String(length=255), nullable=False),
        sa.Column('networks', sa.String(length=255), nullable=False),
        sa.Column('external', sa.Boolean(), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_rooms')),
    )


def downgrade():
    op.drop_table('rooms')
