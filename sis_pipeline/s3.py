"""Uploads on S3: read the exact object version, archive it by sha256, and discover new uploads.

Discovery has two modes (PRODUCT.md §7): polling (one HeadObject per client, in parallel) and events (S3 event
notifications on an SQS queue, read in batches). Both return `UploadSeen` values; the sensor decides what is
new by comparing them with its cursor, never by timestamps (LastModified has one-second precision, so a
timestamp cursor misses an overwrite in the same second: dagster issue #22892).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus, urlparse

from botocore.exceptions import ClientError

from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig

log = logging.getLogger(__name__)

#: Failures that mean "there is no file there (yet)" rather than an outage.
_ABSENT_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"}


class UploadNotFound(LookupError):
    """The client's object (or the requested version) does not exist."""


@dataclass(frozen=True)
class UploadSeen:
    """An object version noticed by discovery (HeadObject or an S3 event notification)."""

    client_id: str
    bucket: str
    key: str
    etag: str | None
    version_id: str | None
    last_modified: str | None = None
    size: int | None = None
    sequencer: str | None = None  # S3 event order for one key (hex; longer or greater is later)

    @property
    def order(self) -> tuple[int, str]:
        """Sort key putting later events of one object last (S3 events can arrive out of order)."""
        sequencer = self.sequencer or ""
        return (len(sequencer), sequencer)

    @property
    def content_token(self) -> str:
        """What the sensor compares: the ETag, i.e. the content. The same bytes again start no run."""
        return (self.etag or "").strip('"')

    @property
    def run_token(self) -> str:
        """What keys the run: the version id, else ETag and time, so A -> B -> A still gives three runs."""
        if self.version_id:
            return self.version_id
        return f"{self.content_token}@{self.last_modified or ''}"


@dataclass(frozen=True)
class FetchedFile:
    version: FileVersion
    data: bytes


def _is_absent(error: ClientError) -> bool:
    return str(error.response.get("Error", {}).get("Code")) in _ABSENT_CODES


def head_upload(s3: Any, client: ClientConfig, version_id: str | None = None) -> UploadSeen | None:
    """HeadObject of the client's upload (or one version of it); None when nothing is there."""
    kwargs: dict[str, Any] = {"Bucket": client.bucket, "Key": client.key}
    if version_id:
        kwargs["VersionId"] = version_id
    try:
        head = s3.head_object(**kwargs)
    except ClientError as error:
        if _is_absent(error):
            return None
        raise
    modified = head.get("LastModified")
    return UploadSeen(
        client_id=client.id,
        bucket=client.bucket,
        key=client.key,
        etag=head.get("ETag"),
        version_id=head.get("VersionId") if head.get("VersionId") not in (None, "null") else None,
        last_modified=modified.isoformat() if isinstance(modified, datetime) else None,
        size=head.get("ContentLength"),
    )


def fetch_upload(s3: Any, client: ClientConfig, version_id: str | None = None) -> FetchedFile:
    """Read one exact object version: HeadObject, then GetObject pinned to that VersionId (or ETag).

    Pinning means a school overwriting the file mid-run cannot hand us a mix of two uploads.
    """
    seen = head_upload(s3, client, version_id)
    if seen is None:
        what = f"version {version_id} of " if version_id else ""
        raise UploadNotFound(f"client {client.id}: no {what}s3://{client.bucket}/{client.key}")
    kwargs: dict[str, Any] = {"Bucket": client.bucket, "Key": client.key}
    if seen.version_id:
        kwargs["VersionId"] = seen.version_id
    elif seen.etag:
        kwargs["IfMatch"] = seen.etag
    try:
        body = s3.get_object(**kwargs)["Body"]
        data = body.read()
    except ClientError as error:
        if _is_absent(error) or error.response.get("Error", {}).get("Code") == "PreconditionFailed":
            raise UploadNotFound(
                f"client {client.id}: s3://{client.bucket}/{client.key} changed while it was being read; "
                "the next run will read the new upload"
            ) from error
        raise
    version = FileVersion(
        bucket=client.bucket,
        key=client.key,
        etag=seen.etag,
        version_id=seen.version_id,
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        last_modified=datetime.fromisoformat(seen.last_modified) if seen.last_modified else None,
    )
    return FetchedFile(version=version, data=data)


