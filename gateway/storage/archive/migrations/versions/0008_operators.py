"""the admin API's operators

Revision ID: 0008
Revises: 0007
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'operators',
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('role', sa.String(length=16), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('revoked', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('name', name=op.f('pk_operators')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_operators_token_hash')),
    )


def downgrade():
    op.drop_table('operators')
