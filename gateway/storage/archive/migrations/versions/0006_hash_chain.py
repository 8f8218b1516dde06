"""the archive's hash chain and its signed checkpoints

Every archive row is linked, in the order written, into a chain per node
(``chain``); signed heads of that chain are ``checkpoints``.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        'chain',
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('ref', sa.String(length=400), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('hash', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint('node', 'seq', name=op.f('pk_chain')),
    )
    op.create_table(
        'checkpoints',
        sa.Column('node', sa.String(length=64), nullable=False),
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('head', sa.String(length=64), nullable=False),
        sa.Column('at', sa.Float(), nullable=False),
        sa.Column('key', sa.String(length=64), nullable=False),
        sa.Column('signature', sa.String(length=128), nullable=False),
        sa.PrimaryKeyConstraint('node', 'seq', name=op.f('pk_checkpoints')),
    )


def downgrade():
    op.drop_table('checkpoints')
    op.drop_table('chain')
