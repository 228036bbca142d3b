"""The five partitioned assets of one client's import, and their checks (PRODUCT.md §7).

They are computed by one multi-asset step, `sis_import`: bytes -> validated -> mapped -> plan -> warehouse.
One step rather than five means the 1M-row frames pass between stages in memory instead of being pickled or
written to Parquet and read back (about a second per hand-off at that size, see docs/ARCHITECTURE.md). The
step can be subset: a *preview* selects everything but `subscribers_table`. When `raw_sis_file` is not
selected (e.g. only `subscribers_table` is materialised from the UI), the step replays the exact bytes of the
partition's last `raw_sis_file` materialisation from the archive, so it applies what was previewed.
"""

import time
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime

import pyarrow as pa
from dagster import (
    AssetCheckKey,
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetRecordsFilter,
    AssetSpec,
    Config,
    Failure,
    MaterializeResult,
    MetadataValue,
    PartitionsDefinition,
    multi_asset,
)
from dagster_aws.s3 import S3Resource
from pydantic import Field

from sis_pipeline import metadata as md
from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig
from sis_pipeline.resources import ArchiveResource, RegistryResource, WarehouseResource
from sis_pipeline.s3 import S3RequestFailed, UploadNotFound, UploadSeen, fetch_upload, head_upload
from sis_pipeline.sisfile import map_file, validate_file
from sis_pipeline.sisfile.result import ValidatedFile
from sis_pipeline.sync_plan import KeyLookup
from sis_pipeline.warehouse.bulk import release_malloc_free_memory

RAW_SIS_FILE = AssetKey("raw_sis_file")
VALIDATED_SIS_FRAME = AssetKey("validated_sis_frame")
MAPPED_SUBSCRIBERS = AssetKey("mapped_subscribers")
DEPROVISION_SET = AssetKey("deprovision_set")
SUBSCRIBERS_TABLE = AssetKey("subscribers_table")

ALL_ASSETS = (RAW_SIS_FILE, VALIDATED_SIS_FRAME, MAPPED_SUBSCRIBERS, DEPROVISION_SET, SUBSCRIBERS_TABLE)
PREVIEW_ASSETS = ALL_ASSETS[:-1]

CHECK_FILE_ACCEPTED = "file_accepted"
CHECK_REJECTED_ROW_RATE = "rejected_row_rate"
CHECK_GUARD = "mass_change_guard"
CHECK_WAREHOUSE_MATCHES = "warehouse_matches_file"

GROUP = "sis_import"
WAREHOUSE_POOL = "sis_warehouse_writer"
CLIENT_TAG = "sis/client"


class SisImportConfig(Config):
    """Run config for manual re-runs and backfills (PRODUCT.md §7)."""

    force: bool = Field(
        default=False, description="Re-apply a file whose sha256 equals the last applied one."
    )
    override_guard: bool = Field(default=False, description="Apply even when the mass-change guard trips.")
    version_id: str | None = Field(default=None, description="Replay this S3 object version of the upload.")
    dry_run: bool = Field(default=False, description="Preview only: compute everything, write nothing.")
    warn_rejected_share: float = Field(
        default=0.02, ge=0, le=1, description="The rejected-row check warns above this share of rows."
    )


@dataclass
class _File:
    version: FileVersion
    data: bytes
    archived_at: str


def _specs() -> list[AssetSpec]:
    kinds = {"python", "s3"}
    return [
        AssetSpec(
            RAW_SIS_FILE,
            description="The exact object version read from the client's bucket, archived by sha256.",
            group_name=GROUP,
            kinds=kinds,
            skippable=True,
        ),
        AssetSpec(
            VALIDATED_SIS_FRAME,
            deps=[RAW_SIS_FILE],
            description="The file parsed and validated against the file contract: valid rows, rejected rows "
            "with line numbers and reasons, warnings.",
            group_name=GROUP,
            kinds={"pandas", "pandera"},
            skippable=True,
        ),
        AssetSpec(
            MAPPED_SUBSCRIBERS,
            deps=[VALIDATED_SIS_FRAME],
            description="One row per subscriber with its key, and community memberships, per the client's "
            "mapping rules.",
            group_name=GROUP,
            kinds={"pandas"},
            skippable=True,
        ),
        AssetSpec(
            DEPROVISION_SET,
            deps=[MAPPED_SUBSCRIBERS],
            description="The sync plan: inserts, updates, reactivations, deprovisions, deletes, and the "
            "mass-change guard's verdict — what the write would change.",
            group_name=GROUP,
            kinds={"pandas"},
            skippable=True,
        ),
        AssetSpec(
            SUBSCRIBERS_TABLE,
            deps=[DEPROVISION_SET],
            description="The client's subscribers and communities in the warehouse, written in one "
            "transaction, with a sync-log row.",
            group_name=GROUP,
            kinds={"sqlalchemy"},
            skippable=True,
        ),
    ]