class Archive:
    """Content-addressed copies of every upload read, so a re-run can replay exactly the same bytes.

    `uri` is a local folder or `s3://bucket/prefix`. Objects are keyed `<client>/<sha256>.csv`.
    """

    def __init__(self, uri: str, s3: Any = None):
        self.uri = uri
        parsed = urlparse(uri)
        self._is_s3 = parsed.scheme == "s3"
        self._bucket = parsed.netloc if self._is_s3 else None
        self._prefix = parsed.path.strip("/") if self._is_s3 else ""
        self._s3 = s3
        if self._is_s3 and s3 is None:
            raise ValueError("an s3:// archive needs an S3 client")

    def _key(self, client_id: str, sha256: str) -> str:
        name = f"{client_id}/{sha256}.csv"
        return f"{self._prefix}/{name}" if self._prefix else name

    def location(self, client_id: str, sha256: str) -> str:
        if self._is_s3:
            return f"s3://{self._bucket}/{self._key(client_id, sha256)}"
        return str(Path(self.uri) / self._key(client_id, sha256))

    def put(self, client_id: str, sha256: str, data: bytes) -> str:
        """Store the bytes unless already stored; return where they are."""
        if self._is_s3:
            key = self._key(client_id, sha256)
            try:
                self._s3.head_object(Bucket=self._bucket, Key=key)
            except ClientError as error:
                if not _is_absent(error):
                    raise
                self._s3.put_object(Bucket=self._bucket, Key=key, Body=data)
            return self.location(client_id, sha256)
        path = Path(self.location(client_id, sha256))
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(".partial")
            partial.write_bytes(data)
            partial.replace(path)  # atomic: a reader never sees half a file
        return str(path)

    def get(self, client_id: str, sha256: str) -> bytes:
        if self._is_s3:
            try:
                return self._s3.get_object(Bucket=self._bucket, Key=self._key(client_id, sha256))[
                    "Body"
                ].read()
            except ClientError as error:
                if _is_absent(error):
                    raise UploadNotFound(f"client {client_id}: no archived file {sha256}") from error
                raise
        path = Path(self.location(client_id, sha256))
        if not path.exists():
            raise UploadNotFound(f"client {client_id}: no archived file {sha256} in {self.uri}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"client {client_id}: archived file {path} does not match its sha256")
        return data


def poll_uploads(s3: Any, clients: Sequence[ClientConfig], max_workers: int = 32) -> list[UploadSeen]:
    """HeadObject every client's upload in parallel; clients with nothing uploaded are left out.

    An error for one client (say, its bucket is misconfigured) is logged with the client id and does not
    stop the others.
    """

    def one(client: ClientConfig) -> UploadSeen | None:
        try:
            return head_upload(s3, client)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            log.warning("client %s: HeadObject on its upload failed (%s)", client.id, code)
            return None

    if not clients:
        return []
    with ThreadPoolExecutor(max_workers=min(max_workers, len(clients))) as pool:
        return [seen for seen in pool.map(one, clients) if seen is not None]


@dataclass(frozen=True)
class QueuedEvents:
    """What one read of the event queue found; `receipts` are deleted once the sensor has acted."""

    uploads: list[UploadSeen]
    receipts: list[str]
    messages: int


def parse_s3_event(body: str, clients_by_place: dict[tuple[str, str], ClientConfig]) -> list[UploadSeen]:
    """S3 event notification JSON (directly, or wrapped by SNS) -> uploads of known clients' objects."""
    try:
        document = json.loads(body)
    except json.JSONDecodeError:
        return []
    if isinstance(document, dict) and "Message" in document and "Records" not in document:
        try:
            document = json.loads(document["Message"])  # delivered through SNS
        except (TypeError, json.JSONDecodeError):
            return []
    found: list[UploadSeen] = []
    for record in document.get("Records", []) if isinstance(document, dict) else []:
        if not str(record.get("eventName", "")).startswith("ObjectCreated"):
            continue
        s3_part = record.get("s3", {})
        bucket = s3_part.get("bucket", {}).get("name")
        obj = s3_part.get("object", {})
        key = unquote_plus(obj.get("key", ""))  # keys arrive URL-encoded
        client = clients_by_place.get((bucket, key))
        if client is None:
            continue
        found.append(
            UploadSeen(
                client_id=client.id,
                bucket=bucket,
                key=key,
                etag=f'"{obj["eTag"]}"' if obj.get("eTag") else None,
                version_id=obj.get("versionId") or None,
                last_modified=record.get("eventTime"),
                size=obj.get("size"),
                sequencer=obj.get("sequencer"),
            )
        )
    return found


def read_event_queue(
    sqs: Any,
    queue_url: str,
    clients: Iterable[ClientConfig],
    max_messages: int = 5000,
    readers: int = 8,
) -> QueuedEvents:
    """Drain up to `max_messages` from the queue in batches of 10, with parallel readers.

    Messages are not deleted here: the caller deletes `receipts` after it has recorded its decisions, so a
    crash between the two re-delivers the events instead of losing them.
    """
    clients_by_place = {(c.bucket, c.key): c for c in clients}
    batches = max(1, -(-max_messages // 10))

    def reader(_: int) -> list[dict]:
        received: list[dict] = []
        for _ in range(-(-batches // readers)):
            response = sqs.receive_message(
                QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, VisibilityTimeout=120
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            received.extend(messages)
        return received

    with ThreadPoolExecutor(max_workers=readers) as pool:
        messages = [m for batch in pool.map(reader, range(readers)) for m in batch]
    uploads = [u for m in messages for u in parse_s3_event(m.get("Body", ""), clients_by_place)]
    return QueuedEvents(
        uploads=uploads, receipts=[m["ReceiptHandle"] for m in messages], messages=len(messages)
    )


def delete_events(sqs: Any, queue_url: str, receipts: Sequence[str], workers: int = 8) -> None:
    """Delete handled messages, 10 per call, in parallel."""
    chunks = [receipts[i : i + 10] for i in range(0, len(receipts), 10)]

    def delete(chunk: Sequence[str]) -> None:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)

    if chunks:
        with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
            list(pool.map(delete, chunks))
