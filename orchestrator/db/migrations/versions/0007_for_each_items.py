"""for-each items: a for-each step's items are rows of `steps` of their own, named `<step>[<index>]`

Each item row has its own status, attempts, lease, due time and messages, like any step; it carries its
index and its value. The for-each step's row keeps its items' counts (`items`).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

_JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        # An item's id is its step's id (up to 64 characters) and "[<index>]".
        batch_op.alter_column('step_id', existing_type=sa.String(64), type_=sa.String(80))
        batch_op.add_column(sa.Column('item_of', sa.String(64), nullable=True))
        batch_op.add_column(sa.Column('item_index', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('item_value', _JSON, nullable=True))
        batch_op.add_column(sa.Column('item_counts', _JSON, nullable=True))
    # A step's items in index order: the next pending ones to dispatch, and GET …/items.
    op.create_index('ix_steps_items', 'steps', ['run_id', 'item_of', 'item_index'],
                    postgresql_where=sa.text('item_of IS NOT NULL'), sqlite_where=sa.text('item_of IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_steps_items', table_name='steps')
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_column('item_counts')
        batch_op.drop_column('item_value')
        batch_op.drop_column('item_index')
        batch_op.drop_column('item_of')
        batch_op.alter_column('step_id', existing_type=sa.String(80), type_=sa.String(64))
