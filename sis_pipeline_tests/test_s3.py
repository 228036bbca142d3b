"""Exact-version reads and the sha256 archive against moto's S3 over HTTP."""

from __future__ import annotations

import hashlib

import pytest

from sis_pipeline.registry import ClientConfig
from sis_pipeline.s3 import Archive, UploadNotFound, fetch_upload, parse_s3_event


def _client(bucket: str) -> ClientConfig:
    return ClientConfig(id="22", name="School", bucket=bucket)


def test_fetch_reads_the_version_head_object_saw(s3_client, unique_bucket):
    s3_client.create_bucket(Bucket=unique_bucket)
    s3_client.put_bucket_versioning(Bucket=unique_bucket, VersioningConfiguration={"Status": "Enabled"})
    first = s3_client.put_object(Bucket=unique_bucket, Key="student_feed.csv", Body=b"one")
    s3_client.put_object(Bucket=unique_bucket, Key="student_feed.csv", Body=b"two")
    fetched = fetch_upload(s3_client, _client(unique_bucket), version_id=first["VersionId"])
    assert fetched.data == b"one"
    assert fetched.version.version_id == first["VersionId"]
    assert fetched.version.sha256 == hashlib.sha256(b"one").hexdigest()
    latest = fetch_upload(s3_client, _client(unique_bucket))
    assert latest.data == b"two"


def test_fetch_of_a_missing_upload_is_upload_not_found(s3_client, unique_bucket):
    s3_client.create_bucket(Bucket=unique_bucket)
    with pytest.raises(UploadNotFound, match="client 22"):
        fetch_upload(s3_client, _client(unique_bucket))


def test_s3_archive_stores_once_by_sha256_and_reads_back(s3_client, unique_bucket):
    s3_client.create_bucket(Bucket=unique_bucket)
    archive = Archive(f"s3://{unique_bucket}/archive/sis", s3_client)
    digest = hashlib.sha256(b"roster").hexdigest()
    location = archive.put("22", digest, b"roster")
    assert location == f"s3://{unique_bucket}/archive/sis/22/{digest}.csv"
    archive.put("22", digest, b"roster")
    keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=unique_bucket)["Contents"]]
    assert keys == [f"archive/sis/22/{digest}.csv"]
    assert archive.get("22", digest) == b"roster"
    with pytest.raises(UploadNotFound):
        archive.get("22", "0" * 64)


def test_local_archive_refuses_a_copy_that_does_not_match_its_hash(tmp_path):
    archive = Archive(str(tmp_path / "archive"))
    digest = hashlib.sha256(b"roster").hexdigest()
    path = archive.put("22", digest, b"roster")
    (tmp_path / "archive" / "22" / f"{digest}.csv").write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match"):
        archive.get("22", digest)
    assert path.endswith(f"{digest}.csv")


def test_s3_event_keys_are_url_decoded_and_unknown_objects_ignored():
    client = ClientConfig(id="22", name="School", bucket="b-22", key="roster files/feed 1.csv")
    body = (
        '{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2026-11-23T10:00:00Z",'
        ' "s3": {"bucket": {"name": "b-22"}, "object": {"key": "roster+files/feed+1.csv", "eTag": "abc",'
        ' "versionId": "v1", "sequencer": "0A"}}},'
        ' {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": "other"}, "object": {"key": "x"}}},'
        ' {"eventName": "ObjectRemoved:Delete", "s3": {"bucket": {"name": "b-22"},'
        ' "object": {"key": "roster+files/feed+1.csv"}}}]}'
    )
    seen = parse_s3_event(body, {(client.bucket, client.key): client})
    assert [(s.client_id, s.version_id, s.content_token) for s in seen] == [("22", "v1", "abc")]
    assert parse_s3_event("not json", {}) == []