def _check_specs() -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            CHECK_FILE_ACCEPTED,
            asset=VALIDATED_SIS_FRAME,
            blocking=True,
            description="The file is readable and has its header, data and required columns; an ignored "
            "file stops the write and is logged `ignored`.",
        ),
        AssetCheckSpec(
            CHECK_REJECTED_ROW_RATE,
            asset=VALIDATED_SIS_FRAME,
            description="Warns when the share of rejected rows is above `warn_rejected_share`.",
        ),
        AssetCheckSpec(
            CHECK_GUARD,
            asset=DEPROVISION_SET,
            blocking=True,
            description="Deprovisions + deletes stay within the client's guard; a tripped guard stops the "
            "write and is logged `blocked` unless the run overrides it.",
        ),
        AssetCheckSpec(
            CHECK_WAREHOUSE_MATCHES,
            asset=SUBSCRIBERS_TABLE,
            description="After the write, every subscriber in the file has the status the file implies and "
            "the client's active count is what the plan said.",
        ),
    ]


def _read_file(
    context: AssetExecutionContext,
    client: ClientConfig,
    config: SisImportConfig,
    s3_client,
    archive,
    seen: UploadSeen | None = None,
) -> _File:
    """The bytes this run works on: freshly read from S3 (the version `seen` when the run has already
    looked), or replayed from the archive."""
    if RAW_SIS_FILE in context.selected_asset_keys:
        fetched = fetch_upload(s3_client, client, config.version_id, seen)
        archived_at = archive.put(client.id, fetched.version.sha256, fetched.data)
        return _File(fetched.version, fetched.data, archived_at)
    records = context.instance.fetch_materializations(
        AssetRecordsFilter(asset_key=RAW_SIS_FILE, asset_partitions=[client.id]), limit=1
    ).records
    if not records:
        raise Failure(
            f"client {client.id}: raw_sis_file has never been materialised for this partition; "
            "select raw_sis_file too"
        )
    meta = records[0].asset_materialization.metadata
    sha256 = meta["sha256"].value
    data = archive.get(client.id, sha256)
    version = FileVersion(
        bucket=meta["bucket"].value,
        key=meta["key"].value,
        etag=meta["etag"].value or None,
        version_id=None if str(meta["version_id"].value).startswith("(") else meta["version_id"].value,
        sha256=sha256,
        size=len(data),
    )
    return _File(version, data, archive.location(client.id, sha256))


def _same_as_last_applied(store, client: ClientConfig, seen: UploadSeen | None) -> FileVersion | None:
    """The upload as a FileVersion when it is exactly the object version (or, unversioned, the ETag) of
    the client's last applied sync: S3 versions are immutable and the ETag is a digest of the content."""
    if seen is None:
        return None
    log = store.sync_log(client.id, limit=20)
    applied = log[log["status"] == "applied"]
    if not len(applied):
        return None
    last = applied.iloc[0]
    if seen.version_id:
        same = last["version_id"] == seen.version_id
    else:
        same = bool(seen.etag) and str(last["etag"] or "").strip('"') == seen.etag.strip('"')
    if not same:
        return None
    modified = datetime.fromisoformat(seen.last_modified) if seen.last_modified else None
    return FileVersion(
        bucket=seen.bucket,
        key=seen.key,
        etag=seen.etag,
        version_id=seen.version_id,
        sha256=str(last["sha256"]),
        size=int(seen.size or 0),
        last_modified=modified,
    )


