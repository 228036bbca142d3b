"""boto3 clients for S3, IAM and SQS, honouring SIS_S3_ENDPOINT_URL / SIS_IAM_ENDPOINT_URL /
SIS_SQS_ENDPOINT_URL (PRODUCT.md §8). Credentials come from the standard AWS chain (env, profiles, roles).

Dagster assets and sensors use dagster-aws' `S3Resource` instead; this module serves the command line.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config

from sis_pipeline import settings

# Adaptive retries absorb throttling when hundreds of clients are polled or onboarded in a row.
_RETRIES = Config(retries={"max_attempts": 8, "mode": "adaptive"}, max_pool_connections=32)


def s3_client(region: str | None = None) -> Any:
    return boto3.client("s3", endpoint_url=settings.s3_endpoint_url(), region_name=region, config=_RETRIES)


def iam_client() -> Any:
    return boto3.client(
        "iam", endpoint_url=settings.iam_endpoint_url(), region_name="us-east-1", config=_RETRIES
    )


def sqs_client(region: str | None = None) -> Any:
    return boto3.client("sqs", endpoint_url=settings.sqs_endpoint_url(), region_name=region, config=_RETRIES)
