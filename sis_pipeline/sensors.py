"""`sis_upload_sensor`: one run per new object version, per client (PRODUCT.md §7).

The cursor remembers, per client, the ETag of the last upload it requested a run for. New means "different
content", never "a later LastModified": S3 timestamps have one-second precision, so a timestamp cursor misses
a second upload in the same second (dagster #22892). The run key is `<client>:<version id>` (unversioned
buckets: ETag and time), so a replayed tick or a re-delivered event gives one run, and polling and events
agree on what is new. The same bytes uploaded again start no run: the import would be `unchanged`.

Modes: polling (HeadObject per client, in parallel) by default; events when `SIS_EVENTS_QUEUE_URL` names
an SQS queue that receives the buckets' S3 event notifications. In events mode the sensor still polls every
client once an hour, to catch notifications that were never delivered.

Faults (docs/OPERATIONS.md): a tick never records a decision it did not make. A client whose HeadObject
fails keeps its cursor entry (and, in events mode, is polled again next tick); when every HeadObject fails
the tick fails, so Dagster keeps the stored cursor. An event message that started a run is not deleted in
that tick: it comes back after the queue's visibility timeout, when the tick that acted on it has been
recorded, and is deleted then; a tick that fails or is lost gets its messages back the same way. Events older
than one already acted on (by S3's sequencer) are stale re-deliveries and start nothing.
"""

import json
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dagster import (
    DefaultSensorStatus,
    JobDefinition,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)
from dagster_aws.s3 import S3Resource

from sis_pipeline.assets import CLIENT_TAG, selection_for
from sis_pipeline.registry import ClientConfig
from sis_pipeline.resources import EventQueueResource, RegistryResource
from sis_pipeline.s3 import (
    PolledUploads,
    QueuedEvents,
    S3RequestFailed,
    UploadSeen,
    delete_events,
    poll_uploads,
    read_event_queue,
)

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as UnresolvedAssetJob,
    )

CURSOR_VERSION = 1
RECONCILE_SECONDS = 3600


def load_cursor(raw: str | None) -> dict:
    """The cursor: `seen` (client -> ETag of the last upload a run was requested for), `last_full_poll`,
    `retry_poll` (clients whose last HeadObject failed) and `sequencer` (client -> S3 event sequencer of the
    last event acted on)."""
    cursor = json.loads(raw) if raw else {"v": CURSOR_VERSION}
    cursor.setdefault("seen", {})
    cursor.setdefault("last_full_poll", 0.0)
    cursor.setdefault("retry_poll", [])
    cursor.setdefault("sequencer", {})
    return cursor


def _sequencer_order(sequencer: str) -> tuple[int, str]:
    return UploadSeen(client_id="", bucket="", key="", etag=None, version_id=None, sequencer=sequencer).order


def fresh_events(queued: QueuedEvents, sequencers: dict[str, str]) -> list[UploadSeen]:
    """The queued uploads later than the last event acted on for their client; updates `sequencers`.

    SQS delivers at least once and S3 events arrive out of order, so an event already acted on, or one for
    an older version, can come after a newer one was acted on; it must not move the cursor back (that would
    hide the next upload of the older content). S3 gives each event of a key a sequencer that grows with
    time; events without one (not from S3) are kept.
    """
    fresh = []
    for upload in queued.uploads:
        last = sequencers.get(upload.client_id)
        if upload.sequencer and last and upload.order <= _sequencer_order(last):
            continue
        fresh.append(upload)
    for upload in fresh:
        last = sequencers.get(upload.client_id)
        if upload.sequencer and (not last or upload.order > _sequencer_order(last)):
            sequencers[upload.client_id] = upload.sequencer
    return fresh


def upload_run_request(client: ClientConfig, seen: UploadSeen, trigger: str) -> RunRequest:
    """A run for exactly this object version: full graph for `on_upload` clients, a preview otherwise."""
    full = client.sync == "on_upload" and client.auto_sync_enabled
    run_config: dict = {}
    if seen.version_id:
        # Pin the version that triggered the run, even if the school uploads again before it starts.
        run_config = {"ops": {"sis_import": {"config": {"version_id": seen.version_id}}}}
    return RunRequest(
        run_key=f"{client.id}:{seen.run_token}",
        partition_key=client.id,
        asset_selection=selection_for(client, preview=not full),
        run_config=run_config,
        tags={CLIENT_TAG: client.id, "sis/trigger": trigger, "sis/file_version": seen.run_token},
    )


