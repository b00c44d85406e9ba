"""observability: indexes for analytics, metrics and queue rates; metric rollups

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

STEP_ERRORS = "type IN ('step_retrying', 'step_failed')"


def upgrade() -> None:
    op.create_table('metric_rollups',
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('series', sa.String(length=32), nullable=False),
    sa.Column('step_type', sa.String(length=16), nullable=False),
    sa.Column('le', sa.String(length=16), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('total', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('tenant_id', 'series', 'step_type', 'le')
    )
    op.create_table('metric_watermarks',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('upto', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.create_index('ix_runs_tenant_created_status', ['tenant_id', 'created_at', 'status'], unique=False)
        batch_op.create_index('ix_runs_tenant_status_completed', ['tenant_id', 'status', 'completed_at'], unique=False)
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.create_index('ix_steps_queued', ['queued_at'], unique=False,
                              postgresql_where=sa.text('queued_at IS NOT NULL'),
                              sqlite_where=sa.text('queued_at IS NOT NULL'))
        batch_op.create_index('ix_steps_completed', ['completed_at'], unique=False,
                              postgresql_where=sa.text('completed_at IS NOT NULL'),
                              sqlite_where=sa.text('completed_at IS NOT NULL'))
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.create_index('ix_events_step_errors', ['type'], unique=False,
                              postgresql_where=sa.text(STEP_ERRORS), sqlite_where=sa.text(STEP_ERRORS))


def downgrade() -> None:
    op.drop_table('metric_watermarks')
    op.drop_table('metric_rollups')
    with op.batch_alter_table('events', schema=None) as batch_op:
        batch_op.drop_index('ix_events_step_errors')
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_index('ix_steps_completed')
        batch_op.drop_index('ix_steps_queued')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_index('ix_runs_tenant_status_completed')
        batch_op.drop_index('ix_runs_tenant_created_status')
