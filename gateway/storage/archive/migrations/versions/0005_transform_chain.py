"""the event as sent, beside the event as transformed

When transform hooks change an event, its row keeps the event as its sender
sent it (``original``, JSON) and the names of the hooks that changed it, in
order (``transforms``).

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('events') as batch:
        batch.add_column(sa.Column('original', sa.Text(), nullable=True))
        batch.add_column(sa.Column('transforms', sa.String(length=512), nullable=True))


def downgrade():
    with op.batch_alter_table('events') as batch:
        batch.drop_column('transforms')
        batch.drop_column('original')
