"""approvals questions and inbound events

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    _create_inbound_events()
    _create_approvals()
    _create_questions()
    _add_step_checkpoint_and_correlation()


def _create_inbound_events() -> None:
    """Events from POST /events, kept until they expire so a step that waits later still gets them."""
    op.create_table('inbound_events',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('correlation_key', sa.String(length=200), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=True),
    sa.Column('payload', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('inbound_events', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_events_key', ['tenant_id', 'correlation_key', 'expires_at'], unique=False)


def _create_approvals() -> None:
    """Approvals: one row per round of an approval step."""
    op.create_table('approvals',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('step_id', sa.String(length=64), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('prompt', sa.String(length=2000), nullable=True),
    sa.Column('comment', sa.String(length=10000), nullable=True),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_approvals_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_approvals_tenant_status', ['tenant_id', 'status', 'created_at'], unique=False)


def _create_questions() -> None:
    """Questions to a person and their answers."""
    op.create_table('questions',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('run_id', sa.String(length=40), nullable=False),
    sa.Column('step_id', sa.String(length=64), nullable=False),
    sa.Column('question', sa.String(length=10000), nullable=False),
    sa.Column('status', sa.String(length=20), nullable=False),
    sa.Column('answer', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('answered_by', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('answered_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['run_id'], ['runs.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_questions_run_id'), ['run_id'], unique=False)
        batch_op.create_index('ix_questions_tenant_status', ['tenant_id', 'status', 'created_at'], unique=False)


def _add_step_checkpoint_and_correlation() -> None:
    """Steps gain a checkpoint and the correlation key of the event a waiting step expects."""
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checkpoint', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))
        batch_op.add_column(sa.Column('correlation_key', sa.String(length=200), nullable=True))
        batch_op.create_index('ix_steps_correlation', ['correlation_key'], unique=False, postgresql_where=sa.text('correlation_key IS NOT NULL'), sqlite_where=sa.text('correlation_key IS NOT NULL'))


def downgrade() -> None:
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_index('ix_steps_correlation', postgresql_where=sa.text('correlation_key IS NOT NULL'), sqlite_where=sa.text('correlation_key IS NOT NULL'))
        batch_op.drop_column('correlation_key')
        batch_op.drop_column('checkpoint')

    with op.batch_alter_table('questions', schema=None) as batch_op:
        batch_op.drop_index('ix_questions_tenant_status')
        batch_op.drop_index(batch_op.f('ix_questions_run_id'))

    op.drop_table('questions')
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_index('ix_approvals_tenant_status')
        batch_op.drop_index(batch_op.f('ix_approvals_run_id'))

    op.drop_table('approvals')
    with op.batch_alter_table('inbound_events', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_events_key')

    op.drop_table('inbound_events')
