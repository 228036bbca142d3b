"""The warehouse: applies a sync plan in one locked transaction and keeps the sync log (PRODUCT.md §5–6)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import sqlalchemy as sa

from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile.result import REJECTED_COLUMNS, MappedFile, ValidatedFile
from sis_pipeline.sync_plan import SyncPlan, build_sync_plan
from sis_pipeline.warehouse import migrate
from sis_pipeline.warehouse.bulk import writer_for
from sis_pipeline.warehouse.engine import create_warehouse_engine, read_transaction, write_transaction
from sis_pipeline.warehouse.tables import SYNC_STATUSES, sis_rejected_rows, sis_sync_log, subscribers

log = logging.getLogger(__name__)

COUNT_NAMES = ("inserted", "updated", "unchanged_rows", "reactivated", "deprovisioned", "deleted", "missing")
#: Statuses whose log row comes with the file's rejected rows (see docs/WAREHOUSE.md).
STATUSES_WITH_REJECTED_ROWS = ("applied", "preview", "ignored")


def _now() -> datetime:
    return datetime.now(UTC)


def _zero_counts() -> dict[str, int]:
    return dict.fromkeys(COUNT_NAMES, 0)


@dataclass
class SyncOutcome:
    """What one sync of one client did, as recorded in its sync log row."""

    sync_id: int
    client_id: str
    status: str
    counts: dict[str, int]
    message: str
    plan: SyncPlan | None = None


@dataclass
class Snapshot:
    """One client's stored rows and its last applied sync, read in one transaction (`Warehouse.snapshot`)."""

    client_id: str
    basis: int | None  # sync_id of the last applied sync: a plan is current while this is unchanged
    last_sha256: str | None
    current: pd.DataFrame  # `sync_plan.CURRENT_COLUMNS`


