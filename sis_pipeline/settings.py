"""Where things live by default, read from the environment (PRODUCT.md §8).

Every path the project writes to is derived here, so a user can see in one place what an unset variable
means. Nothing here touches the network or the disk.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Project data folder (SQLite warehouse, archived uploads, Dagster home of the demo). Overridable so tests
#: and deployments can keep state elsewhere.
DATA_DIR_ENV = "SIS_DATA_DIR"
CLIENTS_FILE_ENV = "SIS_CLIENTS_FILE"
WAREHOUSE_URL_ENV = "SIS_WAREHOUSE_URL"
S3_ENDPOINT_ENV = "SIS_S3_ENDPOINT_URL"
IAM_ENDPOINT_ENV = "SIS_IAM_ENDPOINT_URL"
SQS_ENDPOINT_ENV = "SIS_SQS_ENDPOINT_URL"
ARCHIVE_ENV = "SIS_ARCHIVE_URI"
EVENTS_QUEUE_ENV = "SIS_EVENTS_QUEUE_URL"


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or None


def data_dir() -> Path:
    """The project's data folder: `$SIS_DATA_DIR`, else `./data` under the working directory."""
    return Path(_env(DATA_DIR_ENV) or Path.cwd() / "data").resolve()


def clients_file() -> Path:
    """The client registry: `$SIS_CLIENTS_FILE`, else `clients.yaml` in the working directory."""
    return Path(_env(CLIENTS_FILE_ENV) or Path.cwd() / "clients.yaml").resolve()


def warehouse_url() -> str:
    """SQLAlchemy URL of the warehouse: `$SIS_WAREHOUSE_URL`, else a SQLite file in the data folder."""
    url = _env(WAREHOUSE_URL_ENV)
    if url:
        return url
    return f"sqlite:///{data_dir() / 'warehouse.sqlite'}"


def archive_uri() -> str:
    """Where raw uploads are archived by sha256: `s3://bucket/prefix` or a local folder."""
    return _env(ARCHIVE_ENV) or str(data_dir() / "archive")


def s3_endpoint_url() -> str | None:
    """Any S3-compatible endpoint; None means AWS itself."""
    return _env(S3_ENDPOINT_ENV)


def iam_endpoint_url() -> str | None:
    """IAM endpoint: `$SIS_IAM_ENDPOINT_URL`, else the S3 endpoint when one is set (moto serves both)."""
    return _env(IAM_ENDPOINT_ENV) or s3_endpoint_url()


def sqs_endpoint_url() -> str | None:
    """SQS endpoint: `$SIS_SQS_ENDPOINT_URL`, else the S3 endpoint when one is set."""
    return _env(SQS_ENDPOINT_ENV) or s3_endpoint_url()


def events_queue_url() -> str | None:
    """SQS queue of S3 event notifications; when set, the upload sensor reads events instead of polling."""
    return _env(EVENTS_QUEUE_ENV)