def _file_checks(validated: ValidatedFile, config: SisImportConfig) -> list[AssetCheckResult]:
    accepted = AssetCheckResult(
        check_name=CHECK_FILE_ACCEPTED,
        asset_key=VALIDATED_SIS_FRAME,
        passed=not validated.ignored,
        severity=AssetCheckSeverity.ERROR,
        metadata={"reason": validated.problem.message if validated.problem else "accepted"},
    )
    share = validated.rows_rejected / validated.rows_total if validated.rows_total else 0.0
    rate = AssetCheckResult(
        check_name=CHECK_REJECTED_ROW_RATE,
        asset_key=VALIDATED_SIS_FRAME,
        passed=share <= config.warn_rejected_share,
        severity=AssetCheckSeverity.WARN,
        metadata={
            "rejected_share": MetadataValue.float(round(share, 6)),
            "threshold": MetadataValue.float(config.warn_rejected_share),
            "rejected_by_reason": MetadataValue.json(validated.rejected_by_reason()),
        },
    )
    return [accepted, rate]


def _warehouse_check(warehouse, client_id: str, mapped, expected_active: int | None) -> AssetCheckResult:
    """Every file subscriber has the status the file implies; the active count is what the plan said.

    Reads the client's active count and only its subscribers that are not active: a file subscriber among
    them is wrong, and with the active count as planned every other one is active. The few users flagged
    for deletion are looked up by key (one never stored is skipped by the sync: absent is right for them).
    Reading every active row back instead costs seconds at 1M rows (docs/BENCHMARKS.md).
    """
    active, inactive = warehouse.status_summary(client_id)
    keys = mapped.subscribers["subscriber_key"]
    flagged = mapped.subscribers["delete"].to_numpy(dtype=bool)
    not_active = KeyLookup(inactive["subscriber_key"]).get_indexer(keys) >= 0
    wrong = int((not_active & ~flagged).sum())
    if flagged.any():
        stored = warehouse.statuses_of(client_id, keys[flagged])
        wrong += int((stored["status"] != "deleted").sum())
    passed = wrong == 0 and (expected_active is None or active == expected_active)
    return AssetCheckResult(
        check_name=CHECK_WAREHOUSE_MATCHES,
        asset_key=SUBSCRIBERS_TABLE,
        passed=passed,
        severity=AssetCheckSeverity.ERROR,
        metadata={
            "file_subscribers_with_wrong_status": MetadataValue.int(wrong),
            "active_in_warehouse": MetadataValue.int(active),
            "expected_active": MetadataValue.int(expected_active if expected_active is not None else -1),
        },
    )


def _expected_active(plan_counts: dict[str, int], active_before: int, deleted_active: int) -> int:
    return (
        active_before
        + plan_counts.get("inserted", 0)
        + plan_counts.get("reactivated", 0)
        - plan_counts.get("deprovisioned", 0)
        - deleted_active
    )


@dataclass
class _Progress:
    """How far a run got, so an unexpected error is logged `failed` exactly once, naming the stage."""

    stage: str = "reading the upload"
    logged: bool = False


def _error_detail(error: Exception) -> str:
    """What may be said of an unexpected error: its type. S3 failures are the exception: their text is only
    ids, the operation, the object and the endpoint."""
    return str(error) if isinstance(error, S3RequestFailed) else type(error).__name__


def _traceback_without_messages(error: BaseException) -> str:
    """The error's traceback, chained exceptions included, with every exception message left out: the
    frames (code locations) say where it failed; the messages could quote file values."""
    parts, seen = [], set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        frames = "".join(traceback.format_list(traceback.extract_tb(current.__traceback__)))
        kind = f"{type(current).__module__}.{type(current).__qualname__}"
        parts.append(f"{kind} (message withheld)\n{frames}")
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return "\nraised while handling:\n".join(parts)


