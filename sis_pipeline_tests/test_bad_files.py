"""The corpus of bad and odd files (bad_files.py) run on SQLite and PostgreSQL, and the nastiest ones through
real Dagster runs.

For every case the warehouse first holds last week's roster, applied with `auto_deprovision` on. The case's
file then goes through the path the `sis_import` asset takes (validate_file -> map_file -> preview ->
apply, or `record(ignored)`), and the test checks the promised outcome, the sync-log row, and that the
warehouse afterwards is the snapshot plus exactly that outcome: an ignored or blocked file adds one log
row and nothing else; an applied one changes only the subscribers the case names, and a person whose row
was rejected stays exactly as they were. No message or log line may carry a student's personal data.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from collections.abc import Iterator

import pytest

from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig, load_registry
from sis_pipeline.sisfile import map_file, validate_file
from sis_pipeline.sisfile.result import ValidatedFile
from sis_pipeline.warehouse import SyncOutcome, Warehouse
from sis_pipeline.warehouse.tables import metadata
from sis_pipeline_tests.bad_files import (
    CASES,
    CASES_BY_NAME,
    LAST_WEEK_SIZE,
    USER_TYPES,
    Blocked,
    Case,
    Ignored,
    Imported,
    last_week_csv,
    personal_values,
)
from sis_pipeline_tests.conftest import postgres_schema
from sis_pipeline_tests.warehouse_builders import dump

COUNTS = ("inserted", "updated", "reactivated", "deprovisioned", "deleted", "missing")
PERSONAL = personal_values()
_COLUMNS = {name: [c.name for c in table.columns] for name, table in metadata.tables.items()}


# --- one warehouse per database for the whole module (schema creation per test would dominate) ---------


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def corpus_warehouse(request, tmp_path_factory) -> Iterator[Warehouse]:
    """A migrated warehouse shared by every case; each case uses its own client id."""
    if request.param == "sqlite":
        warehouse = Warehouse(f"sqlite:///{tmp_path_factory.mktemp('bad-files') / 'warehouse.sqlite'}")
        warehouse.upgrade()
        yield warehouse
        warehouse.dispose()
        return
    with postgres_schema("sis_bad_files") as url:
        warehouse = Warehouse(url)
        try:
            warehouse.upgrade()
            yield warehouse
        finally:
            warehouse.dispose()


@pytest.fixture
def forget_clients(corpus_warehouse) -> Iterator[list[str]]:
    """Client ids whose rows are deleted after the test, so every snapshot stays small."""
    client_ids: list[str] = []
    yield client_ids
    with corpus_warehouse.engine.begin() as conn:
        for table in metadata.sorted_tables:
            if "client_id" in table.c:
                conn.execute(table.delete().where(table.c.client_id.in_(client_ids)))


def corpus_client(case: Case, **overrides) -> ClientConfig:
    index = CASES.index(case)
    settings = {
        "auto_sync_enabled": True,
        "auto_deprovision": True,
        "user_types": USER_TYPES,
        **case.settings,
        **overrides,
    }
    return ClientConfig(
        id=f"bf{index:02d}_{case.name}"[:64],
        name=f"Bad files {index}",
        bucket=f"sis-bad-files-{index:02d}",
        **settings,
    )


def file_version(client: ClientConfig, data: bytes) -> FileVersion:
    digest = hashlib.sha256(data).hexdigest()
    return FileVersion(
        bucket=client.bucket,
        key=client.key,
        etag=hashlib.md5(data).hexdigest(),  # what S3 reports for a single-part upload
        version_id=digest[:16],
        sha256=digest,
        size=len(data),
    )


def sync(
    store: Warehouse, client: ClientConfig, data: bytes, run_id: str
) -> tuple[ValidatedFile, SyncOutcome]:
    """The asset's path without Dagster (sis_pipeline/assets.py `_import`): an ignored file is recorded as
    such; otherwise map, plan from the warehouse, and apply that plan under the client's lock."""
    version = file_version(client, data)
    validated = validate_file(data, client, source=version.uri)
    if validated.ignored:
        outcome = store.record(
            client_id=client.id,
            status="ignored",
            file=version,
            validated=validated,
            run_id=run_id,
            message=validated.problem.message,
        )
        return validated, outcome
    mapped = map_file(validated, client)
    plan = store.preview(mapped, client, file=version)
    outcome = store.apply(
        client=client, validated=validated, mapped=mapped, file=version, run_id=run_id, planned=plan
    )
    return validated, outcome


def seed_last_week(store: Warehouse, client: ClientConfig) -> None:
    _, outcome = sync(store, client, last_week_csv(), run_id="last-week")
    assert outcome.status == "applied" and outcome.counts["inserted"] == LAST_WEEK_SIZE


# --- comparing warehouse snapshots -------------------------------------------------------------------------


def _named(table: str, row: tuple) -> dict:
    return dict(zip(_COLUMNS[table], row, strict=True))


