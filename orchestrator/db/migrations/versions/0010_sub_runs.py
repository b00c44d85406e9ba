"""sub-runs: a `workflow` step's child run knows its parent run and step, and how deep it is

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parent_run_id', sa.String(40), nullable=True))
        batch_op.add_column(sa.Column('parent_step_id', sa.String(80), nullable=True))
        batch_op.add_column(sa.Column('depth', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_runs_parent', 'runs', ['parent_run_id'], postgresql_where=sa.text('parent_run_id IS NOT NULL'),
                    sqlite_where=sa.text('parent_run_id IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_runs_parent', table_name='runs')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('depth')
        batch_op.drop_column('parent_step_id')
        batch_op.drop_column('parent_run_id')