def _redacted_failure(client_id: str, stage: str, error: Exception) -> Failure:
    """The Failure that stands for an unexpected error in the run's event log: client, stage and error type,
    and the traceback without messages. Dagster stores a raised exception's message and those of its
    `__cause__` and `__context__`; a database error quotes the row it refused (personal data). So raise
    this `from None`, which leaves the original out of the event log entirely."""
    if isinstance(error, S3RequestFailed):
        description = f"failed while {stage}: {error}"  # it names the client, operation, object, endpoint
    else:
        description = (
            f"client {client_id}: failed while {stage}: {type(error).__name__}; the error's message is "
            "withheld because it can quote file values (see this failure's traceback metadata)"
        )
    return Failure(
        description=description,
        metadata={
            "client": client_id,
            "stage": stage,
            "error_type": f"{type(error).__module__}.{type(error).__qualname__}",
            "traceback": MetadataValue.text(_traceback_without_messages(error)),
        },
    )


def return_freed_memory() -> None:
    """Hand the memory Arrow has freed back to the operating system between stages of a big import.

    Arrow's allocator (mimalloc) keeps freed pages for its own reuse; after validating a 1M-row file that
    is ~0.4 GiB which the next stage's numpy and Python objects cannot use, and which counts towards the
    run's peak (docs/BENCHMARKS.md). The C allocator's free lists (numpy, pandas, the database drivers)
    are trimmed too. Returning it costs a few milliseconds.
    """
    pa.default_memory_pool().release_unused()
    release_malloc_free_memory()


