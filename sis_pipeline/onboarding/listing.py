"""`clients list`: each client's bucket and settings, its last upload (S3 HeadObject) and last sync (warehouse).

The warehouse is optional here: when its module or tables are not there yet, the last sync shows "unknown"
instead of failing, so the listing works on a machine that only onboards schools.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sis_pipeline import aws_clients
from sis_pipeline.registry import ClientConfig, Registry

log = logging.getLogger(__name__)

#: HeadObject calls in flight at once; hundreds of schools list in seconds without throttling.
_PARALLEL_HEADS = 16
_HEADERS = ("ID", "NAME", "BUCKET", "KEY", "SYNC", "AUTO-SYNC", "LAST UPLOAD", "LAST SYNC")


@dataclass(frozen=True)
class ClientRow:
    client_id: str
    name: str
    bucket: str
    key: str
    sync: str
    auto_sync_enabled: bool
    last_upload: str
    last_sync: str


def last_upload(client: ClientConfig, s3_by_region: dict[str, Any]) -> str:
    """The object's LastModified (UTC), `none` when there is no object (or bucket) yet, or the S3 error code."""
    s3 = s3_by_region[client.region]
    try:
        head = s3.head_object(Bucket=client.bucket, Key=client.key)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "error"))
        if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):  # HEAD has no body: a bare 404
            return "none"
        return f"error ({code})"
    except BotoCoreError as exc:
        return f"error ({type(exc).__name__})"
    return head["LastModified"].strftime("%Y-%m-%d %H:%M UTC")


def _open_warehouse() -> Any | None:
    try:
        from sis_pipeline.warehouse import Warehouse  # written separately; optional for this command
    except ImportError:
        return None
    try:
        return Warehouse()
    except Exception as exc:  # no database, no tables yet: the listing still works
        log.debug("warehouse unavailable for clients list: %s", type(exc).__name__)
        return None


def last_sync(warehouse: Any | None, client_id: str) -> str:
    """`<status> <finished_at>` of the newest sync log row, `never`, or `unknown` without a warehouse."""
    if warehouse is None:
        return "unknown"
    try:
        frame = warehouse.sync_log(client_id, limit=1)
    except Exception as exc:  # e.g. tables not migrated yet
        log.debug("sync log unavailable for client %s: %s", client_id, type(exc).__name__)
        return "unknown"
    if frame is None or len(frame) == 0:
        return "never"
    newest = frame.iloc[0]
    finished = newest.get("finished_at")
    when = "" if finished is None or finished != finished else f" {str(finished)[:16]}"  # NaN != NaN
    return f"{newest.get('status', '?')}{when}"


def client_rows(registry: Registry) -> list[ClientRow]:
    """One row per client, in registry order; S3 heads run in parallel."""
    clients = list(registry.values())
    s3_by_region = {region: aws_clients.s3_client(region) for region in {c.region for c in clients}}
    with ThreadPoolExecutor(max_workers=_PARALLEL_HEADS) as pool:
        uploads = list(pool.map(lambda c: last_upload(c, s3_by_region), clients))
    warehouse = _open_warehouse() if clients else None
    try:
        return [
            ClientRow(
                c.id, c.name, c.bucket, c.key, c.sync, c.auto_sync_enabled, upload, last_sync(warehouse, c.id)
            )
            for c, upload in zip(clients, uploads, strict=True)
        ]
    finally:
        if warehouse is not None and hasattr(warehouse, "dispose"):
            warehouse.dispose()  # close the pool: a CLI run should not leave connections behind


def render_table(rows: list[ClientRow]) -> str:
    """A plain fixed-width table (one line per client) that reads well in a terminal and greps well."""
    if not rows:
        return "no clients in the registry"
    cells = [
        (
            r.client_id,
            r.name,
            r.bucket,
            r.key,
            r.sync,
            "on" if r.auto_sync_enabled else "off",
            r.last_upload,
            r.last_sync,
        )
        for r in rows
    ]
    widths = [max(len(str(v)) for v in column) for column in zip(_HEADERS, *cells, strict=True)]
    lines = [
        "  ".join(str(v).ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        for row in [_HEADERS, *cells]
    ]
    return "\n".join(lines)
