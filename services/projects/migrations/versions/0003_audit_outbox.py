"""Each project keeps the audit grant of its latest unlock, and the audit outbox (events
recorded with the changes they describe, delivered to crypto by a relay).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("audit_grant", sa.LargeBinary(), nullable=True))
    op.create_table(
        "project_audit_outbox",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.String(36), nullable=False),
        sa.Column("project_id", sa.String(36), nullable=False),
        sa.Column("event_type", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(200), nullable=False),
        sa.Column("attributes", sa.Text(), nullable=False),
        sa.Column("audit_grant", sa.LargeBinary(), nullable=False),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(200), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_project_audit_outbox"),
        sa.UniqueConstraint("event_id", name="uq_project_audit_outbox_event_id"),
    )
    op.create_index("ix_project_audit_outbox_project_id", "project_audit_outbox", ["project_id"])


def downgrade() -> None:
    op.drop_index("ix_project_audit_outbox_project_id", "project_audit_outbox")
    op.drop_table("project_audit_outbox")
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("audit_grant")