def _import(
    context: AssetExecutionContext,
    config: SisImportConfig,
    client: ClientConfig,
    store,
    s3_client,
    archive: ArchiveResource,
    progress: _Progress,
    reader: ThreadPoolExecutor,
) -> Iterator[MaterializeResult]:
    """The import of one client's file; yields a materialisation per selected asset (see module doc).
    `reader` runs the read of the client's stored rows beside validation."""
    selected = context.selected_asset_keys
    selected_checks = context.selected_asset_check_keys

    def emit(key: AssetKey, metadata: dict, checks: list[AssetCheckResult] = ()) -> list[MaterializeResult]:
        """A materialisation for `key` with its selected checks, or nothing when `key` is not selected."""
        if key not in selected:
            return []
        chosen = [c for c in checks if AssetCheckKey(c.asset_key, c.check_name) in selected_checks]
        return [MaterializeResult(asset_key=key, metadata=metadata, check_results=chosen)]

    def stop(message: str, blocking_check: str, asset: AssetKey) -> None:
        """Fail the run; a selected blocking check has already done so, so only fail when it was not."""
        if AssetCheckKey(asset, blocking_check) not in selected_checks or asset not in selected:
            raise Failure(message)

    timings: dict[str, float] = {}
    started = time.perf_counter()
    writes = SUBSCRIBERS_TABLE in selected and client.auto_sync_enabled and not config.dry_run
    if SUBSCRIBERS_TABLE in selected and not writes:
        why = "dry run" if config.dry_run else "auto_sync_enabled is false (first file under review)"
        context.log.info(f"client {client.id}: preview only — {why}")

    def unchanged(version: FileVersion, archived_at: str, how: str) -> Iterator[MaterializeResult]:
        """Log `unchanged` (§6): the same bytes as the last applied file change nothing."""
        progress.logged = True
        outcome = store.record(
            client_id=client.id,
            status="unchanged",
            file=version,
            validated=None,
            run_id=context.run.run_id,
            message=f"file identical to the last applied one ({how}); nothing to do",
        )
        context.log.info(f"client {client.id}: unchanged file ({how}), sync {outcome.sync_id}")
        yield from emit(RAW_SIS_FILE, md.file_metadata(version, archived_at))
        yield from emit(
            SUBSCRIBERS_TABLE, {"status": "unchanged", "sync_id": MetadataValue.int(int(outcome.sync_id))}
        )

    check_unchanged = writes and not config.force
    seen = None  # one HeadObject per run: the version it sees is the version the run reads
    if check_unchanged and RAW_SIS_FILE in selected:
        # Cheapest first: the very object version (or ETag) last applied needs no download at all.
        seen = head_upload(s3_client, client, config.version_id)
        same = _same_as_last_applied(store, client, seen)
        if same is not None:
            yield from unchanged(
                same, archive.archive(s3_client).location(client.id, same.sha256), "same version"
            )
            return

    try:
        file = _read_file(context, client, config, s3_client, archive.archive(s3_client), seen)
    except UploadNotFound as error:
        progress.logged = True
        outcome = store.record(
            client_id=client.id,
            status="failed",
            file=None,
            validated=None,
            run_id=context.run.run_id,
            message=str(error),
        )
        raise Failure(f"{error} (sync {outcome.sync_id})") from error
    timings["read"] = time.perf_counter() - started
    context.log.info(
        f"client {client.id}: read {file.version.uri} version "
        f"{file.version.version_id or file.version.etag} ({file.version.size} bytes)"
    )
    if check_unchanged and store.last_applied_sha256(client.id) == file.version.sha256:
        yield from unchanged(file.version, file.archived_at, "sha256")
        return
    yield from emit(RAW_SIS_FILE, md.file_metadata(file.version, file.archived_at))

    # The client's stored rows are read on another core while the file is validated and mapped: the plan
    # needs both and neither needs the other (docs/BENCHMARKS.md). The caller waits for the thread on exit.
    pending = reader.submit(store.snapshot, client.id)

    t = time.perf_counter()
    progress.stage = "validating the file"
    validated = validate_file(file.data, client, source=file.version.uri)
    file.data = b""  # archived and parsed: release the raw bytes before the big frames are built
    return_freed_memory()
    timings["validate"] = time.perf_counter() - t
    context.log.info(
        f"client {client.id}: {validated.rows_total} rows read, {validated.rows_valid} valid, "
        f"{validated.rows_rejected} rejected {validated.rejected_by_reason()}"
    )
    yield from emit(VALIDATED_SIS_FRAME, md.validation_metadata(validated), _file_checks(validated, config))
    if validated.ignored:
        progress.logged = True
        outcome = store.record(
            client_id=client.id,
            status="ignored",
            file=file.version,
            validated=validated,
            run_id=context.run.run_id,
            message=validated.problem.message,
        )
        message = f"client {client.id}: file ignored (sync {outcome.sync_id}): {validated.problem.message}"
        context.log.error(message)
        stop(message, CHECK_FILE_ACCEPTED, VALIDATED_SIS_FRAME)
        return  # the failed blocking check fails the step: nothing downstream runs

    t = time.perf_counter()
    progress.stage = "mapping subscribers"
    mapped = map_file(validated, client)
    validated.release_rows()
    return_freed_memory()
    timings["map"] = time.perf_counter() - t
    yield from emit(MAPPED_SUBSCRIBERS, md.mapping_metadata(mapped, validated))

    t = time.perf_counter()
    progress.stage = "planning the sync"
    plan = store.preview(
        mapped, client, override_guard=config.override_guard, file=file.version, snapshot=pending.result()
    )
    del pending  # the stored rows are only needed for the plan
    return_freed_memory()
    timings["plan"] = time.perf_counter() - t
    counts = plan.counts()
    guard = plan.guard
    status = "preview" if not writes else ("blocked" if guard.blocked else "planned")
    summary = md.summary_markdown(client.id, file.version, validated, counts, status, guard.reason)
    guard_result = AssetCheckResult(
        check_name=CHECK_GUARD,
        asset_key=DEPROVISION_SET,
        passed=not guard.blocked,
        # A preview only reports what the guard would do; it must not fail the preview run.
        severity=AssetCheckSeverity.ERROR if writes else AssetCheckSeverity.WARN,
        metadata={
            "verdict": guard.reason,
            "deprovisions": MetadataValue.int(int(guard.deprovisions)),
            "deletes": MetadataValue.int(int(guard.deletes)),
            "active_before": MetadataValue.int(int(guard.active_before)),
            "overridden": config.override_guard,
        },
    )
    yield from emit(DEPROVISION_SET, md.plan_metadata(counts, guard, summary), [guard_result])

    if not writes:
        progress.logged = True
        outcome = store.record(
            client_id=client.id,
            status="preview",
            file=file.version,
            validated=validated,
            run_id=context.run.run_id,
            message="preview: " + ("dry run" if config.dry_run else "nothing written"),
            plan=plan,
        )
        context.log.info(f"client {client.id}: preview recorded as sync {outcome.sync_id}: {counts}")
        return

    t = time.perf_counter()
    progress.stage = "writing the warehouse"
    progress.logged = True  # apply logs its own failures
    outcome = store.apply(
        client=client,
        validated=validated,
        mapped=mapped,
        file=file.version,
        run_id=context.run.run_id,
        force=config.force,
        override_guard=config.override_guard,
        planned=plan,
    )
    timings["apply"] = time.perf_counter() - t
    context.log.info(f"client {client.id}: sync {outcome.sync_id} {outcome.status}: {outcome.counts}")
    if outcome.status == "blocked":
        message = f"client {client.id}: blocked by the mass-change guard (sync {outcome.sync_id}): {outcome.message}"
        context.log.error(message)
        if not guard.blocked:
            # The guard passed on the preview but tripped under the lock: the warehouse moved in between.
            raise Failure(message)
        stop(message, CHECK_GUARD, DEPROVISION_SET)
        return
    if outcome.status not in ("applied", "unchanged"):
        raise Failure(f"client {client.id}: sync ended {outcome.status}: {outcome.message}")

    applied_plan = outcome.plan or plan
    deleted_active = int(getattr(applied_plan, "deleted_active", applied_plan.counts().get("deleted", 0)))
    expected_active = (
        _expected_active(applied_plan.counts(), applied_plan.guard.active_before, deleted_active)
        if outcome.status == "applied"
        else None
    )
    check = _warehouse_check(store, client.id, mapped, expected_active)
    yield from emit(
        SUBSCRIBERS_TABLE,
        {
            "status": outcome.status,
            "sync_id": MetadataValue.int(int(outcome.sync_id)),
            **{f"applied_{k}": MetadataValue.int(int(v)) for k, v in outcome.counts.items()},
            "timings_s": MetadataValue.json({k: round(v, 3) for k, v in timings.items()}),
            "summary": MetadataValue.md(
                md.summary_markdown(client.id, file.version, validated, outcome.counts, outcome.status)
            ),
        },
        [check],
    )


