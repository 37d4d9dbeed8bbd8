"""exports

Revision ID: 0004
Revises: 0003
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('export_requests',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('project_id', sa.String(length=64), nullable=False),
    sa.Column('bubble_id', sa.String(length=64), nullable=False),
    sa.Column('requester', sa.String(length=64), nullable=False),
    sa.Column('justification', sa.Text(), nullable=False),
    sa.Column('paths', sa.JSON(), nullable=False),
    sa.Column('state', sa.String(length=20), nullable=False),
    sa.Column('round', sa.Integer(), nullable=False),
    sa.Column('files', sa.JSON(), nullable=False),
    sa.Column('findings', sa.JSON(), nullable=False),
    sa.Column('decision_id', sa.String(length=64), nullable=True),
    sa.Column('decision', sa.JSON(), nullable=False),
    sa.Column('votes', sa.JSON(), nullable=False),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.String(length=32), nullable=False),
    sa.Column('updated_at', sa.String(length=32), nullable=False),
    sa.Column('released_at', sa.String(length=32), nullable=True),
    sa.ForeignKeyConstraint(['bubble_id'], ['bubbles.id'], ),
    sa.ForeignKeyConstraint(['decision_id'], ['decisions.id'], ),
    sa.ForeignKeyConstraint(['project_id'], ['projects.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_export_requests_bubble_id'), 'export_requests', ['bubble_id'], unique=False)
    op.create_index(op.f('ix_export_requests_project_id'), 'export_requests', ['project_id'], unique=False)
    op.create_index(op.f('ix_export_requests_requester'), 'export_requests', ['requester'], unique=False)
    op.create_index(op.f('ix_export_requests_state'), 'export_requests', ['state'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_export_requests_state'), table_name='export_requests')
    op.drop_index(op.f('ix_export_requests_requester'), table_name='export_requests')
    op.drop_index(op.f('ix_export_requests_project_id'), table_name='export_requests')
    op.drop_index(op.f('ix_export_requests_bubble_id'), table_name='export_requests')
    op.drop_table('export_requests')
