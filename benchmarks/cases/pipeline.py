"""What the pipeline cases share: the environment a real deployment would have, on loopback.

The pipeline is driven only through its public interface (PRODUCT.md §7-8): the `sis-pipeline` command
line, the `sis_pipeline.definitions:defs` code location, `clients.yaml`, and the `SIS_*` variables; files
are uploaded to moto's S3 server on loopback, which the runner starts for each case.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.cases import BenchContext, CaseUnavailable, require_postgres
from benchmarks.generate import clients_yaml

BENCH_CLIENT = "bench"


def check_pipeline(*modules: str) -> None:
    """CaseUnavailable unless the code location (and any named module) exists in this checkout."""
    for module in ("sis_pipeline.definitions", "sis_pipeline.runner", *modules):
        if importlib.util.find_spec(module) is None:
            raise CaseUnavailable(f"needs {module}")


def bucket_for(client_id: str) -> str:
    return f"sis-bench-{client_id}".lower()


def warehouse_url(ctx: BenchContext) -> str:
    """A fresh warehouse per case: a SQLite file in the work dir, or a scratch PostgreSQL schema."""
    if ctx.database == "postgresql":
        url = require_postgres(ctx).replace("postgresql://", "postgresql+psycopg://", 1)
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}options=-csearch_path%3D{ctx.schema}"
    return f"sqlite:///{Path(ctx.work_dir) / 'warehouse.sqlite'}"


def enter_environment(ctx: BenchContext, client_ids: Iterable[str]) -> None:
    """Point this process at the case's S3 endpoint, registry, warehouse and Dagster instance."""
    work = Path(ctx.work_dir)
    (work / "dagster_home").mkdir(parents=True, exist_ok=True)
    registry = work / "clients.yaml"
    registry.write_text(clients_yaml(list(client_ids)))
    os.environ.update(
        {
            "SIS_S3_ENDPOINT_URL": ctx.s3_endpoint or "",
            "SIS_CLIENTS_FILE": str(registry),
            "SIS_DATA_DIR": str(work / "data"),
            "SIS_WAREHOUSE_URL": warehouse_url(ctx),
            "DAGSTER_HOME": str(work / "dagster_home"),
            "AWS_ACCESS_KEY_ID": "benchmark",
            "AWS_SECRET_ACCESS_KEY": "benchmark",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    )


def create_postgres_schema(ctx: BenchContext) -> None:
    if ctx.database == "postgresql":
        from benchmarks import floor

        floor.drop_postgres_schema(require_postgres(ctx), ctx.schema)
        floor.create_postgres_table(require_postgres(ctx), ctx.schema)  # creates the schema
        with floor._pg_connect(require_postgres(ctx), ctx.schema) as conn:
            conn.execute("DROP TABLE subscribers")  # the warehouse's migrations create their own


def drop_postgres_schema(ctx: BenchContext) -> None:
    if ctx.database == "postgresql" and ctx.postgres_url:
        from benchmarks import floor

        floor.drop_postgres_schema(ctx.postgres_url, ctx.schema)


def s3_client(ctx: BenchContext):
    import boto3

    return boto3.client("s3", endpoint_url=ctx.s3_endpoint, region_name="us-east-1")


def upload(ctx: BenchContext, client_id: str, body: bytes | str | Path) -> None:
    """Put a roster file where the client uploads it (creating the bucket, versioned, the first time)."""
    s3 = s3_client(ctx)
    bucket = bucket_for(client_id)
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    if isinstance(body, Path):
        s3.upload_file(str(body), bucket, "student_feed.csv")
    else:
        s3.put_object(Bucket=bucket, Key="student_feed.csv", Body=body)


def upload_many(ctx: BenchContext, files: dict[str, bytes]) -> dict[str, dict]:
    """Create one versioned bucket per client and upload its file, eight at a time; the PutObject answers."""
    s3 = s3_client(ctx)

    def one(item: tuple[str, bytes]) -> tuple[str, dict]:
        client_id, body = item
        bucket = bucket_for(client_id)
        s3.create_bucket(Bucket=bucket)
        s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        answer = s3.put_object(Bucket=bucket, Key="student_feed.csv", Body=body)
        return client_id, {
            "etag": answer["ETag"].strip('"'),
            "version_id": answer.get("VersionId"),
            "size": len(body),
        }

    with ThreadPoolExecutor(8) as pool:
        return dict(pool.map(one, files.items()))


def cli(*args: str) -> int:
    """`sis-pipeline ARGS` in this process (imports already paid, as in a long-lived worker)."""
    from sis_pipeline.cli import main

    return main(list(args))


def migrate_and_sync(*args: str) -> None:
    """Create the warehouse tables and run a sync; any exit but 0 is a failure of the case."""
    for command in (("migrate",), ("sync", *args)):
        code = cli(*command)
        if code != 0:
            raise RuntimeError(f"sis-pipeline {' '.join(command)} exited {code}")
