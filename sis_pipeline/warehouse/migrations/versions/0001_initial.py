"""The warehouse's first schema: subscribers, their communities, the sync log and rejected rows.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "subscribers",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("subscriber_key", sa.Text(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("first_name", sa.Text(), nullable=True),
        sa.Column("last_name", sa.Text(), nullable=True),
        sa.Column("user_login", sa.Text(), nullable=True),
        sa.Column("graduation_year", sa.Integer(), nullable=True),
        sa.Column("user_type", sa.Text(), nullable=True),
        sa.Column("email_opt_out", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("status", sa.String(16), nullable=False, server_default="active"),
        sa.Column("missing_count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("status_changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_sync_id", sa.BigInteger(), nullable=True),
        sa.Column("communities_signature", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'deprovisioned', 'deleted')", name=op.f("ck_subscribers_status")
        ),
        sa.PrimaryKeyConstraint("client_id", "subscriber_key", name=op.f("pk_subscribers")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "subscriber_communities",
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("subscriber_key", sa.Text(), nullable=False),
        sa.Column("community_group", sa.Text(), nullable=False),
        sa.Column("community", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint(
            "client_id", "subscriber_key", "community_group", "community", name=op.f("pk_subscriber_communities")
        ),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "sis_sync_log",
        sa.Column("sync_id", _BigId, nullable=False, autoincrement=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("bucket", sa.Text(), nullable=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("etag", sa.Text(), nullable=True),
        sa.Column("version_id", sa.Text(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("guard_overridden", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("rows_total", sa.Integer(), nullable=True),
        sa.Column("rows_valid", sa.Integer(), nullable=True),
        sa.Column("rows_rejected", sa.Integer(), nullable=True),
        sa.Column("rows_warned", sa.Integer(), nullable=True),
        sa.Column("active_before", sa.Integer(), nullable=True),
        sa.Column("inserted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("updated", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("unchanged_rows", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("reactivated", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("deprovisioned", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("deleted", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("missing", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("communities_added", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("communities_removed", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("message", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('applied', 'preview', 'unchanged', 'ignored', 'blocked', 'failed')",
            name=op.f("ck_sis_sync_log_status"),
        ),
        sa.PrimaryKeyConstraint("sync_id", name=op.f("pk_sis_sync_log")),
    )
    op.create_index(op.f("ix_sis_sync_log_client_id_sync_id"), "sis_sync_log", ["client_id", "sync_id"])
    op.create_table(
        "sis_rejected_rows",
        sa.Column("rejected_id", _BigId, nullable=False, autoincrement=True),
        sa.Column("sync_id", sa.BigInteger(), nullable=False),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("line_number", sa.Integer(), nullable=False),
        sa.Column("column_name", sa.Text(), nullable=True),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("rejected_id", name=op.f("pk_sis_rejected_rows")),
    )
    op.create_index(op.f("ix_sis_rejected_rows_sync_id"), "sis_rejected_rows", ["sync_id"])
    op.create_index(
        op.f("ix_sis_rejected_rows_client_id_sync_id"), "sis_rejected_rows", ["client_id", "sync_id"]
    )


def downgrade() -> None:
    op.drop_table("sis_rejected_rows")
    op.drop_table("sis_sync_log")
    op.drop_table("subscriber_communities")
    op.drop_table("subscribers")
