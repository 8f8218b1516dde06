"""learned login secrets

Secrets of people whose password lives in LDAP are derived when they log in
with a protocol that sends the password; ``learned`` is when that happened
(NULL for secrets derived from a password set in the gateway's directory).

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('secrets') as batch:
        batch.add_column(sa.Column('learned', sa.Float(), nullable=True))


def downgrade():
    with op.batch_alter_table('secrets') as batch:
        batch.drop_column('learned')
