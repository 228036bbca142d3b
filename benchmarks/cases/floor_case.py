"""The floor on SQLite (`floor_sqlite`) and PostgreSQL (`floor_postgres`): next week's file applied on top of
this week's, with the hand-written path of `benchmarks.floor`."""

from __future__ import annotations

from pathlib import Path

from benchmarks import floor
from benchmarks.cases import BenchContext, require_postgres


def _sqlite_path(ctx: BenchContext) -> Path:
    return Path(ctx.work_dir) / "floor.sqlite"


def prepare(ctx: BenchContext) -> None:
    """Load this week's file, so the measured apply starts from a table holding last week's rows."""
    week1, _ = ctx.files()
    if ctx.database == "sqlite":
        path = _sqlite_path(ctx)
        path.unlink(missing_ok=True)
        floor.create_sqlite_table(path)
        floor.apply_sqlite(path, week1.path, sync_id=1)
    else:
        url = require_postgres(ctx)
        floor.drop_postgres_schema(url, ctx.schema)
        floor.create_postgres_table(url, ctx.schema)
        floor.apply_postgres(url, ctx.schema, week1.path, sync_id=1)


def run(ctx: BenchContext) -> dict:
    """Apply next week's file."""
    _, week2 = ctx.files()
    if ctx.database == "sqlite":
        result = floor.apply_sqlite(_sqlite_path(ctx), week2.path, sync_id=2)
    else:
        result = floor.apply_postgres(require_postgres(ctx), ctx.schema, week2.path, sync_id=2)
    return {"rows": week2.rows, "detail": result.as_dict()}


def cleanup(ctx: BenchContext) -> None:
    if ctx.database == "sqlite":
        _sqlite_path(ctx).unlink(missing_ok=True)
    elif ctx.postgres_url:
        floor.drop_postgres_schema(ctx.postgres_url, ctx.schema)
