"""Dagster resources: the registry, the warehouse, the upload archive and the event queue.

S3 itself is dagster-aws' `S3Resource`. Defaults are read from the environment when the code location
loads (see `sis_pipeline.settings`), so an unset variable means "the embedded default", never a load error.
"""

from __future__ import annotations

from typing import Any

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

from sis_pipeline import settings
from sis_pipeline.registry import Registry, load_registry
from sis_pipeline.s3 import Archive


class RegistryResource(ConfigurableResource):
    """The client registry (`clients.yaml`)."""

    path: str = Field(description="Path of clients.yaml (SIS_CLIENTS_FILE).")

    def load(self) -> Registry:
        return load_registry(self.path)


class WarehouseResource(ConfigurableResource):
    """The subscriber warehouse, by SQLAlchemy URL (SIS_WAREHOUSE_URL; default a SQLite file)."""

    url: str = Field(description="SQLAlchemy URL of the warehouse.")
    _warehouse: Any = PrivateAttr(default=None)

    def get(self):
        """The Warehouse, migrated to the current schema (upgrade is idempotent and cheap when current)."""
        if self._warehouse is None:
            from sis_pipeline.warehouse import Warehouse

            warehouse = Warehouse(self.url)
            warehouse.upgrade()
            self._warehouse = warehouse
        return self._warehouse


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

    _client: Any = PrivateAttr(default=None)

    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "sqs", endpoint_url=self.endpoint_url or None, region_name=self.region_name
            )
        return self._client


def default_resources() -> dict[str, Any]:
    """Resources from the environment, as the code location and the CLI use them."""
    return {
        "s3": S3Resource(endpoint_url=settings.s3_endpoint_url(), region_name="us-east-1"),
        "registry": RegistryResource(path=str(settings.clients_file())),
        "warehouse": WarehouseResource(url=settings.warehouse_url()),
        "archive": ArchiveResource(uri=settings.archive_uri()),
        "events": EventQueueResource(
            queue_url=settings.events_queue_url() or "",
            endpoint_url=settings.sqs_endpoint_url() or "",
        ),
    }
