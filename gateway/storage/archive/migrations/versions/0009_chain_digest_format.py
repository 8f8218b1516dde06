"""the chain's digest format per entry

Entries written from here on take the digest of a row's values as typed,
length-prefixed bytes (format 2) instead of a JSON array (format 1, what
every entry written before holds, which verify still checks).

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('chain', sa.Column('format', sa.SmallInteger(), nullable=False, server_default='1'))


def downgrade():
    with op.batch_alter_table('chain') as batch:
        batch.drop_column('format')