class Warehouse:
    """The subscriber warehouse at one SQLAlchemy URL (SQLite or PostgreSQL)."""

    def __init__(self, url: str | None = None):
        self.engine = create_warehouse_engine(url)
        self.url = self.engine.url

    def dispose(self) -> None:
        """Close pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Warehouse:
        return self

    def __exit__(self, *exc_info) -> None:
        self.dispose()

    # Schema --------------------------------------------------------------------------------------------
    def upgrade(self) -> None:
        """Create or upgrade the tables with the packaged Alembic migrations (idempotent)."""
        migrate.upgrade(self.engine)

    # Reads ---------------------------------------------------------------------------------------------
    def current_subscribers(self, client_id: str) -> pd.DataFrame:
        """The client's stored subscribers (`sync_plan.CURRENT_COLUMNS`)."""
        with read_transaction(self.engine) as conn:
            return writer_for(conn).read_subscribers(client_id)

    def subscriber_statuses(self, client_id: str) -> pd.DataFrame:
        """The client's stored subscribers as `subscriber_key` and `status` only (a cheap post-write check)."""
        with read_transaction(self.engine) as conn:
            return writer_for(conn).read_subscribers(client_id, ("subscriber_key", "status"))

    def status_summary(self, client_id: str) -> tuple[int, pd.DataFrame]:
        """The client's number of active subscribers, and its subscribers that are not active as
        `subscriber_key` and `status`, from one snapshot: a post-write check that does not read every
        active row back."""
        with read_transaction(self.engine) as conn:
            active = conn.execute(
                sa.select(sa.func.count())
                .select_from(subscribers)
                .where(subscribers.c.client_id == client_id, subscribers.c.status == "active")
            ).scalar_one()
            inactive = writer_for(conn).read_subscribers(
                client_id, ("subscriber_key", "status"), inactive_only=True
            )
        return int(active), inactive

    def statuses_of(self, client_id: str, keys: pd.Series, chunk: int = 500) -> pd.DataFrame:
        """`subscriber_key` and `status` of those of `keys` that are stored (for a few keys)."""
        values = pd.Series(keys, dtype="string").dropna().unique().tolist()
        rows: list = []
        with read_transaction(self.engine) as conn:
            for start in range(0, len(values), chunk):
                query = sa.select(subscribers.c.subscriber_key, subscribers.c.status).where(
                    subscribers.c.client_id == client_id,
                    subscribers.c.subscriber_key.in_(values[start : start + chunk]),
                )
                rows.extend(conn.execute(query).fetchall())
        return pd.DataFrame(rows, columns=["subscriber_key", "status"])

    def current_memberships(self, client_id: str) -> pd.DataFrame:
        """The client's stored community memberships (for tests and tools: a sync never reads them)."""
        with read_transaction(self.engine) as conn:
            return writer_for(conn).read_memberships(client_id)

    def snapshot(self, client_id: str) -> Snapshot:
        """The client's rows and last applied sync from one read transaction: what `preview` plans against.

        Taken on its own so a caller can read it while it validates the file (the import does, on a second
        core); a plan made from it is as current as one read later, because `apply` re-plans when a sync
        was applied to the client after the snapshot's `basis`.
        """
        with read_transaction(self.engine) as conn:
            basis, last_sha = _last_applied(conn, client_id)
            current = writer_for(conn).read_snapshot_rows(client_id)
        return Snapshot(client_id, basis, last_sha, current)

    def preview(
        self,
        mapped: MappedFile,
        client: ClientConfig,
        *,
        override_guard: bool = False,
        file: FileVersion | None = None,
        snapshot: Snapshot | None = None,
    ) -> SyncPlan:
        """The plan `apply` would carry out now, read from one snapshot (`snapshot`, or one read now);
        writes nothing.

        With `file`, a file equal to the last applied one does not count towards `missing_count` again.
        """
        _check_client(mapped, client)
        if snapshot is None:
            snapshot = self.snapshot(client.id)
        elif snapshot.client_id != client.id:
            raise ValueError(f"snapshot of client {snapshot.client_id} used to plan client {client.id}")
        same_file = file is not None and snapshot.last_sha256 == file.sha256
        plan = build_sync_plan(
            mapped,
            snapshot.current,
            client,
            override_guard=override_guard,
            count_missing=not same_file,
        )
        plan.basis, plan.override_guard = snapshot.basis, override_guard
        return plan

    def sync_log(self, client_id: str | None = None, limit: int = 20) -> pd.DataFrame:
        """The most recent sync log rows, newest first."""
        query = sa.select(sis_sync_log).order_by(sis_sync_log.c.sync_id.desc()).limit(limit)
        if client_id is not None:
            query = query.where(sis_sync_log.c.client_id == client_id)
        with read_transaction(self.engine) as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(result.keys()))

    def rejected_rows(self, sync_id: int) -> pd.DataFrame:
        """The rejected rows recorded with one sync, by line number."""
        t = sis_rejected_rows
        query = (
            sa.select(t.c.line_number, t.c.column_name, t.c.reason_code, t.c.message)
            .where(t.c.sync_id == sync_id)
            .order_by(t.c.line_number, t.c.rejected_id)
        )
        with read_transaction(self.engine) as conn:
            result = conn.execute(query)
            return pd.DataFrame(result.fetchall(), columns=list(REJECTED_COLUMNS))

    def last_applied_sha256(self, client_id: str) -> str | None:
        """sha256 of the client's most recently applied file, or None."""
        with read_transaction(self.engine) as conn:
            return _last_applied_sha256(conn, client_id)

    # Writes --------------------------------------------------------------------------------------------
    def apply(
        self,
        *,
        client: ClientConfig,
        validated: ValidatedFile,
        mapped: MappedFile,
        file: FileVersion,
        run_id: str | None,
        force: bool = False,
        override_guard: bool = False,
        planned: SyncPlan | None = None,
    ) -> SyncOutcome:
        """Apply the file to the client's rows in one transaction under the client's lock.

        `planned` is a plan from `preview` of this same file; it is used as is when no sync was applied to
        the client since it was read (saving a second read of the client's rows), else planned again.

        Under the lock: an unchanged file (same sha256 as the last applied one) only logs `unchanged` unless
        `force`; a plan that trips the guard only logs `blocked` unless `override_guard`; otherwise every
        change, the `applied` log row and the rejected rows commit together. On any error nothing is kept,
        a `failed` row is logged in its own transaction and the error re-raises.
        """
        if validated.ignored:
            return self.record(
                client_id=client.id,
                status="ignored",
                file=file,
                validated=validated,
                run_id=run_id,
                message=validated.problem.message if validated.problem else "file ignored",
            )
        _check_client(mapped, client)
        started = _now()
        try:
            with write_transaction(self.engine, client.id) as conn:
                return self._apply_locked(
                    conn,
                    client,
                    validated,
                    mapped,
                    file,
                    run_id,
                    started,
                    force=force,
                    override_guard=override_guard,
                    planned=planned,
                )
        except Exception as exc:
            self._record_failure(client.id, file, validated, run_id, started, exc, force, override_guard)
            raise

    def _apply_locked(
        self,
        conn: sa.Connection,
        client: ClientConfig,
        validated: ValidatedFile,
        mapped: MappedFile,
        file: FileVersion,
        run_id: str | None,
        started: datetime,
        *,
        force: bool,
        override_guard: bool,
        planned: SyncPlan | None = None,
    ) -> SyncOutcome:
        common = dict(
            client_id=client.id, file=file, validated=validated, run_id=run_id, started=started, forced=force
        )
        basis, last_sha = _last_applied(conn, client.id)
        same_file = last_sha == file.sha256
        if same_file and not force:
            message = "file unchanged since the last applied sync; nothing written"
            sync_id = _insert_log(conn, status="unchanged", message=message, plan=None, **common)
            log.info("client %s: sync %s unchanged", client.id, sync_id)
            return SyncOutcome(sync_id, client.id, "unchanged", _zero_counts(), message)

        writer = writer_for(conn)
        reusable = (
            planned is not None
            and planned.basis == basis
            and planned.override_guard == override_guard
            and planned.missing_counted == (not same_file)
        )
        plan = (
            planned
            if reusable
            else build_sync_plan(
                mapped,
                writer.read_subscribers(client.id),
                client,
                override_guard=override_guard,
                # A forced re-apply of the same file changes nothing: it already counted towards missing_count.
                count_missing=not same_file,
            )
        )
        if plan.guard.blocked:
            message = (
                f"blocked by the mass-change guard: {plan.guard.reason}; nothing applied "
                "(re-run with the guard override to apply)"
            )
            sync_id = _insert_log(conn, status="blocked", message=message, plan=plan, **common)
            log.warning("client %s: sync %s blocked: %s", client.id, sync_id, plan.guard.reason)
            return SyncOutcome(sync_id, client.id, "blocked", plan.counts(), message, plan)

        message = plan.summary()
        if plan.guard.overridden:
            message = f"guard overridden ({plan.guard.reason}); {message}"
        sync_id = _insert_log(
            conn,
            status="applied",
            message=message,
            plan=plan,
            guard_overridden=plan.guard.overridden,
            **common,
        )
        now = _now()
        writer.upsert_subscribers(client.id, plan.upsert_frame(), sync_id, now)
        writer.update_absent(client.id, plan.absent_frame(), sync_id, now)
        writer.remove_memberships(client.id, plan.memberships_replace_keys)
        writer.add_memberships(client.id, plan.memberships_add)
        writer.insert_rejected(client.id, sync_id, validated.rejected)
        if writer.refresh_statistics(len(plan.inserts)):
            log.info(
                "client %s: sync %s: table statistics refreshed after %d inserts",
                client.id,
                sync_id,
                len(plan.inserts),
            )
        conn.execute(
            sis_sync_log.update().where(sis_sync_log.c.sync_id == sync_id).values(finished_at=_now())
        )
        log.info("client %s: sync %s applied: %s", client.id, sync_id, message)
        return SyncOutcome(sync_id, client.id, "applied", plan.counts(), message, plan)

    def record(
        self,
        *,
        client_id: str,
        status: str,
        file: FileVersion | None,
        validated: ValidatedFile | None,
        run_id: str | None,
        message: str,
        plan: SyncPlan | None = None,
    ) -> SyncOutcome:
        """Log a sync that wrote no subscribers (`preview`, `ignored`, `failed`, ...) in its own transaction.

        Counts are the plan's (what would happen) when a plan is given. Rejected rows are stored with
        `preview` and `ignored` rows.
        """
        if status not in SYNC_STATUSES:
            raise ValueError(f"unknown sync status {status!r}; expected one of {', '.join(SYNC_STATUSES)}")
        started = _now()
        with write_transaction(self.engine, client_id) as conn:
            sync_id = _insert_log(
                conn,
                client_id=client_id,
                status=status,
                file=file,
                validated=validated,
                run_id=run_id,
                started=started,
                message=message,
                plan=plan,
                guard_overridden=bool(plan and plan.guard.overridden),
            )
            if validated is not None and status in STATUSES_WITH_REJECTED_ROWS:
                writer_for(conn).insert_rejected(client_id, sync_id, validated.rejected)
        counts = plan.counts() if plan is not None else _zero_counts()
        return SyncOutcome(sync_id, client_id, status, counts, message, plan)

    def _record_failure(
        self,
        client_id: str,
        file: FileVersion | None,
        validated: ValidatedFile | None,
        run_id: str | None,
        started: datetime,
        exc: BaseException,
        forced: bool,
        override_guard: bool,
    ) -> None:
        # Only the exception's type: database messages can quote row values (personal data).
        cause = type(exc).__name__
        if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
            cause += f" ({type(exc.orig).__name__})"
        message = f"failed: {cause}; rolled back, nothing applied (details in the run's log)"
        try:
            with write_transaction(self.engine, client_id) as conn:
                _insert_log(
                    conn,
                    client_id=client_id,
                    status="failed",
                    file=file,
                    validated=validated,
                    run_id=run_id,
                    started=started,
                    message=message,
                    plan=None,
                    forced=forced,
                    guard_overridden=override_guard,
                )
        except Exception as record_error:
            # The type only, no traceback: a chained database error's text can quote row values.
            log.error(
                "client %s: could not record the failed sync (%s after %s)",
                client_id,
                type(record_error).__name__,
                cause,
            )


