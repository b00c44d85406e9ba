"""triggers and the lifecycle of old data: schedules and their fires, event triggers and receipts,
archived workflows and their retention, rows purged

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.add_column(sa.Column('archived_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('retention_days', sa.Integer(), nullable=True))
    op.create_table(
        'schedules',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('workflow_id', sa.String(length=100), nullable=False),
        sa.Column('id', sa.String(length=100), nullable=False),
        sa.Column('cron', sa.String(length=200), nullable=False),
        sa.Column('timezone', sa.String(length=64), nullable=False),
        sa.Column('input', JSON, nullable=False),
        sa.Column('overlap', sa.String(length=16), nullable=False),
        sa.Column('catchup', sa.String(length=8), nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('last_slot', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_fire_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_run_id', sa.String(length=40), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id', 'workflow_id'], ['workflows.tenant_id', 'workflows.id']),
        sa.PrimaryKeyConstraint('tenant_id', 'workflow_id', 'id'),
    )
    op.create_index('ix_schedules_next_fire', 'schedules', ['next_fire_at'], unique=False,
                    postgresql_where=sa.text('next_fire_at IS NOT NULL'), sqlite_where=sa.text('next_fire_at IS NOT NULL'))
    op.create_table(
        'schedule_fires',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('workflow_id', sa.String(length=100), nullable=False),
        sa.Column('schedule_id', sa.String(length=100), nullable=False),
        sa.Column('slot', sa.DateTime(timezone=True), nullable=False),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('run_id', sa.String(length=40), nullable=True),
        sa.Column('detail', sa.String(length=2000), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'workflow_id', 'schedule_id', 'slot'),
    )
    op.create_table(
        'workflow_triggers',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('event', sa.String(length=200), nullable=False),
        sa.Column('workflow_id', sa.String(length=100), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'event', 'workflow_id'),
    )
    op.create_table(
        'event_receipts',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('id', sa.String(length=200), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'id'),
    )
    op.create_index(op.f('ix_event_receipts_created_at'), 'event_receipts', ['created_at'], unique=False)
    op.create_table(
        'purged_rows',
        sa.Column('tenant_id', sa.String(length=64), nullable=False),
        sa.Column('table_name', sa.String(length=64), nullable=False),
        sa.Column('rows', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('tenant_id', 'table_name'),
    )


def downgrade() -> None:
    op.drop_table('purged_rows')
    op.drop_index(op.f('ix_event_receipts_created_at'), table_name='event_receipts')
    op.drop_table('event_receipts')
    op.drop_table('workflow_triggers')
    op.drop_table('schedule_fires')
    op.drop_index('ix_schedules_next_fire', table_name='schedules')
    op.drop_table('schedules')
    with op.batch_alter_table('workflows', schema=None) as batch_op:
        batch_op.drop_column('retention_days')
        batch_op.drop_column('archived_at')
