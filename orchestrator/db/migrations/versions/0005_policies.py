"""policies: decisions on steps, risk level and raised limits on runs, the gated call on approvals

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-25
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('risk_level', sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column('limits', JSON, nullable=True))
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waiting_on', sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column('policy', JSON, nullable=True))
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.add_column(sa.Column('call', JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('approvals', schema=None) as batch_op:
        batch_op.drop_column('call')
    with op.batch_alter_table('steps', schema=None) as batch_op:
        batch_op.drop_column('policy')
        batch_op.drop_column('waiting_on')
    with op.batch_alter_table('runs', schema=None) as batch_op:
        batch_op.drop_column('limits')
        batch_op.drop_column('risk_level')