def plan_upload_runs(
    clients: dict[str, ClientConfig], uploads: Sequence[UploadSeen], seen_tokens: dict[str, str], trigger: str
) -> list[RunRequest]:
    """Run requests for uploads whose token differs from the cursor; updates `seen_tokens` in place.

    When one client shows several versions in one batch (events), only the last one gets a run: the
    pipeline always imports a client's latest full file.
    """
    latest: dict[str, UploadSeen] = {}
    for upload in sorted(uploads, key=lambda u: u.order):
        latest[upload.client_id] = upload
    requests = []
    for client_id, upload in latest.items():
        client = clients.get(client_id)
        if client is None or seen_tokens.get(client_id) == upload.content_token:
            continue
        seen_tokens[client_id] = upload.content_token
        requests.append(upload_run_request(client, upload, trigger))
    return requests


def settled_receipts(queued: QueuedEvents, requests: Sequence[RunRequest]) -> list[str]:
    """Receipts of the messages that are safe to delete now: those that started no run in this tick.

    A message that started a run stays on the queue until it comes back after the visibility timeout: by
    then Dagster has recorded this tick (cursor and runs), so it is settled and deleted. If the tick failed
    or its result was lost, the message comes back to a cursor without it and starts the run again (the
    same run key, so never twice).
    """
    requested = {r.run_key for r in requests}
    return [
        m.receipt
        for m in queued.received
        if not any(f"{u.client_id}:{u.run_token}" in requested for u in m.uploads)
    ]


def _check_full_poll(polled: PolledUploads, polled_clients: int) -> None:
    """Fail the tick when every client's HeadObject failed: S3 is down, not one bucket misconfigured."""
    if polled_clients and len(polled.failed) == polled_clients:
        first = next(iter(polled.failed.values()))
        raise S3RequestFailed(
            f"HeadObject failed for all {polled_clients} clients polled, e.g. {first}; the cursor is not "
            "advanced and the next tick polls again",
            client_id=next(iter(polled.failed)),
            operation="HeadObject",
            reason="all clients failed",
        )


def build_upload_sensor(job: "JobDefinition | UnresolvedAssetJob"):
    @sensor(
        name="sis_upload_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=DefaultSensorStatus.STOPPED,
        description="Requests one run per new upload per client: the full graph for `sync: on_upload` "
        "clients, a preview (everything but subscribers_table) for the rest. Polls with HeadObject, or "
        "reads S3 event notifications from SQS when SIS_EVENTS_QUEUE_URL is set.",
    )
    def sis_upload_sensor(
        context: SensorEvaluationContext,
        s3: S3Resource,
        registry: RegistryResource,
        events: EventQueueResource,
    ):
        cursor = load_cursor(context.cursor)
        clients = dict(registry.load())
        seen_tokens: dict[str, str] = cursor["seen"]
        now = time.time()
        requests: list[RunRequest] = []
        queued = QueuedEvents([])

        if events.queue_url:
            queued = read_event_queue(
                events.client(),
                events.queue_url,
                clients.values(),
                visibility_timeout=events.visibility_timeout_seconds,
            )
            uploads = fresh_events(queued, cursor["sequencer"])
            requests += plan_upload_runs(clients, uploads, seen_tokens, "s3_event")
            context.log.info(
                f"read {queued.messages} event messages, {len(queued.uploads)} uploads of known clients"
            )
        full_poll = not events.queue_url or now - cursor["last_full_poll"] >= RECONCILE_SECONDS
        to_poll = (
            list(clients.values())
            if full_poll
            else [clients[c] for c in cursor["retry_poll"] if c in clients]
        )
        if to_poll:
            polled = poll_uploads(s3.get_client(), to_poll)
            if full_poll:
                _check_full_poll(polled, len(to_poll))
            requests += plan_upload_runs(clients, polled.uploads, seen_tokens, "poll")
            if full_poll:
                cursor["last_full_poll"] = now
            cursor["retry_poll"] = sorted(polled.failed)
            context.log.info(f"polled {len(to_poll)} clients, {len(polled.uploads)} have an upload")
            if polled.failed:
                failed = list(polled.failed)
                named = ", ".join(failed[:20]) + (f" and {len(failed) - 20} more" if len(failed) > 20 else "")
                context.log.warning(
                    f"HeadObject failed for {len(failed)} of {len(to_poll)} clients ({named}); their cursor "
                    "entries are kept and the next tick polls them again"
                )

        # Forget clients that left the registry, so the cursor does not grow forever.
        cursor["seen"] = {k: v for k, v in seen_tokens.items() if k in clients}
        cursor["sequencer"] = {k: v for k, v in cursor["sequencer"].items() if k in clients}
        settled = settled_receipts(queued, requests)
        if settled:
            not_deleted = delete_events(events.client(), events.queue_url, settled)
            if not_deleted:
                context.log.warning(
                    f"{not_deleted} of {len(settled)} handled event messages could not be deleted; they "
                    "come back after the visibility timeout and start nothing twice"
                )
        new_cursor = json.dumps(cursor, sort_keys=True)
        if not requests:
            return SensorResult(skip_reason=SkipReason("no new uploads"), cursor=new_cursor)
        return SensorResult(run_requests=requests, cursor=new_cursor)

    return sis_upload_sensor
