"""The warehouse schema (PRODUCT.md §5) as SQLAlchemy Core metadata.

This is the model the Alembic migrations must match (`test_migrations.py` compares them); the live database
is only ever created and changed by the migrations, never by `create_all`.
"""

from __future__ import annotations

import sqlalchemy as sa

#: Constraint names are fixed so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: Alembic's bookkeeping table; not `alembic_version`, so the warehouse can share a database with other
#: Alembic-managed schemas (Dagster's own PostgreSQL storage uses `alembic_version`).
VERSION_TABLE = "sis_warehouse_alembic_version"

SUBSCRIBER_STATUSES = ("active", "deprovisioned", "deleted")
SYNC_STATUSES = ("applied", "preview", "unchanged", "ignored", "blocked", "failed")

# 64-bit ids on PostgreSQL; SQLite only aliases the rowid (and so autoincrements) for INTEGER.
_BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

subscribers = sa.Table(
    "subscribers",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    # The normalised identity: lower-cased email, or the stored (prefixed) user_login / user_id.
    sa.Column("subscriber_key", sa.Text(), primary_key=True),
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
    # The user's communities as `group\x1fcommunity` sorted and joined by `\x1e` ("" for none), kept with
    # every membership write so a sync compares one string per user instead of reading the memberships.
    sa.Column("communities_signature", sa.Text(), nullable=True),
    sa.CheckConstraint(f"status IN {SUBSCRIBER_STATUSES!r}", name="status"),
    # SQLite: the primary key is the table's b-tree, so a client's rows are read in one range scan and an
    # upsert maintains one b-tree instead of a rowid table plus an index.
    sqlite_with_rowid=False,
)

subscriber_communities = sa.Table(
    "subscriber_communities",
    metadata,
    sa.Column("client_id", sa.String(64), primary_key=True),
    sa.Column("subscriber_key", sa.Text(), primary_key=True),
    sa.Column("community_group", sa.Text(), primary_key=True),
    sa.Column("community", sa.Text(), primary_key=True),
    sqlite_with_rowid=False,
)

sis_sync_log = sa.Table(
    "sis_sync_log",
    metadata,
    sa.Column("sync_id", _BigId, primary_key=True, autoincrement=True),
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
    sa.CheckConstraint(f"status IN {SYNC_STATUSES!r}", name="status"),
    sa.Index(None, "client_id", "sync_id"),
)

sis_rejected_rows = sa.Table(
    "sis_rejected_rows",
    metadata,
    sa.Column("rejected_id", _BigId, primary_key=True, autoincrement=True),
    sa.Column("sync_id", sa.BigInteger(), nullable=False),
    sa.Column("client_id", sa.String(64), nullable=False),
    sa.Column("line_number", sa.Integer(), nullable=False),
    sa.Column("column_name", sa.Text(), nullable=True),
    sa.Column("reason_code", sa.String(64), nullable=False),
    sa.Column("message", sa.Text(), nullable=True),
    sa.Index(None, "sync_id"),
    sa.Index(None, "client_id", "sync_id"),
)
