"""boto3 clients for S3, IAM and SQS, honouring SIS_S3_ENDPOINT_URL / SIS_IAM_ENDPOINT_URL /
SIS_SQS_ENDPOINT_URL (PRODUCT.md §8), and the project's retry policy, in one place.

Credentials come from the standard AWS chain (env, profiles, roles). Dagster assets and sensors use
`resources.SisS3Resource` / `EventQueueResource`, which take their retry settings from here too.

Retry policy (docs/OPERATIONS.md, "Faults, retries and what is guaranteed"):
- Imports and the sensor (`PIPELINE_RETRY_MODE`, `PIPELINE_MAX_ATTEMPTS`): botocore's "standard" mode, 5
  attempts in all. It retries 500/502/503/504, throttling and connection errors with jittered exponential
  backoff (50 ms base for transient errors, 1 s for throttling, at most 20 s a wait). Not "adaptive": one
  client is shared by every run and poll thread of a process, and adaptive mode's single client-side rate
  limiter would slow every school's reads because one bucket answered SlowDown.
- The command line's administrative calls (`ADMIN_*`): "adaptive", 8 attempts. Onboarding creates buckets
  and IAM users one after another, and IAM throttles per account; there the client-side rate limit helps.
- `AWS_RETRY_MODE` and `AWS_MAX_ATTEMPTS`, the standard AWS variables, override both when set.
"""

from __future__ import annotations

import os
from typing import Any

import boto3
from botocore.config import Config

from sis_pipeline import settings

PIPELINE_RETRY_MODE = "standard"
PIPELINE_MAX_ATTEMPTS = 5
ADMIN_RETRY_MODE = "adaptive"
ADMIN_MAX_ATTEMPTS = 8
#: A silent endpoint fails a request in bounded time instead of botocore's 60 s per attempt to connect.
CONNECT_TIMEOUT_SECONDS = 5.0
#: Per socket read, not per request: a 100 MB GetObject takes longer and is fine.
READ_TIMEOUT_SECONDS = 60.0
_RETRY_MODES = ("standard", "adaptive", "legacy")


def retry_mode(default: str) -> str:
    """`AWS_RETRY_MODE` when it names a botocore mode, else `default`."""
    value = os.environ.get("AWS_RETRY_MODE", "").strip().lower()
    return value if value in _RETRY_MODES else default


def max_attempts(default: int) -> int:
    """`AWS_MAX_ATTEMPTS` (total attempts, the first included) when it is a positive integer, else `default`."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
    return int(value) if value.isdigit() and int(value) > 0 else default


def client_config(
    mode: str,
    attempts: int,
    *,
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    read_timeout: float = READ_TIMEOUT_SECONDS,
    max_pool_connections: int = 32,
) -> Config:
    """A botocore Config with `attempts` in all (`total_max_attempts`: botocore's own `max_attempts` key
    counts retries only, so 5 there would mean 6 requests)."""
    return Config(
        retries={"mode": mode, "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
    )


def _admin_config() -> Config:
    return client_config(retry_mode(ADMIN_RETRY_MODE), max_attempts(ADMIN_MAX_ATTEMPTS))


def s3_client(region: str | None = None) -> Any:
    return boto3.client(
        "s3", endpoint_url=settings.s3_endpoint_url(), region_name=region, config=_admin_config()
    )


def iam_client() -> Any:
    return boto3.client(
        "iam", endpoint_url=settings.iam_endpoint_url(), region_name="us-east-1", config=_admin_config()
    )


def sqs_client(region: str | None = None) -> Any:
    return boto3.client(
        "sqs", endpoint_url=settings.sqs_endpoint_url(), region_name=region, config=_admin_config()
    )
