"""Uploads on S3: read the exact object version, archive it by sha256, and discover new uploads.

Discovery has two modes (PRODUCT.md §7): polling (one HeadObject per client, in parallel) and events (S3 event
notifications on an SQS queue, read in batches). Both return `UploadSeen` values; the sensor decides what is
new by comparing them with its cursor, never by timestamps (LastModified has one-second precision, so a
timestamp cursor misses an overwrite in the same second: dagster issue #22892).

Faults: botocore retries each request by the client's retry policy (`aws_clients`). What still fails after
that becomes `S3RequestFailed`, whose message names the client, the S3 operation, the object and the endpoint,
never file contents. A read is pinned to the version (or ETag) HeadObject saw, so an overwrite mid-run cannot
mix two uploads; on an unversioned bucket it fails as `UploadChanged` and the next run reads the new upload.
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

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, IncompleteReadError

from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig

log = logging.getLogger(__name__)

#: Failures that mean "there is no file there (yet)" rather than an outage.
_ABSENT_CODES = {"404", "NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"}


class UploadNotFound(LookupError):
    """The client's object (or the requested version) does not exist."""


class UploadChanged(UploadNotFound):
    """The object was overwritten between HeadObject and GetObject on a bucket without versioning."""


class S3RequestFailed(RuntimeError):
    """An S3 request still failed after the client's retries: endpoint down, 5xx, access denied.

    The message names the client, the operation, the object, the endpoint and the number of attempts.
    """

    def __init__(self, message: str, *, client_id: str = "", operation: str = "", reason: str = ""):
        super().__init__(message)
        self.client_id = client_id
        self.operation = operation
        self.reason = reason


def _configured_attempts(s3: Any) -> int:
    retries = getattr(getattr(getattr(s3, "meta", None), "config", None), "retries", None) or {}
    return int(retries.get("total_max_attempts") or (retries.get("max_attempts", 4) + 1))


def request_failure(s3: Any, client: ClientConfig, operation: str, error: Exception) -> S3RequestFailed:
    """`error` from `operation` on the client's upload as an `S3RequestFailed` with a message that says
    what failed, where and how often: e.g. `client 22: S3 HeadObject of s3://b/k failed after 5 attempts
    at http://127.0.0.1:9000 (HTTP 503 ServiceUnavailable)`."""
    endpoint = getattr(getattr(s3, "meta", None), "endpoint_url", None) or "AWS"
    if isinstance(error, ClientError):
        meta = error.response.get("ResponseMetadata", {})
        attempts = f"{int(meta.get('RetryAttempts', 0)) + 1} attempt(s)"
        status = meta.get("HTTPStatusCode")
        code = str(error.response.get("Error", {}).get("Code") or "")
        reason = f"HTTP {status}" + (f" {code}" if code and code != str(status) else "")
    else:
        # botocore does not count connection-level retries on the exception; it made up to this many.
        attempts = f"up to {_configured_attempts(s3)} attempt(s)"
        reason = type(error).__name__
    message = (
        f"client {client.id}: S3 {operation} of s3://{client.bucket}/{client.key} failed after {attempts} "
        f"at {endpoint} ({reason})"
    )
    return S3RequestFailed(message, client_id=client.id, operation=operation, reason=reason)


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


def _pin(seen: UploadSeen) -> str:
    return f"version {seen.version_id}" if seen.version_id else f"ETag {seen.content_token}"


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
        raise request_failure(s3, client, "HeadObject", error) from error
    except BotoCoreError as error:
        raise request_failure(s3, client, "HeadObject", error) from error
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


def fetch_upload(
    s3: Any, client: ClientConfig, version_id: str | None = None, seen: UploadSeen | None = None
) -> FetchedFile:
    """Read one exact object version: HeadObject (unless the caller's `seen` is that HeadObject), then
    GetObject pinned to that VersionId (or, unversioned, to that ETag with IfMatch).

    Pinning means a school overwriting the file mid-run cannot hand us a mix of two uploads: a versioned read
    stays on the version seen; an unversioned one fails with `UploadChanged`. A body cut off mid-transfer
    (botocore retries requests, not the reading of their bodies) is read again, the same pinned version.
    """
    if seen is None:
        seen = head_upload(s3, client, version_id)
    if seen is None:
        what = f"version {version_id} of " if version_id else ""
        raise UploadNotFound(f"client {client.id}: no {what}s3://{client.bucket}/{client.key}")
    kwargs: dict[str, Any] = {"Bucket": client.bucket, "Key": client.key}
    if seen.version_id:
        kwargs["VersionId"] = seen.version_id
    elif seen.etag:
        kwargs["IfMatch"] = seen.etag
    attempts = _configured_attempts(s3)
    for attempt in range(1, attempts + 1):
        try:
            body = s3.get_object(**kwargs)["Body"]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if _is_absent(error) or code == "PreconditionFailed":
                raise UploadChanged(
                    f"client {client.id}: s3://{client.bucket}/{client.key} changed between HeadObject and "
                    f"GetObject (the {_pin(seen)} it started with is gone); nothing was read, the next run "
                    "will read the new upload"
                ) from error
            raise request_failure(s3, client, "GetObject", error) from error
        except BotoCoreError as error:
            raise request_failure(s3, client, "GetObject", error) from error
        try:
            data = body.read()
            break
        except (HTTPClientError, IncompleteReadError) as error:
            if attempt == attempts:
                raise request_failure(s3, client, "GetObject (reading the body)", error) from error
            log.warning(
                "client %s: GetObject body of %s cut off (%s), reading it again (attempt %d of %d)",
                client.id,
                _pin(seen),
                type(error).__name__,
                attempt + 1,
                attempts,
            )
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


