"""`sis_upload_sensor`: one run per new object version, per client (PRODUCT.md §7).

The cursor remembers, per client, the ETag of the last upload it requested a run for. New means "different
content", never "a later LastModified": S3 timestamps have one-second precision, so a timestamp cursor misses
a second upload in the same second (dagster #22892). The run key is `<client>:<version id>` (unversioned
buckets: ETag and time), so a replayed tick or a re-delivered event gives one run, and polling and events
agree on what is new. The same bytes uploaded again start no run: the import would be `unchanged`.

Modes: polling (HeadObject per client, in parallel) by default; events when `SIS_EVENTS_QUEUE_URL` names
an SQS queue that receives the buckets' S3 event notifications. In events mode the sensor still polls every
client once an hour, to catch notifications that were never delivered.
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
from sis_pipeline.s3 import UploadSeen, delete_events, poll_uploads, read_event_queue

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as UnresolvedAssetJob,
    )

CURSOR_VERSION = 1
RECONCILE_SECONDS = 3600


def load_cursor(raw: str | None) -> dict:
    if not raw:
        return {"v": CURSOR_VERSION, "seen": {}, "last_full_poll": 0.0}
    cursor = json.loads(raw)
    cursor.setdefault("seen", {})
    cursor.setdefault("last_full_poll", 0.0)
    return cursor


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
        receipts: list[str] = []

        if events.queue_url:
            queued = read_event_queue(events.client(), events.queue_url, clients.values())
            receipts = queued.receipts
            requests += plan_upload_runs(clients, queued.uploads, seen_tokens, "s3_event")
            context.log.info(
                f"read {queued.messages} event messages, {len(queued.uploads)} uploads of known clients"
            )
        if not events.queue_url or now - cursor["last_full_poll"] >= RECONCILE_SECONDS:
            uploads = poll_uploads(s3.get_client(), list(clients.values()))
            requests += plan_upload_runs(clients, uploads, seen_tokens, "poll")
            cursor["last_full_poll"] = now
            context.log.info(f"polled {len(clients)} clients, {len(uploads)} have an upload")

        # Forget clients that left the registry, so the cursor does not grow forever.
        cursor["seen"] = {k: v for k, v in seen_tokens.items() if k in clients}
        if receipts:
            # Safe to delete now: if this tick's result were lost, the run keys dedupe the re-poll.
            delete_events(events.client(), events.queue_url, receipts)
        new_cursor = json.dumps(cursor, sort_keys=True)
        if not requests:
            return SensorResult(skip_reason=SkipReason("no new uploads"), cursor=new_cursor)
        return SensorResult(run_requests=requests, cursor=new_cursor)

    return sis_upload_sensor
