"""Dagster resources: the registry, the warehouse, the upload archive and the event queue.

S3 itself is dagster-aws' `S3Resource`, as `SisS3Resource` with the retry policy of `aws_clients`. Defaults
are read from the environment when the code location loads (see `sis_pipeline.settings`), so an unset
variable means "the embedded default", never a load error.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field

from sis_pipeline import aws_clients, settings
from sis_pipeline.registry import Registry, load_registry
from sis_pipeline.s3 import Archive

# Per-process caches. Dagster builds resources afresh for every run; a worker process that executes many
# runs (the code server, `sync --workers`) would otherwise re-parse the registry, reconnect and re-check
# migrations, and rebuild boto3 clients each time: most of a small run's cost.
_REGISTRIES: dict[tuple[str, int, int], Registry] = {}
_WAREHOUSES: dict[str, Any] = {}
_S3_CLIENTS: dict[str, Any] = {}
_SQS_CLIENTS: dict[str, Any] = {}
_LOCK = threading.Lock()


def _forget_after_fork() -> None:
    # A forked worker must not share the parent's database connections or HTTP pools.
    _WAREHOUSES.clear()
    _S3_CLIENTS.clear()
    _SQS_CLIENTS.clear()


os.register_at_fork(after_in_child=_forget_after_fork)


def _close_warehouses() -> None:
    # Closing the last connection lets SQLite checkpoint and delete its write-ahead log. Left behind after
    # a 1M-row sync it is ~0.5 GB that the next process to open the warehouse must scan before its first
    # read (about a second for `sync` of an unchanged file, `log`, the UI).
    for warehouse in list(_WAREHOUSES.values()):
        warehouse.dispose()
    _WAREHOUSES.clear()


atexit.register(_close_warehouses)


class RegistryResource(ConfigurableResource):
    """The client registry (`clients.yaml`)."""

    path: str = Field(description="Path of clients.yaml (SIS_CLIENTS_FILE).")

    def load(self) -> Registry:
        """The registry as the file is now (re-read whenever the file changes)."""
        return registry_at(self.path)


def registry_at(path: str | os.PathLike) -> Registry:
    """The registry in `path` as the file is now, parsed once per version of the file per process and
    shared by the code location (its partitions) and `RegistryResource`, so a sensor tick or a run in the
    process that loaded the definitions does not parse it again (~1.5 s for 1,000 clients)."""
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return load_registry(path)  # raises RegistryError naming the file and the setting
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    with _LOCK:
        if key not in _REGISTRIES:
            _REGISTRIES.clear()
            _REGISTRIES[key] = load_registry(path)
        return _REGISTRIES[key]


class WarehouseResource(ConfigurableResource):
    """The subscriber warehouse, by SQLAlchemy URL (SIS_WAREHOUSE_URL; default a SQLite file)."""

    url: str = Field(description="SQLAlchemy URL of the warehouse.")

    def get(self):
        """The Warehouse, migrated to the current schema once per process."""
        with _LOCK:
            if self.url not in _WAREHOUSES:
                from sis_pipeline.warehouse import Warehouse

                warehouse = Warehouse(self.url)
                warehouse.upgrade()
                _WAREHOUSES[self.url] = warehouse
            return _WAREHOUSES[self.url]


class SisS3Resource(S3Resource):
    """dagster-aws' `S3Resource` with the project's retry policy, its boto3 client built once per process.

    Retries: botocore mode `retry_mode` with `max_attempts` requests in all, the first included, as
    dagster-aws documents the field (dagster-aws itself hands botocore `max_attempts` as a retry count, one
    request more than it says). Defaults come from `aws_clients` (docs/OPERATIONS.md).

    Building a client loads botocore's JSON models (about 0.3 s); Dagster asks for one per run, and a
    worker executing hundreds of small runs spends more on that than on the import. boto3 clients are
    thread-safe, so one is shared.
    """

    max_attempts: int = Field(
        default=aws_clients.PIPELINE_MAX_ATTEMPTS,
        ge=1,
        description="Requests per S3 call in all, the first included (AWS_MAX_ATTEMPTS).",
    )
    retry_mode: str = Field(
        default=aws_clients.PIPELINE_RETRY_MODE,
        description="botocore retry mode: standard, adaptive or legacy (AWS_RETRY_MODE).",
    )
    connect_timeout: float = Field(
        default=aws_clients.CONNECT_TIMEOUT_SECONDS, description="Seconds to wait for a connection."
    )
    read_timeout: float = Field(
        default=aws_clients.READ_TIMEOUT_SECONDS, description="Seconds to wait on one socket read."
    )

    def _build_client(self) -> Any:
        import boto3
        from botocore.handlers import disable_signing

        session = boto3.session.Session(profile_name=self.profile_name)
        client = session.client(
            "s3",
            region_name=self.region_name,
            use_ssl=self.use_ssl,
            verify=self.verify,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=aws_clients.client_config(
                self.retry_mode,
                self.max_attempts,
                connect_timeout=self.connect_timeout,
                read_timeout=self.read_timeout,
            ),
        )
        if self.use_unsigned_session:
            client.meta.events.register("choose-signer.s3.*", disable_signing)
        return client

    def get_client(self) -> Any:
        key = self.model_dump_json()
        with _LOCK:
            if key not in _S3_CLIENTS:
                _S3_CLIENTS[key] = self._build_client()
            return _S3_CLIENTS[key]

    def get_object_to_set_on_execution_context(self) -> Any:
        return self.get_client()


class ArchiveResource(ConfigurableResource):
    """Where uploads are archived by sha256: a local folder or `s3://bucket/prefix` (SIS_ARCHIVE_URI)."""

    uri: str = Field(description="Local folder or s3://bucket/prefix.")

    def archive(self, s3_client: Any) -> Archive:
        return Archive(self.uri, s3_client if self.uri.startswith("s3://") else None)


class EventQueueResource(ConfigurableResource):
    """The SQS queue receiving S3 event notifications; empty `queue_url` means polling mode."""

    queue_url: str = Field(default="", description="SQS queue URL (SIS_EVENTS_QUEUE_URL); empty = polling.")
    endpoint_url: str = Field(default="", description="SQS endpoint (SIS_SQS_ENDPOINT_URL); empty = AWS.")
    region_name: str = Field(default="us-east-1")
    visibility_timeout_seconds: int = Field(
        default=120,
        ge=1,
        description="How long a received message stays hidden. A message that started a run is deleted "
        "only when it comes back after this, once the tick that acted on it is recorded; a tick that "
        "failed gets its messages back after this too.",
    )
    max_attempts: int = Field(
        default=aws_clients.PIPELINE_MAX_ATTEMPTS, ge=1, description="Requests per SQS call in all."
    )
    retry_mode: str = Field(default=aws_clients.PIPELINE_RETRY_MODE, description="botocore retry mode.")

    def client(self) -> Any:
        """The SQS client for this configuration, built once per process (a sensor tick builds its
        resources afresh; the code server evaluating ticks every minute keeps one client)."""
        key = self.model_dump_json()
        with _LOCK:
            if key not in _SQS_CLIENTS:
                import boto3

                _SQS_CLIENTS[key] = boto3.client(
                    "sqs",
                    endpoint_url=self.endpoint_url or None,
                    region_name=self.region_name,
                    config=aws_clients.client_config(self.retry_mode, self.max_attempts),
                )
            return _SQS_CLIENTS[key]


def default_resources() -> dict[str, Any]:
    """Resources from the environment, as the code location and the CLI use them."""
    mode = aws_clients.retry_mode(aws_clients.PIPELINE_RETRY_MODE)
    attempts = aws_clients.max_attempts(aws_clients.PIPELINE_MAX_ATTEMPTS)
    return {
        "s3": SisS3Resource(
            endpoint_url=settings.s3_endpoint_url(),
            region_name="us-east-1",
            max_attempts=attempts,
            retry_mode=mode,
        ),
        "registry": RegistryResource(path=str(settings.clients_file())),
        "warehouse": WarehouseResource(url=settings.warehouse_url()),
        "archive": ArchiveResource(uri=settings.archive_uri()),
        "events": EventQueueResource(
            queue_url=settings.events_queue_url() or "",
            endpoint_url=settings.sqs_endpoint_url() or "",
            max_attempts=attempts,
            retry_mode=mode,
        ),
    }
