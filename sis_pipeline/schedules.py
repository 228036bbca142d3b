"""`sis_weekly_schedule` and `sis_daily_schedule` (PRODUCT.md §7).

A Dagster schedule has one cron and one time zone, but every client may have its own (`cron`, `timezone`).
So each schedule ticks every five minutes and, at each tick, starts a run for every client of its kind
whose own cron fell due since the previous tick, in the client's time zone (daylight saving included). The
run key `<schedule>:<client>:<due time>` makes a re-evaluated tick start nothing twice. Clients with
`auto_sync_enabled: false` get a preview run; `manual` and `on_upload` clients are never scheduled.
"""

from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    RunRequest,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

# The one place that iterates cron strings; Dagster's own iterator handles time zones and DST the way
# Dagster's schedules do.
from dagster._utils.schedules import cron_string_iterator

from sis_pipeline.assets import CLIENT_TAG, selection_for
from sis_pipeline.registry import ClientConfig, Registry
from sis_pipeline.resources import RegistryResource

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import (
        UnresolvedAssetJobDefinition as UnresolvedAssetJob,
    )

TICK_CRON = "*/5 * * * *"
TICK = timedelta(minutes=5)


def due_time(client: ClientConfig, window_start: datetime, window_end: datetime) -> datetime | None:
    """The client's latest cron time in (window_start, window_end], or None."""
    cron = client.schedule_cron
    if cron is None:
        return None
    due = None
    for fire in cron_string_iterator(window_start.timestamp() + 1, cron, client.timezone):
        if fire.timestamp() > window_end.timestamp():
            break
        due = fire
    return due


def scheduled_run_requests(name: str, mode: str, registry: Registry, tick: datetime) -> list[RunRequest]:
    requests = []
    for client in registry.by_sync(mode):
        due = due_time(client, tick - TICK, tick)
        if due is None:
            continue
        requests.append(
            RunRequest(
                run_key=f"{name}:{client.id}:{due.isoformat()}",
                partition_key=client.id,
                asset_selection=selection_for(client),
                tags={CLIENT_TAG: client.id, "sis/trigger": name, "sis/due": due.isoformat()},
            )
        )
    return requests


def build_schedule(name: str, mode: str, job: "JobDefinition | UnresolvedAssetJob"):
    default = "Saturday 23:00" if mode == "weekly" else "02:00"

    @schedule(
        name=name,
        cron_schedule=TICK_CRON,
        execution_timezone="UTC",
        job=job,
        default_status=DefaultScheduleStatus.STOPPED,
        description=f"Runs each `sync: {mode}` client when its own cron falls due (default {default} "
        "America/New_York), checked every 5 minutes. Unreviewed clients (auto_sync_enabled: false) get a "
        "preview.",
    )
    def _schedule(context: ScheduleEvaluationContext, registry: RegistryResource):
        requests = scheduled_run_requests(name, mode, registry.load(), context.scheduled_execution_time)
        return requests or SkipReason(f"no {mode} client is due")

    return _schedule