def build_import_assets(partitions_def: PartitionsDefinition):
    """The `sis_import` multi-asset over the given client partitions."""

    @multi_asset(
        name="sis_import",
        specs=_specs(),
        check_specs=_check_specs(),
        partitions_def=partitions_def,
        can_subset=True,
        # Bounds concurrent warehouse writers where the instance sets a limit (deploy/dagster.yaml).
        pool=WAREHOUSE_POOL,
    )
    def sis_import(
        context: AssetExecutionContext,
        config: SisImportConfig,
        s3: S3Resource,
        registry: RegistryResource,
        warehouse: WarehouseResource,
        archive: ArchiveResource,
    ) -> Iterator[MaterializeResult]:
        client = registry.load()[context.partition_key]
        store = warehouse.get()
        progress = _Progress()
        try:
            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="sis-snapshot") as reader:
                yield from _import(context, config, client, store, s3.get_client(), archive, progress, reader)
        except Exception as error:
            if not progress.logged:
                # Only the type and stage: exception texts can quote file values (personal data).
                detail = _error_detail(error)
                if not isinstance(error, S3RequestFailed):
                    detail += " (see the run's event log)"
                outcome = store.record(
                    client_id=client.id,
                    status="failed",
                    file=None,
                    validated=None,
                    run_id=context.run.run_id,
                    message=f"failed while {progress.stage}: {detail}",
                )
                context.log.error(
                    f"client {client.id}: sync {outcome.sync_id} failed while {progress.stage}: "
                    f"{_error_detail(error)}"
                )
            if isinstance(error, Failure):
                raise  # the pipeline's own failures name ids, counts and reasons, never file values
            raise _redacted_failure(client.id, progress.stage, error) from None

    return sis_import


def selection_for(client: ClientConfig, *, preview: bool = False) -> list[AssetKey]:
    """What a run for this client materialises: the full graph, or a preview when it must not write."""
    if preview or not client.auto_sync_enabled:
        return list(PREVIEW_ASSETS)
    return list(ALL_ASSETS)