def _subscribers(snapshot: dict, client_id: str) -> dict[str, dict]:
    client, key = (_COLUMNS["subscribers"].index(c) for c in ("client_id", "subscriber_key"))
    return {r[key]: _named("subscribers", r) for r in snapshot["subscribers"] if r[client] == client_id}


def _without(snapshot: dict, table: str, client_id: str, keys: set[str]) -> Counter:
    """The table's rows, less those of `keys` of this client (the subscribers a case may change)."""
    client, key = (_COLUMNS[table].index(c) for c in ("client_id", "subscriber_key"))
    return Counter(row for row in snapshot[table] if not (row[client] == client_id and row[key] in keys))


def _changes(table: str, old: Counter, new: Counter) -> list[str]:
    """Which rows differ, as `key: column before -> after` (for a readable failure)."""
    key = _COLUMNS[table].index("subscriber_key")
    gone = {row[key]: _named(table, row) for row in (old - new).elements()}
    came = {row[key]: _named(table, row) for row in (new - old).elements()}
    described = []
    for k in sorted(set(gone) | set(came))[:10]:
        a, b = gone.get(k, {}), came.get(k, {})
        diff = {c: (a.get(c), b.get(c)) for c in _COLUMNS[table] if a.get(c) != b.get(c)}
        described.append(f"{k}: " + ", ".join(f"{c} {x!r} -> {y!r}" for c, (x, y) in diff.items()))
    return described


def _added(before: dict, after: dict, table: str) -> list[dict]:
    """Rows of `table` that are new; fails if any row of `before` changed or vanished."""
    old, new = Counter(before[table]), Counter(after[table])
    assert not old - new, f"{table}: rows changed or removed: {list((old - new).elements())[:3]}"
    return [_named(table, row) for row in (new - old).elements()]


def _assert_no_personal_data(texts: list[str], extra: set[str] = frozenset()) -> None:
    personal = PERSONAL | {value for value in extra if len(value) >= 4}
    for text in texts:
        leaked = [value for value in personal if value in text]
        assert not leaked, f"personal data {leaked[:3]} in {text[:200]!r}"


def _personal_values_of(case: Case) -> set[str]:
    """Names and emails a case writes (emoji names, long emails...): personal data too."""
    if not isinstance(case.expected, Imported):
        return set()
    return {
        value
        for key, values in case.expected.changes.items()
        for column, value in [("subscriber_key", key), *values.items()]
        if column in ("subscriber_key", "email", "first_name", "last_name") and isinstance(value, str)
    }


# --- the corpus --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.name) for c in CASES],
)
def test_bad_file_has_its_promised_outcome_and_changes_nothing_else(
    corpus_warehouse, forget_clients, case, caplog
):
    store = corpus_warehouse
    client = corpus_client(case)
    forget_clients.append(client.id)
    seed_last_week(store, client)
    before = dump(store)
    data = case.build()

    with caplog.at_level(logging.DEBUG, logger="sis_pipeline"):
        validated, outcome = sync(store, client, data, run_id="this-week")
    after = dump(store)

    (log_row,) = _added(before, after, "sis_sync_log")
    assert log_row["client_id"] == client.id and log_row["sync_id"] == outcome.sync_id
    assert log_row["status"] == outcome.status == case.expected.status
    assert (log_row["bucket"], log_row["key"]) == (client.bucket, client.key)
    assert log_row["sha256"] == hashlib.sha256(data).hexdigest()
    assert log_row["rows_total"] == validated.rows_total
    assert log_row["rows_valid"] == validated.rows_valid
    assert log_row["rows_rejected"] == validated.rows_rejected
    new_rejected = _added(before, after, "sis_rejected_rows")
    changeable = set(case.expected.changes) if isinstance(case.expected, Imported) else set()
    for table in ("subscribers", "subscriber_communities"):
        old, new = (
            _without(before, table, client.id, changeable),
            _without(after, table, client.id, changeable),
        )
        assert old == new, f"{table} changed outside the expected outcome: {_changes(table, old, new)}"
    for table in set(before) - {"sis_sync_log", "sis_rejected_rows", "subscribers", "subscriber_communities"}:
        assert before[table] == after[table]
    _assert_no_personal_data(
        [
            log_row["message"],
            *(r["message"] for r in new_rejected),
            *(r.getMessage() for r in caplog.records),
        ],
        extra=_personal_values_of(case),
    )

    expected = case.expected
    if isinstance(expected, Ignored):
        _check_ignored(expected, validated, log_row, new_rejected)
    elif isinstance(expected, Blocked):
        _check_blocked(expected, validated, outcome, log_row, new_rejected)
    else:
        _check_applied(expected, validated, log_row, new_rejected, before, after, client.id)


def _check_ignored(expected: Ignored, validated: ValidatedFile, log_row: dict, new_rejected: list) -> None:
    problem = validated.problem
    assert problem is not None, f"the file was not ignored: {validated.rejected_by_reason()}"
    assert problem.code == expected.problem, problem.message
    message = log_row["message"]
    assert message == problem.message and message.startswith(validated.source)
    for word in expected.words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    if expected.line is not None:
        assert problem.line_number == expected.line
    if expected.byte_offset is not None:
        assert problem.byte_offset == expected.byte_offset
    assert new_rejected == []
    assert all(log_row[name] == 0 for name in COUNTS)


