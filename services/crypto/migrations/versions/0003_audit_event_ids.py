"""Audit events may carry the outbox's event id, appended at most once per project.

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
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(sa.Column("event_id", sa.String(36), nullable=True))
        batch.create_unique_constraint(
            "uq_audit_events_project_id_event_id", ["project_id", "event_id"]
        )


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_constraint("uq_audit_events_project_id_event_id", type_="unique")
        batch.drop_column("event_id")