@dataclass(frozen=True)
class PolledUploads:
    """What one poll found: the uploads there are, and the clients whose HeadObject failed (id -> why)."""

    uploads: list[UploadSeen]
    failed: dict[str, str]


def poll_uploads(s3: Any, clients: Sequence[ClientConfig], max_workers: int = 32) -> PolledUploads:
    """HeadObject every client's upload in parallel; clients with nothing uploaded are left out.

    A client whose HeadObject still fails after retries (its bucket misconfigured, S3 answering 503) is
    reported in `failed` with the reason and does not stop the others; the caller must not treat it as
    "nothing new".
    """
    failed: dict[str, str] = {}

    def one(client: ClientConfig) -> UploadSeen | None:
        try:
            return head_upload(s3, client)
        except S3RequestFailed as error:
            log.warning("%s", error)
            failed[client.id] = str(error)
            return None

    if not clients:
        return PolledUploads([], {})
    with ThreadPoolExecutor(max_workers=min(max_workers, len(clients))) as pool:
        uploads = [seen for seen in pool.map(one, clients) if seen is not None]
    return PolledUploads(uploads, dict(sorted(failed.items())))


@dataclass(frozen=True)
class QueuedMessage:
    """One SQS message: its receipt handle and the uploads of known clients it announces."""

    receipt: str
    uploads: list[UploadSeen]


@dataclass(frozen=True)
class QueuedEvents:
    """What one read of the event queue found; the sensor deletes the messages it has settled."""

    received: list[QueuedMessage]

    @property
    def uploads(self) -> list[UploadSeen]:
        return [u for m in self.received for u in m.uploads]

    @property
    def messages(self) -> int:
        return len(self.received)


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
    visibility_timeout: int = 120,
) -> QueuedEvents:
    """Receive up to `max_messages` from the queue in batches of 10, with parallel readers.

    Messages are not deleted here: they stay hidden for `visibility_timeout` seconds and come back unless
    the caller deletes them (`delete_events`) once its decision is safe, so a crash re-delivers them.
    """
    clients_by_place = {(c.bucket, c.key): c for c in clients}
    batches = max(1, -(-max_messages // 10))

    def reader(_: int) -> list[dict]:
        received: list[dict] = []
        for _ in range(-(-batches // readers)):
            response = sqs.receive_message(
                QueueUrl=queue_url,
                MaxNumberOfMessages=10,
                WaitTimeSeconds=0,
                VisibilityTimeout=visibility_timeout,
            )
            messages = response.get("Messages", [])
            if not messages:
                break
            received.extend(messages)
        return received

    with ThreadPoolExecutor(max_workers=readers) as pool:
        messages = [m for batch in pool.map(reader, range(readers)) for m in batch]
    return QueuedEvents(
        [
            QueuedMessage(m["ReceiptHandle"], parse_s3_event(m.get("Body", ""), clients_by_place))
            for m in messages
        ]
    )


def delete_events(sqs: Any, queue_url: str, receipts: Sequence[str], workers: int = 8) -> int:
    """Delete handled messages, 10 per call, in parallel; return how many could not be deleted.

    A failure is logged with counts, never raised: an undeleted message only comes back after its
    visibility timeout, and the sensor's cursor and run keys make a re-delivered event start nothing twice.
    """
    chunks = [receipts[i : i + 10] for i in range(0, len(receipts), 10)]

    def delete(chunk: Sequence[str]) -> int:
        entries = [{"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(chunk)]
        try:
            response = sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries)
        except (BotoCoreError, ClientError) as error:
            log.warning("DeleteMessageBatch of %d messages failed (%s)", len(chunk), _reason(error))
            return len(chunk)
        failed = response.get("Failed", [])
        if failed:
            codes = sorted({str(f.get("Code")) for f in failed})
            log.warning(
                "DeleteMessageBatch: %d of %d messages not deleted (%s)", len(failed), len(chunk), codes
            )
        return len(failed)

    if not chunks:
        return 0
    with ThreadPoolExecutor(max_workers=min(workers, len(chunks))) as pool:
        return sum(pool.map(delete, chunks))


def _reason(error: Exception) -> str:
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"HTTP {status} {error.response.get('Error', {}).get('Code')}"
    return type(error).__name__
