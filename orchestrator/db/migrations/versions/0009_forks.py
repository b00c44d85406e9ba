"""forks: a run forked from another run's step, and steps reused from the original

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('forked_from_run_id', sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column('forked_from_step_id', sa.String(length=64), nullable=True))
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('reused', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_column('reused')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('forked_from_step_id')
        batch_op.drop_column('forked_from_run_id')
