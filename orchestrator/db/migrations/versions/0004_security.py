"""security: webhook secrets and the replay guard of webhook deliveries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

Depends on 0002 only (0003 is another branch's); the merge re-chains it.
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('webhook_secrets',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('tenant_id', sa.String(length=64), nullable=False),
    sa.Column('workflow_id', sa.String(length=100), nullable=False),
    sa.Column('salt', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['tenant_id', 'workflow_id'], ['workflows.tenant_id', 'workflows.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('webhook_secrets', schema=None) as batch_op:
        batch_op.create_index('ix_webhook_secrets_workflow', ['workflow_id', 'tenant_id'], unique=False)

    op.create_table('webhook_deliveries',
    sa.Column('signature', sa.String(length=64), nullable=False),
    sa.Column('secret_id', sa.String(length=40), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('signature')
    )
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_webhook_deliveries_expires_at'), ['expires_at'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('webhook_deliveries', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_webhook_deliveries_expires_at'))
    op.drop_table('webhook_deliveries')
    with op.batch_alter_table('webhook_secrets', schema=None) as batch_op:
        batch_op.drop_index('ix_webhook_secrets_workflow')
    op.drop_table('webhook_secrets')
