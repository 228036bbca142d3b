"""One client, the 1M-row files, through the Dagster graph (`sis-pipeline sync`, S3 on loopback).

- `dagster_full_run`: last week's file applied in `prepare`; next week's file uploaded; the measured run
  syncs it (all five assets; the warehouse apply on top of last week's rows).
- `unchanged_rerun`: next week's file already applied in `prepare`; the measured run syncs it again.
- `forced_reapply`: as `unchanged_rerun`, with `--force`.

The sync runs in the measured process after `sis_pipeline.definitions` is imported, as in a long-lived
Dagster worker; interpreter start-up and imports are not counted.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.cases import BenchContext
from benchmarks.cases.pipeline import (
    BENCH_CLIENT,
    check_pipeline,
    cli,
    create_postgres_schema,
    drop_postgres_schema,
    enter_environment,
    migrate_and_sync,
    upload,
)


def check_available(ctx: BenchContext) -> None:
    check_pipeline()


def prepare(ctx: BenchContext) -> None:
    check_pipeline()
    week1, week2 = ctx.files()
    create_postgres_schema(ctx)
    enter_environment(ctx, [BENCH_CLIENT])
    upload(ctx, BENCH_CLIENT, Path(week1.path))
    migrate_and_sync("--client", BENCH_CLIENT)
    upload(ctx, BENCH_CLIENT, Path(week2.path))
    if ctx.case != "dagster_full_run":
        migrate_and_sync("--client", BENCH_CLIENT)


def before_run(ctx: BenchContext) -> None:
    enter_environment(ctx, [BENCH_CLIENT])
    import sis_pipeline.definitions  # noqa: F401  (loaded before the clock starts, as in a worker)


def run(ctx: BenchContext) -> dict:
    args = ["sync", "--client", BENCH_CLIENT] + (["--force"] if ctx.case == "forced_reapply" else [])
    code = cli(*args)
    if code != 0:
        raise RuntimeError(f"sis-pipeline {' '.join(args)} exited {code}")
    return {"rows": ctx.files()[1].rows}


def cleanup(ctx: BenchContext) -> None:
    drop_postgres_schema(ctx)