def _check_blocked(expected: Blocked, validated, outcome, log_row: dict, new_rejected: list) -> None:
    assert validated.problem is None
    assert outcome.status == "blocked"
    assert log_row["deprovisioned"] == expected.deprovisions
    assert log_row["active_before"] == LAST_WEEK_SIZE
    for words in ("mass-change guard", f"{expected.deprovisions} deprovisions", f"{LAST_WEEK_SIZE} active"):
        assert words in log_row["message"]
    assert new_rejected == []  # a blocked sync keeps only its log row


def _check_applied(
    expected: Imported,
    validated,
    log_row: dict,
    new_rejected: list,
    before: dict,
    after: dict,
    client_id: str,
) -> None:
    assert validated.problem is None, validated.problem and validated.problem.message
    assert log_row["status"] == "applied"
    assert validated.rejected_by_reason() == dict(expected.rejected)
    rejected_lines = set(validated.rejected["line_number"])
    assert set(expected.lines) <= rejected_lines
    rejected = validated.rejected.astype(object).where(validated.rejected.notna(), None)
    stored = Counter((r["line_number"], r["column_name"], r["reason_code"]) for r in new_rejected)
    assert stored == Counter(
        zip(rejected["line_number"], rejected["column_name"], rejected["reason_code"], strict=True)
    )
    assert {w.code for w in validated.warnings} >= set(expected.warnings)

    for name in COUNTS:
        assert log_row[name] == expected.counts.get(name, 0), (name, log_row[name])
    assert log_row["unchanged_rows"] == validated.rows_valid - log_row["inserted"] - log_row["updated"]

    old, new = _subscribers(before, client_id), _subscribers(after, client_id)
    assert set(old) <= set(new), "a subscriber row vanished"
    assert set(new) - set(old) <= set(expected.changes)
    for key, values in expected.changes.items():
        assert key in new, f"{key} not stored"
        assert new[key] != old.get(key), f"{key} was expected to change"
        for column, value in values.items():
            assert new[key][column] == value, (key, column)
    for key in expected.untouched:  # present in the file, if only by a rejected row: never deprovisioned
        assert new[key] == old[key] and new[key]["status"] == "active", key
    assert all(r["status"] == "active" for r in new.values())


def test_corpus_covers_every_kind_of_outcome_with_at_least_forty_cases():
    kinds = Counter(case.expected.kind for case in CASES)
    assert len(CASES) >= 40 and set(kinds) == {"ignored", "blocked", "rejected", "imported"}
    assert len(CASES_BY_NAME) == len(CASES)


# --- the nastiest files through real Dagster runs (S3 on moto's server over HTTP) --------------------------

END_TO_END = (
    "gzip_upload",
    "semicolon_delimited_export",
    "unterminated_quote",
    "truncated_mid_row",
    "truncated_to_40_percent_at_a_line_break",
)


@pytest.mark.parametrize("name", END_TO_END)
def test_nasty_upload_through_a_dagster_run_stops_before_the_write_and_logs_why(
    harness, dagster_instance, name
):
    from sis_pipeline.assets import CHECK_FILE_ACCEPTED, CHECK_GUARD, SUBSCRIBERS_TABLE

    case = CASES_BY_NAME[name]
    client_id = f"bf{CASES.index(case):02d}"
    harness.add_client(client_id, auto_deprovision=True, user_types=USER_TYPES)
    warehouse = harness.warehouse()
    seed_last_week(warehouse, load_registry(harness.registry_path)[client_id])  # the path a run takes
    before = dump(warehouse)

    harness.upload(client_id, case.build())
    result = harness.run(dagster_instance, client_id)

    assert not result.success  # a failed blocking check stops the run before subscribers_table
    materialised = {m.asset_key for m in result.asset_materializations_for_node("sis_import")}
    assert SUBSCRIBERS_TABLE not in materialised
    check_name = CHECK_GUARD if isinstance(case.expected, Blocked) else CHECK_FILE_ACCEPTED
    evaluations = [
        e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    assert not next(e for e in evaluations if e.check_name == check_name).passed
    after = dump(warehouse)
    (log_row,) = _added(before, after, "sis_sync_log")
    assert log_row["status"] == case.expected.status
    for table in set(before) - {"sis_sync_log"}:
        assert before[table] == after[table], f"{table} changed"
    if isinstance(case.expected, Ignored):
        for word in case.expected.words:
            assert word.lower() in log_row["message"].lower()
    else:
        assert f"{case.expected.deprovisions} deprovisions" in log_row["message"]
    run_log = [event.user_message for event in dagster_instance.all_logs(result.run_id)]
    _assert_no_personal_data([log_row["message"], *run_log])
