"""The Alembic migrations build exactly the schema in `warehouse/tables.py`, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sis_pipeline import cli
from sis_pipeline.warehouse import Warehouse, migrate
from sis_pipeline.warehouse.tables import VERSION_TABLE, metadata

WAREHOUSE_TABLES = {"subscribers", "subscriber_communities", "sis_sync_log", "sis_rejected_rows"}


@pytest.fixture
def warehouse(warehouse_url):
    wh = Warehouse(warehouse_url)
    yield wh
    wh.dispose()


def _schema_diff(engine: sa.Engine, target: sa.MetaData) -> list:
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"version_table": VERSION_TABLE, "compare_type": True, "compare_server_default": False}
        )
        return compare_metadata(context, target)


def _head() -> str:
    return ScriptDirectory.from_config(migrate.alembic_config()).get_current_head()


def test_upgrade_from_empty_creates_every_table_at_head(warehouse):
    assert migrate.current_revision(warehouse.engine) is None
    warehouse.upgrade()
    tables = set(sa.inspect(warehouse.engine).get_table_names())
    assert tables >= WAREHOUSE_TABLES | {VERSION_TABLE}
    assert migrate.current_revision(warehouse.engine) == _head()


def test_upgrade_is_idempotent(warehouse):
    warehouse.upgrade()
    warehouse.upgrade()
    assert migrate.current_revision(warehouse.engine) == _head()


def test_upgrade_at_head_does_not_wait_for_a_writer(warehouse):
    """A sync opening the warehouse while another client's sync holds the write lock (SQLite's only writer;
    PostgreSQL's schema lock) goes on: the schema is already current, so there is nothing to lock for."""
    import threading

    from sis_pipeline.warehouse.engine import write_transaction

    warehouse.upgrade()
    holder = "__schema_migration__" if warehouse.engine.dialect.name == "postgresql" else "22"
    done = threading.Event()
    with write_transaction(warehouse.engine, holder):
        worker = threading.Thread(target=lambda: (warehouse.upgrade(), done.set()), daemon=True)
        worker.start()
        worker.join(timeout=30)  # far below the 300 s a locked upgrade would wait
        assert done.is_set()
    assert migrate.current_revision(warehouse.engine) == _head()


def test_migrated_database_matches_the_table_model(warehouse):
    warehouse.upgrade()
    assert _schema_diff(warehouse.engine, metadata) == []


def test_schema_comparison_notices_a_model_change(warehouse):
    # Guards the test above: the comparison must see a column the migrations do not create.
    warehouse.upgrade()
    changed = sa.MetaData()
    for table in metadata.tables.values():
        table.to_metadata(changed)
    changed.tables["subscribers"].append_column(sa.Column("nickname", sa.Text()))
    diff = _schema_diff(warehouse.engine, changed)
    assert [entry[0] for entry in diff] == ["add_column"]


def test_migrate_command_upgrades_the_configured_warehouse(warehouse_url, monkeypatch, capsys):
    monkeypatch.setenv("SIS_WAREHOUSE_URL", warehouse_url)
    assert cli.main(["migrate"]) == 0
    assert "upgraded from empty" in capsys.readouterr().out
    assert cli.main(["migrate"]) == 0
    assert "up to date" in capsys.readouterr().out


def test_default_warehouse_is_a_sqlite_file_in_the_data_folder(tmp_path):
    wh = Warehouse()
    try:
        wh.upgrade()
        assert wh.engine.dialect.name == "sqlite"
        assert (tmp_path / "data" / "warehouse.sqlite").exists()
    finally:
        wh.dispose()


def test_sqlite_connections_use_wal_and_normal_sync(tmp_path):
    wh = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    try:
        with wh.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
            assert conn.exec_driver_sql("PRAGMA journal_size_limit").scalar() == 64 << 20
    finally:
        wh.dispose()
