"""legal holds, purges and the rows they removed

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'holds',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('user', sa.String(length=128), nullable=False),
        sa.Column('peer', sa.String(length=512), nullable=True),
        sa.Column('since', sa.Float(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=False),
        sa.Column('created', sa.Float(), nullable=False),
        sa.Column('released', sa.Float(), nullable=True),
        sa.Column('release_reason', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_holds')),
    )
    op.create_table(
        'purges',
        sa.Column('id', sa.String(length=32), nullable=False),
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('rules', sa.Text(), nullable=False),
        sa.Column('count', sa.Integer(), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_purges')),
    )
    op.create_table(
        'purged',
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('ref', sa.String(length=400), nullable=False),
        sa.Column('purge_id', sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint('kind', 'ref', name=op.f('pk_purged')),
    )
    op.create_index(op.f('ix_purged_purge_id'), 'purged', ['purge_id'], unique=False)


def downgrade():
    op.drop_index(op.f('ix_purged_purge_id'), table_name='purged')
    op.drop_table('purged')
    op.drop_table('purges')
    op.drop_table('holds')
