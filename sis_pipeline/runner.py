"""`sis-pipeline sync` and `sis-pipeline log`: the import graph run now, as real Dagster runs.

Runs execute in this process (or in worker processes for many clients) against the Dagster instance under
`DAGSTER_HOME`, so they appear in the UI exactly like runs launched there. The outcome of each client is read
back from the warehouse's sync log, which is what the exit code is decided on (PRODUCT.md §8).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX
    fcntl = None

from sis_pipeline import settings, stale_runs
from sis_pipeline.cli import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE
from sis_pipeline.registry import load_registry

OK_STATUSES = {"applied", "unchanged", "preview"}
LOG_COLUMNS = [
    "sync_id",
    "client_id",
    "status",
    "finished_at",
    "rows_total",
    "rows_valid",
    "rows_rejected",
    "inserted",
    "updated",
    "unchanged_rows",
    "reactivated",
    "deprovisioned",
    "deleted",
    "message",
]


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to `<data>/dagster_home`, with the project's instance config in it."""
    home = Path(os.environ.get("DAGSTER_HOME") or settings.data_dir() / "dagster_home").resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    config = home / "dagster.yaml"
    if not config.exists():
        with resources.as_file(resources.files("sis_pipeline") / "instance" / "dagster.yaml") as source:
            shutil.copyfile(source, config)
    return home


@dataclass(frozen=True)
class ClientRun:
    client_id: str
    run_id: str
    success: bool
    status: str  # the sync-log status of this run, or "failed" when the run wrote none
    message: str


_INSTANCE = None
_JOBS: dict[frozenset, object] = {}  # job subsets by asset selection, built once per process


def _instance():
    """This process's Dagster instance (under DAGSTER_HOME), opened once: workers run many clients."""
    global _INSTANCE
    if _INSTANCE is None:
        from dagster import DagsterInstance

        with _first_open_lock():
            _INSTANCE = DagsterInstance.get()
    return _INSTANCE


@contextmanager
def _first_open_lock() -> Iterator[None]:
    """Serialise opening the instance between processes. The first open of a new DAGSTER_HOME creates its
    SQLite storage; two commands started at once (two operators, or `sync` beside `demo`) would both create
    it and one would fail ("table alembic_version already exists"). An exclusive lock on a file in
    DAGSTER_HOME, held only while opening; none where the platform has no `fcntl`."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or fcntl is None:
        yield
        return
    Path(home).mkdir(parents=True, exist_ok=True)
    with open(Path(home) / ".sis-pipeline-open.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _forget_instance_after_fork() -> None:
    # A worker process opens its own instance: it must not share the parent's storage connections.
    global _INSTANCE
    _INSTANCE = None


os.register_at_fork(after_in_child=_forget_instance_after_fork)


def run_client(
    client_id: str, *, force: bool, override_guard: bool, dry_run: bool, version_id: str | None
) -> ClientRun:
    """Execute one client's import as a Dagster run in this process; return its sync-log outcome."""
    from sis_pipeline.assets import CLIENT_TAG, selection_for
    from sis_pipeline.definitions import defs, registry

    client = registry[client_id]
    selection = frozenset(selection_for(client, preview=dry_run))
    if selection not in _JOBS:
        _JOBS[selection] = defs.resolve_job_def("sis_import_job").get_subset(asset_selection=set(selection))
    config = {"force": force, "override_guard": override_guard, "dry_run": dry_run}
    if version_id:
        config["version_id"] = version_id
    result = _JOBS[selection].execute_in_process(
        instance=_instance(),
        partition_key=client_id,
        run_config={
            "ops": {"sis_import": {"config": config}},
            # The console shows warnings and errors only; every event is still in the instance's log.
            "loggers": {"console": {"config": {"log_level": "WARNING"}}},
        },
        tags={CLIENT_TAG: client_id, **stale_runs.run_tags()},
        raise_on_error=False,
    )
    row = _log_row_for_run(client_id, result.run_id)
    if row is None:
        failure = next((e for e in result.all_events if e.is_failure), None)
        message = failure.message if failure is not None and failure.message else "run failed before logging"
        return ClientRun(client_id, result.run_id, result.success, "failed", message)
    return ClientRun(client_id, result.run_id, result.success, str(row["status"]), str(row["message"] or ""))


