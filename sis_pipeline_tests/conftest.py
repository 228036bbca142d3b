"""Shared fixtures: a real S3/IAM/SQS endpoint over HTTP (moto's server on loopback) and warehouses.

PostgreSQL tests are selected by `SIS_TEST_POSTGRES_URL`; without it they skip with a visible reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

POSTGRES_URL_ENV = "SIS_TEST_POSTGRES_URL"


@pytest.fixture(autouse=True)
def _isolated_environment(tmp_path, monkeypatch):
    """Every test gets its own data folder and no stray AWS or SIS settings from the developer's shell."""
    monkeypatch.setenv("SIS_DATA_DIR", str(tmp_path / "data"))
    for name in (
        "SIS_WAREHOUSE_URL",
        "SIS_CLIENTS_FILE",
        "SIS_S3_ENDPOINT_URL",
        "SIS_IAM_ENDPOINT_URL",
        "SIS_SQS_ENDPOINT_URL",
        "SIS_ARCHIVE_URI",
        "SIS_EVENTS_QUEUE_URL",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """moto's server on a free loopback port, shared by the session; tests use unique bucket names."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_endpoint(moto_endpoint, monkeypatch) -> str:
    """The moto endpoint, exported as SIS_S3_ENDPOINT_URL for code under test."""
    monkeypatch.setenv("SIS_S3_ENDPOINT_URL", moto_endpoint)
    return moto_endpoint


@pytest.fixture
def s3_client(s3_endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")


@pytest.fixture
def unique_bucket() -> str:
    return f"sis-test-{uuid.uuid4().hex[:12]}"


def postgres_url_or_skip() -> str:
    url = os.environ.get(POSTGRES_URL_ENV, "").strip()
    if not url:
        pytest.skip(
            f"PostgreSQL tests need {POSTGRES_URL_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/test)"
        )
    return url


def _sqlalchemy_postgres_url(url: str) -> str:
    # psycopg 3 is the driver we ship; accept plain postgresql:// URLs from the environment.
    if url.startswith("postgresql://"):
        return "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


@contextmanager
def postgres_schema(prefix: str = "sis_test") -> Iterator[str]:
    """A fresh, empty PostgreSQL schema (skips without SIS_TEST_POSTGRES_URL); yields a SQLAlchemy URL whose
    connections use it, and drops it afterwards."""
    import sqlalchemy as sa

    base = _sqlalchemy_postgres_url(postgres_url_or_skip())
    schema = f"{prefix}_{uuid.uuid4().hex[:10]}"
    engine = sa.create_engine(base)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in base else "?"
    try:
        yield f"{base}{sep}options=-csearch_path%3D{schema}"
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def postgres_schema_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL schema for one test, dropped afterwards."""
    with postgres_schema() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def warehouse_url(request, tmp_path) -> str:
    """Each warehouse test runs against SQLite and PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'warehouse.sqlite'}"
    return request.getfixturevalue("postgres_schema_url")


@pytest.fixture
def harness(tmp_path, s3_client, s3_endpoint):
    """The Dagster layer's test harness (see orchestration_support.Harness)."""
    from sis_pipeline_tests.orchestration_support import Harness

    return Harness(tmp=tmp_path, endpoint=s3_endpoint, s3=s3_client)


@pytest.fixture
def dagster_instance():
    """Dagster's own test instance (SQLite storage in a temporary folder)."""
    from dagster import instance_for_test

    with instance_for_test() as instance:
        yield instance
