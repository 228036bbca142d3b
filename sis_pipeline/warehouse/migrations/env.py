"""Alembic environment for the warehouse.

`sis_pipeline.warehouse.migrate.upgrade` hands over a connection that is already inside a locked transaction
(`config.attributes["connection"]`); the plain `alembic -c sis_pipeline/warehouse/alembic.ini ...` command
line connects to `SIS_WAREHOUSE_URL` (or the default SQLite file) itself.
"""

from __future__ import annotations

from alembic import context

from sis_pipeline.warehouse.engine import create_warehouse_engine, sqlalchemy_url
from sis_pipeline.warehouse.tables import VERSION_TABLE, metadata

config = context.config


def _configure(**kwargs) -> None:
    context.configure(
        target_metadata=metadata,
        version_table=VERSION_TABLE,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=True,
        **kwargs,
    )


def run_migrations_offline() -> None:
    _configure(url=sqlalchemy_url(config.get_main_option("sqlalchemy.url") or None), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_warehouse_engine(config.get_main_option("sqlalchemy.url") or None)
    try:
        with engine.connect() as connection:
            _configure(connection=connection)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
