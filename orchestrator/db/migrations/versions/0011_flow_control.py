"""flow control: run priority, the dispatch window's held steps, concurrency keys

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

# A held step is queued in the database but not admitted to its queue's window (no broker message yet).
_IN_WINDOW = "status IN ('queued', 'running') AND NOT held"


def upgrade() -> None:
    json_type = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('priority', sa.SmallInteger(), nullable=False, server_default='5'))
        batch_op.add_column(sa.Column('concurrency_keys', json_type, nullable=True))
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held', sa.Boolean(), nullable=False, server_default=sa.text('false')))
        batch_op.add_column(sa.Column('concurrency_key', sa.String(300), nullable=True))
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('held', sa.Boolean(), nullable=False, server_default=sa.text('false')))
        batch_op.add_column(sa.Column('tenant_id', sa.String(64), nullable=True))
        batch_op.add_column(sa.Column('priority', sa.SmallInteger(), nullable=True))
    op.create_index('ix_steps_window', 'steps', ['queue'], postgresql_where=sa.text(_IN_WINDOW),
                    sqlite_where=sa.text(_IN_WINDOW))
    op.create_index('ix_steps_concurrency', 'steps', ['concurrency_key'],
                    postgresql_where=sa.text('concurrency_key IS NOT NULL'),
                    sqlite_where=sa.text('concurrency_key IS NOT NULL'))
    op.create_index('ix_outbox_backlog', 'outbox', ['queue', 'tenant_id', 'priority', 'id'],
                    postgresql_where=sa.text('held'), sqlite_where=sa.text('held'))
    op.create_index('ix_runs_concurrency', 'runs', ['tenant_id', 'workflow_id'],
                    postgresql_where=sa.text('concurrency_keys IS NOT NULL'),
                    sqlite_where=sa.text('concurrency_keys IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_runs_concurrency', table_name='runs')
    op.drop_index('ix_outbox_backlog', table_name='outbox')
    op.drop_index('ix_steps_concurrency', table_name='steps')
    op.drop_index('ix_steps_window', table_name='steps')
    with op.batch_alter_table('outbox', schema=None) as batch_op:
        batch_op.drop_column('priority')
        batch_op.drop_column('tenant_id')
        batch_op.drop_column('held')
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_column('concurrency_key')
        batch_op.drop_column('held')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('concurrency_keys')
        batch_op.drop_column('priority')
