"""A test harness for the Dagster layer: a registry, real S3 (moto's server), a warehouse and an instance."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from dagster import DagsterInstance, Definitions

from sis_pipeline.location import JOB_NAME, build_definitions
from sis_pipeline.registry import load_registry
from sis_pipeline.resources import (
    ArchiveResource,
    EventQueueResource,
    RegistryResource,
    SisS3Resource,
    WarehouseResource,
)

HEADER = ["first_name", "last_name", "email", "user_type"]


def roster_csv(
    count: int, *, start: int = 0, domain: str = "school.example.edu", extra_rows: str = ""
) -> bytes:
    """`count` valid students numbered from `start`, plus raw `extra_rows` text appended as is."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    for n in range(start, start + count):
        writer.writerow([f"First{n}", f"Last{n}", f"student{n}@{domain}", "Student"])
    return (buffer.getvalue() + extra_rows).encode("utf-8")


def client_entry(client_id: str, bucket: str, **overrides: Any) -> dict[str, Any]:
    entry = {"name": f"School {client_id}", "bucket": bucket, "auto_sync_enabled": True}
    entry.update(overrides)
    return entry


@dataclass
class Harness:
    tmp: Path
    endpoint: str
    s3: Any
    clients: dict[str, dict[str, Any]] = field(default_factory=dict)
    queue_url: str = ""
    warehouse_url: str = ""
    _defs: Definitions | None = None

    @property
    def registry_path(self) -> Path:
        return self.tmp / "clients.yaml"

    def add_client(self, client_id: str, *, create_bucket: bool = True, versioned: bool = True, **overrides):
        bucket = overrides.pop(
            "bucket", f"sis-{client_id.lower()}-{self.tmp.name[-8:].lower()}".replace("_", "-")
        )
        self.clients[client_id] = client_entry(client_id, bucket, **overrides)
        if create_bucket:
            self.s3.create_bucket(Bucket=bucket)
            if versioned:
                self.s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        self._defs = None
        self.registry_path.write_text(yaml.safe_dump({"clients": self.clients}), encoding="utf-8")
        return bucket

    def bucket(self, client_id: str) -> str:
        return self.clients[client_id]["bucket"]

    def upload(self, client_id: str, data: bytes) -> dict:
        key = self.clients[client_id].get("key", "student_feed.csv")
        return self.s3.put_object(Bucket=self.bucket(client_id), Key=key, Body=data)

    def resources(self) -> dict[str, Any]:
        return {
            "s3": SisS3Resource(endpoint_url=self.endpoint, region_name="us-east-1"),
            "registry": RegistryResource(path=str(self.registry_path)),
            "warehouse": WarehouseResource(url=self.warehouse_url or f"sqlite:///{self.tmp / 'wh.sqlite'}"),
            "archive": ArchiveResource(uri=str(self.tmp / "archive")),
            "events": EventQueueResource(queue_url=self.queue_url, endpoint_url=self.endpoint),
        }

    @property
    def defs(self) -> Definitions:
        if self._defs is None:
            self._defs = build_definitions(load_registry(self.registry_path), self.resources())
        return self._defs

    def warehouse(self):
        return self.resources()["warehouse"].get()

    def run(self, instance: DagsterInstance, client_id: str, selection=None, **config: Any):
        """Execute the import for one client as a Dagster run on `instance`."""
        job = self.defs.resolve_job_def(JOB_NAME)
        if selection is not None:
            job = job.get_subset(asset_selection=set(selection))
        return job.execute_in_process(
            instance=instance,
            partition_key=client_id,
            run_config={"ops": {"sis_import": {"config": config}}} if config else None,
            raise_on_error=False,
        )

    def log(self, client_id: str):
        return self.warehouse().sync_log(client_id, limit=50)


def run_backfill(
    harness: Harness, instance: DagsterInstance, partitions: list[str], timeout: float = 240
) -> list[str]:
    """A real partition backfill: Dagster's CLI queues one run per client, Dagster's daemon runs them."""
    import os
    import subprocess
    import sys
    import time

    from dagster import DagsterRunStatus, RunsFilter

    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "DAGSTER_HOME": instance.root_directory,
        "SIS_CLIENTS_FILE": str(harness.registry_path),
        "SIS_WAREHOUSE_URL": harness.resources()["warehouse"].url,
        "SIS_ARCHIVE_URI": str(harness.tmp / "archive"),
        "SIS_S3_ENDPOINT_URL": harness.endpoint,
    }
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [
            str(bin_dir / "dagster"),
            "job",
            "backfill",
            "-w",
            str(root / "workspace.yaml"),
            "-j",
            JOB_NAME,
            "--partitions",
            ",".join(partitions),
            "--noprompt",
        ],
        env=env,
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    daemon = subprocess.Popen(
        [str(bin_dir / "dagster-daemon"), "run", "-w", str(root / "workspace.yaml")],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        finished = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}
        while time.monotonic() < deadline:
            runs = instance.get_runs(RunsFilter(job_name=JOB_NAME))
            if len(runs) >= len(partitions) and all(r.status in finished for r in runs):
                return [r.run_id for r in runs]
            time.sleep(0.5)
        raise TimeoutError(f"backfill runs did not finish: {[(r.run_id, r.status) for r in runs]}")
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)


def sensor_tick(harness: Harness, instance: DagsterInstance, cursor: str | None = None):
    """One evaluation of `sis_upload_sensor` with the harness's resources: (run requests, new cursor)."""
    from dagster import build_sensor_context

    sensor = harness.defs.resolve_sensor_def("sis_upload_sensor")
    context = build_sensor_context(
        instance=instance, cursor=cursor, resources=harness.resources(), definitions=harness.defs
    )
    result = sensor(context)
    return result.run_requests or [], result.cursor