def _check_client(mapped: MappedFile, client: ClientConfig) -> None:
    if mapped.client_id != client.id:
        raise ValueError(f"mapped file is for client {mapped.client_id!r}, not {client.id!r}")


def _last_applied(conn: sa.Connection, client_id: str) -> tuple[int | None, str | None]:
    """(sync_id, sha256) of the client's most recently applied sync, or (None, None)."""
    t = sis_sync_log
    query = (
        sa.select(t.c.sync_id, t.c.sha256)
        .where(t.c.client_id == client_id, t.c.status == "applied")
        .order_by(t.c.sync_id.desc())
        .limit(1)
    )
    row = conn.execute(query).first()
    return (row.sync_id, row.sha256) if row is not None else (None, None)


def _last_applied_sha256(conn: sa.Connection, client_id: str) -> str | None:
    return _last_applied(conn, client_id)[1]


def _insert_log(
    conn: sa.Connection,
    *,
    client_id: str,
    status: str,
    file: FileVersion | None,
    validated: ValidatedFile | None,
    run_id: str | None,
    started: datetime,
    message: str,
    plan: SyncPlan | None,
    forced: bool = False,
    guard_overridden: bool = False,
) -> int:
    """Insert one sync log row and return its sync_id."""
    values: dict = dict(
        client_id=client_id,
        run_id=run_id,
        status=status,
        started_at=started,
        finished_at=_now(),
        message=message,
        forced=forced,
        guard_overridden=guard_overridden,
    )
    if file is not None:
        values.update(
            bucket=file.bucket,
            key=file.key,
            etag=file.etag,
            version_id=file.version_id,
            sha256=file.sha256,
            size=file.size,
        )
    if validated is not None:
        values.update(
            rows_total=validated.rows_total,
            rows_valid=validated.rows_valid,
            rows_rejected=validated.rows_rejected,
            rows_warned=validated.rows_warned,
        )
    if plan is not None:
        values.update(plan.counts(), **plan.membership_counts(), active_before=plan.guard.active_before)
    result = conn.execute(sis_sync_log.insert().values(**values))
    return int(result.inserted_primary_key[0])
