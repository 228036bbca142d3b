"""Many schools at once: `--clients` clients of `--rows-per-client` users, each in its own bucket.

- `weekly_1000_clients`: `sis_weekly_schedule` evaluated at Saturday 23:00 America/New_York (the default
  weekly time of every client); its run requests are executed as Dagster runs by worker processes (the
  runner `sis-pipeline sync --workers N` uses). Per-run overhead dominates at 1,000 rows, so each worker
  process executes many runs in turn (imports, clients and connections paid once). On `sqlite` the
  warehouse and the Dagster instance are the one-machine defaults (SQLite files); on `postgresql` both are
  in PostgreSQL, as in the production instance of deploy/ (the instance in a scratch database).
- `sensor_poll_1000`: one tick of `sis_upload_sensor` in polling mode over every client's bucket, all of
  them with a new upload, so the tick requests one run per client.
- `sensor_sqs_1000`: one tick of `sis_upload_sensor` in event mode, with one S3 `ObjectCreated`
  notification per client waiting on an SQS queue (`SIS_EVENTS_QUEUE_URL`), and the hourly reconciling poll
  not due, so the tick handles the events alone.

Both sensor cases time one tick as the daemon and code server evaluate it: the Dagster instance is open and
the process has its boto3 clients from the previous tick (`before_run`, outside the clock).
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.cases import BenchContext, CaseUnavailable, require_postgres
from benchmarks.cases.pipeline import (
    bucket_for,
    check_pipeline,
    cli,
    create_postgres_schema,
    drop_postgres_schema,
    enter_environment,
    upload_many,
)
from benchmarks.generate import iter_file_chunks

SENSOR_NAME = "sis_upload_sensor"


def _client_ids(ctx: BenchContext) -> list[str]:
    return [f"c{i:04d}" for i in range(ctx.clients)]


def check_available(ctx: BenchContext) -> None:
    check_pipeline()


def _sqs_env_name() -> str:
    from sis_pipeline import settings

    name = getattr(settings, "EVENTS_QUEUE_ENV", None)
    if not name:
        raise CaseUnavailable("needs sis_pipeline.settings.EVENTS_QUEUE_ENV (the event-mode queue setting)")
    return name


def _instance_database(ctx: BenchContext) -> str:
    return f"sis_bench_dagster_{ctx.schema}"


def _postgres_instance(ctx: BenchContext) -> None:
    """A scratch database for Dagster's runs, event logs and schedule state, and the dagster.yaml using it
    (the `storage:` block of deploy/dagster.yaml, with the addresses written in)."""
    from urllib.parse import urlsplit

    import psycopg

    url = require_postgres(ctx)
    name = _instance_database(ctx)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(url)
    settings = {
        "scheme": "postgresql+psycopg2",
        "hostname": parts.hostname or "127.0.0.1",
        "port": parts.port or 5432,
        "db_name": name,
        "username": parts.username or "postgres",
        "password": parts.password or "",
    }
    lines = ["telemetry:", "  enabled: false", "storage:", "  postgres:", "    postgres_db:"]
    lines += [f"      {key}: {json.dumps(value)}" for key, value in settings.items()]
    Path(ctx.work_dir, "dagster_home", "dagster.yaml").write_text("\n".join(lines) + "\n")


def prepare(ctx: BenchContext) -> None:
    check_pipeline()
    clients = _client_ids(ctx)
    enter_environment(ctx, clients)
    if ctx.case == "weekly_1000_clients" and ctx.database == "postgresql":
        create_postgres_schema(ctx)
        _postgres_instance(ctx)
    if ctx.case == "sensor_sqs_1000":
        _sqs_env_name()
    files = {
        cid: b"".join(bytes(chunk) for chunk in iter_file_chunks(ctx.rows_per_client, 1, ctx.seed + i))
        for i, cid in enumerate(clients)
    }
    uploads = upload_many(ctx, files)
    if ctx.case == "weekly_1000_clients":
        if cli("migrate") != 0:
            raise RuntimeError("sis-pipeline migrate failed")
    elif ctx.case == "sensor_sqs_1000":
        import boto3

        sqs = boto3.client("sqs", endpoint_url=ctx.s3_endpoint, region_name="us-east-1")
        queue_url = sqs.create_queue(QueueName="sis-bench-uploads")["QueueUrl"]
        for start in range(0, len(clients), 10):
            entries = [
                {"Id": str(n), "MessageBody": json.dumps(_s3_event(bucket_for(cid), uploads[cid]))}
                for n, cid in enumerate(clients[start : start + 10])
            ]
            sqs.send_message_batch(QueueUrl=queue_url, Entries=entries)
        Path(ctx.work_dir, "queue_url").write_text(queue_url)


def _s3_event(bucket: str, upload: dict) -> dict:
    """The body S3 sends to SQS for an upload."""
    return {
        "Records": [
            {
                "eventVersion": "2.1",
                "eventSource": "aws:s3",
                "awsRegion": "us-east-1",
                "eventName": "ObjectCreated:Put",
                "eventTime": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "s3": {
                    "bucket": {"name": bucket},
                    "object": {
                        "key": "student_feed.csv",
                        "eTag": upload["etag"],
                        "versionId": upload["version_id"],
                        "size": upload["size"],
                    },
                },
            }
        ]
    }


#: Worker processes of the weekly case: one per core; SIS_BENCH_WORKERS=1 runs every client in the measured
#: process, which is what `--profile` can see.
WORKERS = int(os.environ.get("SIS_BENCH_WORKERS") or os.cpu_count() or 2)


def _weekly_through_the_schedule(ctx: BenchContext) -> dict:
    import io
    from zoneinfo import ZoneInfo

    from dagster import DagsterInstance, build_schedule_context

    from sis_pipeline.definitions import defs
    from sis_pipeline.resources import default_resources
    from sis_pipeline.runner import run_clients

    saturday_23 = datetime(2026, 11, 28, 23, 0, tzinfo=ZoneInfo("America/New_York"))
    schedule = defs.resolve_schedule_def("sis_weekly_schedule")
    with DagsterInstance.get() as instance:
        context = build_schedule_context(
            instance=instance,
            scheduled_execution_time=saturday_23.astimezone(UTC),
            resources=default_resources(),
            repository_def=defs.get_repository_def(),
        )
        requests = schedule.evaluate_tick(context).run_requests or []
    if len(requests) != ctx.clients:
        raise RuntimeError(f"the schedule requested {len(requests)} runs for {ctx.clients} weekly clients")
    results = run_clients([r.partition_key for r in requests], workers=WORKERS, out=io.StringIO())
    statuses = {r.status for r in results}
    if statuses != {"applied"}:
        raise RuntimeError(f"weekly sync ended {statuses}")
    return {
        "rows": ctx.clients * ctx.rows_per_client,
        "note": f"{len(requests)} run requests from sis_weekly_schedule, executed by {WORKERS} worker processes",
    }


def cleanup(ctx: BenchContext) -> None:
    if ctx.case == "weekly_1000_clients" and ctx.database == "postgresql" and ctx.postgres_url:
        import psycopg

        drop_postgres_schema(ctx)
        with psycopg.connect(ctx.postgres_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_instance_database(ctx)}" WITH (FORCE)')


def before_run(ctx: BenchContext) -> None:
    enter_environment(ctx, _client_ids(ctx))
    if ctx.case == "sensor_sqs_1000":
        os.environ[_sqs_env_name()] = Path(ctx.work_dir, "queue_url").read_text()
    import sis_pipeline.definitions  # noqa: F401  (loaded before the clock starts, as in a daemon)

    if ctx.case != "weekly_1000_clients":
        from dagster import DagsterInstance

        from sis_pipeline.resources import default_resources

        global _daemon_instance  # the daemon opens its instance once and evaluates every tick with it
        _daemon_instance = DagsterInstance.get()
        # and the code server that evaluates the ticks keeps its boto3 clients from the previous one
        resources = default_resources()
        resources["s3"].get_client()
        resources["events"].client()


_daemon_instance = None


def run(ctx: BenchContext) -> dict:
    if ctx.case == "weekly_1000_clients":
        return _weekly_through_the_schedule(ctx)
    from dagster import build_sensor_context

    from sis_pipeline.definitions import defs
    from sis_pipeline.resources import default_resources

    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    # event mode: the hourly reconciling poll is not due, so the tick reads the queue alone
    cursor = (
        json.dumps({"v": 1, "seen": {}, "last_full_poll": time.time()})
        if ctx.case == "sensor_sqs_1000"
        else None
    )
    context = build_sensor_context(
        instance=_daemon_instance, cursor=cursor, resources=default_resources(), definitions=defs
    )
    tick = sensor(context)
    requested = len(tick.run_requests or [])
    if requested < ctx.clients:
        raise RuntimeError(f"one tick requested {requested} runs for {ctx.clients} uploads")
    return {
        "rows": ctx.clients,
        "note": f"{requested} run requests in one tick",
        "detail": {"runs": requested},
    }
