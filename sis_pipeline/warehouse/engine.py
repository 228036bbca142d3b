"""One place that opens the warehouse: URL normalisation, SQLite connection settings, transactions, locks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event

from sis_pipeline import settings

#: How long a SQLite writer waits for another writer's transaction (a 1M-row sync takes seconds).
SQLITE_BUSY_TIMEOUT_S = 300
#: Size the write-ahead log is truncated to after a checkpoint.
WAL_SIZE_LIMIT_BYTES = 64 << 20
#: Option on an engine/connection: its transactions take the write lock as they begin.
_WRITE_OPTION = "sis_write_lock"


def sqlalchemy_url(url: str | None = None) -> str:
    """The SQLAlchemy URL for `url` (None: `settings.warehouse_url()`); plain postgresql:// uses psycopg 3."""
    url = url or settings.warehouse_url()
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


def _install_sqlite_behaviour(engine: sa.Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:
        # Let SQLAlchemy's "begin" event, not the sqlite3 module, decide how a transaction starts.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers (the UI, `sis-pipeline log`) never block a sync's writer nor wait for it.
        # synchronous=NORMAL: in WAL mode a commit survives an application crash; one fsync per checkpoint
        # instead of per commit. A power cut may lose the last commits, never corrupt the file.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # After a checkpoint, cut the write-ahead log back to 64 MiB instead of keeping it at its largest
        # (a 1M-row sync grows it to ~0.5 GB) for as long as a connection stays open.
        cursor.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
        # The bulk paths sort and index large batches; keep their temporary b-trees in memory.
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.execute("PRAGMA cache_size=-65536")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # BEGIN IMMEDIATE takes SQLite's single write lock up front: two syncs serialise instead of both
        # reading and then failing to upgrade their locks.
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def create_warehouse_engine(url: str | None = None) -> sa.Engine:
    """An engine on the warehouse at `url` (None: `SIS_WAREHOUSE_URL` or the default SQLite file)."""
    full_url = sa.make_url(sqlalchemy_url(url))
    if full_url.get_backend_name() == "sqlite":
        if full_url.database and full_url.database != ":memory:":
            Path(full_url.database).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(full_url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_S})
        _install_sqlite_behaviour(engine)
        return engine
    return sa.create_engine(full_url, pool_pre_ping=True)


def lock_key(name: str) -> int:
    """A stable signed 64-bit key for `pg_advisory_xact_lock` (Python's hash() changes per process)."""
    return int.from_bytes(hashlib.sha256(f"sis_pipeline:{name}".encode()).digest()[:8], "big", signed=True)


@contextmanager
def write_transaction(engine: sa.Engine, lock_name: str) -> Iterator[sa.Connection]:
    """A transaction holding the write lock for `lock_name` (a client id) until it commits or rolls back.

    PostgreSQL: a transaction-scoped advisory lock, so syncs of different clients run in parallel.
    SQLite: BEGIN IMMEDIATE (SQLite has one writer per database anyway).
    """
    with engine.connect() as conn:
        conn.execution_options(**{_WRITE_OPTION: True})
        with conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": lock_key(lock_name)})
            yield conn


@contextmanager
def read_transaction(engine: sa.Engine) -> Iterator[sa.Connection]:
    """A read-only transaction that sees one consistent snapshot across its statements."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        with conn.begin():
            yield conn
