"""Create or upgrade the warehouse schema with the Alembic migrations shipped in the package."""

from __future__ import annotations

import argparse
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config

from sis_pipeline.warehouse.engine import create_warehouse_engine, sqlalchemy_url, write_transaction
from sis_pipeline.warehouse.tables import VERSION_TABLE

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Lock name for schema changes, so two processes starting at once do not both create the tables.
_MIGRATION_LOCK = "__schema_migration__"


def alembic_config(url: str | None = None) -> Config:
    """An Alembic config pointing at the packaged migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    return config


def upgrade(engine: sa.Engine, revision: str = "head") -> None:
    """Bring the warehouse to `revision` inside one locked transaction (idempotent).

    A warehouse already at the latest revision is left alone after one read of its version table: no lock
    is taken, so a sync starting while another client's sync writes (SQLite has one writer) does not wait
    for it, and every sync command is spared Alembic's full upgrade walk (~0.3 s on PostgreSQL)."""
    config = alembic_config(engine.url.render_as_string(hide_password=False))
    if revision == "head" and _at_head(engine, config):
        return
    with write_transaction(engine, _MIGRATION_LOCK) as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, revision)


def _at_head(engine: sa.Engine, config: Config) -> bool:
    """Whether the warehouse's version table names exactly the packaged migrations' head(s)."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    heads = set(ScriptDirectory.from_config(config).get_heads())
    with engine.connect() as conn:
        current = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_heads()
    return set(current) == heads


def current_revision(engine: sa.Engine) -> str | None:
    """The revision the warehouse is at, or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE}).get_current_revision()


def run_migrate_command(args: argparse.Namespace) -> int:
    """`sis-pipeline migrate`: upgrade the warehouse at SIS_WAREHOUSE_URL to the latest schema."""
    engine = create_warehouse_engine()
    try:
        before = current_revision(engine)
        upgrade(engine)
        after = current_revision(engine)
    finally:
        engine.dispose()
    where = sa.make_url(sqlalchemy_url()).render_as_string(hide_password=True)
    if before == after:
        print(f"warehouse {where} is up to date (revision {after})")
    else:
        print(f"warehouse {where} upgraded from {before or 'empty'} to {after}")
    return 0
