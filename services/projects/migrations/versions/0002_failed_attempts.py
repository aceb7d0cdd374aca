"""Wrong passphrases since the last unlock (counted, never the guess); no tokens at rest.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "projects",
        sa.Column("failed_attempts", sa.Integer(), nullable=False, server_default="0"),
    )
    # Deletions no longer keep the caller's unlock token: it was reusable by anyone reading
    # this table. The deletion's audit event is appended before the deletion is recorded.
    op.execute("UPDATE project_deletions SET sealed_token = NULL")


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("failed_attempts")
