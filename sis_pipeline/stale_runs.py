"""Runs of `sis-pipeline sync` whose process died are marked failed instead of staying "started" forever.

`sync` executes runs in its own process. If that process is killed (SIGKILL, out of memory, a reboot) the
warehouse transaction rolls back, but the run stays STARTED in the Dagster instance: the UI shows it as in
progress for ever, and under the run queue's one-run-per-client limit (dagster.yaml) it would hold that
client's queued runs back. Runs launched by the daemon are watched by Dagster's own run monitoring; these
are not, so every `sync` first fails the STARTED runs of earlier `sync` processes on this host that are gone.
Each such run carries the host and process id that executed it (`PID_TAG`, `HOST_TAG`).
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

TRIGGER_TAG = "sis/trigger"
PID_TAG = "sis/pid"
HOST_TAG = "sis/host"


def run_tags() -> dict[str, str]:
    """Tags naming the process executing a `sync` run (added to each run it starts)."""
    return {TRIGGER_TAG: "cli", PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process holds that id now: not ours to judge, so leave the run alone
    return True


def fail_dead_cli_runs(instance) -> list[str]:
    """Mark failed every STARTED `sync` run of this host whose process no longer exists; return their ids."""
    from dagster import DagsterRunStatus, RunsFilter

    host = socket.gethostname()
    records = instance.get_run_records(
        RunsFilter(
            statuses=[DagsterRunStatus.STARTING, DagsterRunStatus.STARTED],
            tags={TRIGGER_TAG: "cli", HOST_TAG: host},
        )
    )
    failed = []
    for record in records:
        run = record.dagster_run
        pid = run.tags.get(PID_TAG, "")
        if not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
            continue
        instance.report_run_failed(
            run,
            message=f"the `sis-pipeline sync` process {pid} on {host} that executed this run is gone "
            "(killed or crashed); its warehouse transaction was rolled back, nothing of it was applied",
        )
        failed.append(run.run_id)
        log.warning(
            "run %s of client %s: its process %s is gone; marked failed",
            run.run_id,
            run.tags.get("dagster/partition", "?"),
            pid,
        )
    return failed