def _warehouse():
    from sis_pipeline.resources import WarehouseResource

    return WarehouseResource(url=settings.warehouse_url()).get()


def _log_row_for_run(client_id: str, run_id: str):
    log = _warehouse().sync_log(client_id, limit=20)
    rows = log[log["run_id"] == run_id]
    return rows.iloc[0] if len(rows) else None


def _run_client_in_worker(kwargs: dict) -> ClientRun:
    return run_client(**kwargs)


def run_clients(
    client_ids: Sequence[str],
    *,
    force: bool = False,
    override_guard: bool = False,
    dry_run: bool = False,
    version_id: str | None = None,
    workers: int = 1,
    out=sys.stdout,
) -> list[ClientRun]:
    """Run each client's import; many clients run in worker processes, each a separate Dagster run."""
    ensure_dagster_home()
    _warehouse()  # migrate once, before workers race to do it
    stale_runs.fail_dead_cli_runs(_instance())
    options = {"force": force, "override_guard": override_guard, "dry_run": dry_run, "version_id": version_id}
    results: list[ClientRun] = []
    total = len(client_ids)

    def report(done: ClientRun) -> None:
        results.append(done)
        print(f"[{len(results)}/{total}] client {done.client_id}: {done.status}", file=out, flush=True)

    if workers <= 1 or total <= 1:
        for client_id in client_ids:
            report(run_client(client_id, **options))
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(_run_client_in_worker, {"client_id": c, **options}) for c in client_ids]
            for future in as_completed(futures):
                report(future.result())
    order = {c: i for i, c in enumerate(client_ids)}
    return sorted(results, key=lambda r: order[r.client_id])


def print_log(rows, out=sys.stdout) -> None:
    """The sync-log rows as an aligned text table."""
    if rows is None or not len(rows):
        print("(no sync log rows)", file=out)
        return
    columns = [c for c in LOG_COLUMNS if c in rows.columns]
    rows = rows.sort_values("sync_id")  # oldest first, like a log
    table = rows[columns].astype(object).where(rows[columns].notna(), "")
    print(table.to_string(index=False, max_colwidth=70), file=out)


def _selected_clients(args: argparse.Namespace) -> list[str] | None:
    registry = load_registry()
    if args.all:
        return list(registry)
    unknown = [c for c in args.clients if c not in registry]
    if unknown:
        print(
            f"sis-pipeline sync: unknown client(s): {', '.join(unknown)} (see {registry.source})",
            file=sys.stderr,
        )
        return None
    return list(dict.fromkeys(args.clients))


def run_sync_command(args: argparse.Namespace) -> int:
    clients = _selected_clients(args)
    if clients is None:
        return EXIT_USAGE
    if args.version_id and len(clients) != 1:
        print(
            "sis-pipeline sync: --version-id replays one client's file; name exactly one --client",
            file=sys.stderr,
        )
        return EXIT_USAGE
    if not clients:
        print("sis-pipeline sync: the registry has no clients", file=sys.stderr)
        return EXIT_OK
    results = run_clients(
        clients,
        force=args.force,
        override_guard=args.override_guard,
        dry_run=args.dry_run,
        version_id=args.version_id,
        workers=getattr(args, "workers", 1) or 1,
    )
    print_sync_results(results)
    return EXIT_OK if all(r.status in OK_STATUSES for r in results) else EXIT_PROBLEM


def print_sync_results(results: Iterable[ClientRun], out=sys.stdout) -> None:
    results = list(results)
    log = _warehouse().sync_log(None, limit=max(50, 5 * len(results)))
    run_ids = {r.run_id for r in results}
    print("", file=out)
    print_log(log[log["run_id"].isin(run_ids)].sort_values("sync_id"), out=out)
    for r in results:
        if r.status not in OK_STATUSES:
            print(f"client {r.client_id}: {r.status}: {r.message} (run {r.run_id})", file=out)


def run_log_command(args: argparse.Namespace) -> int:
    from sis_pipeline.warehouse import Warehouse

    with Warehouse(settings.warehouse_url()) as warehouse:
        warehouse.upgrade()
        print_log(warehouse.sync_log(args.client, limit=args.limit))
    return EXIT_OK
