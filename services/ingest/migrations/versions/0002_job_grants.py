"""Documents keep a job grant (sealed by crypto; redeemable only by ingest and its worker)
instead of a job token in plaintext.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Stored tokens were usable by anyone reading this table: they are dropped, not kept.
    op.execute("UPDATE documents SET job_token = NULL")
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("job_token", new_column_name="job_grant")


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.alter_column("job_grant", new_column_name="job_token")
