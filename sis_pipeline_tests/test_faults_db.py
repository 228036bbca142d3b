"""Database and process faults mid-apply (issue 7): the warehouse is left exactly as it was, the failure is
logged, and the next run applies the whole file. Runs on SQLite and PostgreSQL.

- a dropped connection: PostgreSQL's backend is terminated from another session after the subscribers were
  written inside the transaction; SQLite has no connection to drop, so the same point gets SQLite's own
  interrupt (a progress handler aborting the next statement), the error a cancelled statement raises;
- a killed process: a real `sis-pipeline sync` process SIGKILLs itself after writing the subscribers
  (`process_faults/sitecustomize.py`), with its transaction open;
- two syncs of one client at once: two real `sis-pipeline sync` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa

from sis_pipeline.warehouse import bulk
from sis_pipeline_tests.orchestration_support import roster_csv
from sis_pipeline_tests.warehouse_builders import dump

SCRIPT = str(Path(sys.executable).with_name("sis-pipeline"))
KILL_HOOK = Path(__file__).parent / "process_faults"

#: Last week: students 0..119. This week: 0..4 gone, 120..124 new, 5..119 unchanged.
WEEK1 = roster_csv(120)
WEEK2 = roster_csv(120, start=5)
CLIENT = {"auto_deprovision": True}


def _week2_applied_correctly(harness, client_id: str = "22") -> None:
    """The warehouse holds exactly what week 2 on top of week 1 means, and the log says so."""
    statuses = harness.warehouse().subscriber_statuses(client_id).set_index("subscriber_key")["status"]
    expected = {f"student{n}@school.example.edu": "deprovisioned" for n in range(5)}
    expected.update({f"student{n}@school.example.edu": "active" for n in range(5, 125)})
    assert statuses.to_dict() == expected
    applied = harness.log(client_id)
    applied = applied[applied["status"] == "applied"].iloc[0]
    assert (applied["inserted"], applied["deprovisioned"], applied["unchanged_rows"]) == (5, 5, 115)


def _without_log(snapshot: dict) -> dict:
    return {table: rows for table, rows in snapshot.items() if table != "sis_sync_log"}


@pytest.fixture
def seeded(harness, dagster_instance, warehouse_url):
    """Client 22 with week 1 applied, week 2 uploaded."""
    harness.warehouse_url = warehouse_url
    harness.add_client("22", **CLIENT)
    harness.upload("22", WEEK1)
    assert harness.run(dagster_instance, "22").success
    harness.upload("22", WEEK2)
    return harness


def _drop_connection_after_upsert(monkeypatch, warehouse_url: str) -> list[str]:
    """Make the warehouse lose its connection (PostgreSQL) or have its statement aborted (SQLite) right after
    the subscribers were written inside the apply transaction. Returns a list that records each firing."""
    fired: list[str] = []
    writer_class = bulk.writer_class_for(sa.make_url(warehouse_url).get_backend_name())
    original = writer_class.upsert_subscribers

    def upsert_then_lose_connection(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if fired:
            return
        fired.append("dropped")
        if self.conn.dialect.name == "postgresql":
            pid = self.conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            killer = sa.create_engine(self.conn.engine.url)
            with killer.begin() as other:
                other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            killer.dispose()
        else:
            raw = self.conn.connection.dbapi_connection
            aborted: list[bool] = []

            def abort_next_statement_once() -> int:
                if aborted:
                    return 0
                aborted.append(True)
                return 1  # non-zero: SQLite aborts the running statement with SQLITE_INTERRUPT

            raw.set_progress_handler(abort_next_statement_once, 1)

    monkeypatch.setattr(writer_class, "upsert_subscribers", upsert_then_lose_connection)
    return fired


def test_connection_dropped_mid_apply_rolls_back_logs_failed_and_the_next_run_applies_all(
    seeded, dagster_instance, warehouse_url, monkeypatch
):
    before = dump(seeded.warehouse())
    fired = _drop_connection_after_upsert(monkeypatch, warehouse_url)

    result = seeded.run(dagster_instance, "22")

    assert fired == ["dropped"] and not result.success
    after = dump(seeded.warehouse())
    assert _without_log(after) == _without_log(before)  # subscribers, communities, rejected rows: as before
    assert after["sis_sync_log"][: len(before["sis_sync_log"])] == before["sis_sync_log"]
    failed = seeded.log("22").iloc[0]
    assert failed["status"] == "failed" and failed["run_id"] == result.run_id
    assert "OperationalError" in failed["message"] and "nothing applied" in failed["message"]
    assert failed["sha256"] is not None  # names the file that failed

    # The next run applies the whole file: a failed sync is not the "last applied" one.
    second = seeded.run(dagster_instance, "22")
    assert second.success
    _week2_applied_correctly(seeded)


def _cli(env: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SCRIPT, "sync", "--client", "22", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def cli_env(seeded, warehouse_url, tmp_path) -> dict:
    return {
        **os.environ,
        "SIS_CLIENTS_FILE": str(seeded.registry_path),
        "SIS_WAREHOUSE_URL": warehouse_url,
        "SIS_ARCHIVE_URI": str(tmp_path / "archive"),
        "SIS_S3_ENDPOINT_URL": seeded.endpoint,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }


def test_process_killed_mid_apply_leaves_the_warehouse_as_before_and_the_next_run_applies(seeded, cli_env):
    before = dump(seeded.warehouse())
    seeded.warehouse().dispose()  # no pooled connection of ours in the way of the dying process's lock

    killed = _cli({**cli_env, "PYTHONPATH": str(KILL_HOOK), "SIS_TEST_KILL_AFTER": "upsert_subscribers"})

    assert killed.returncode == -signal.SIGKILL, killed.stdout + killed.stderr
    # Its transaction never committed: not even its `applied` log row exists. Byte for byte as before.
    assert dump(seeded.warehouse()) == before

    # The lock died with the process (PostgreSQL: with its session; SQLite: with its file lock).
    again = _cli(cli_env, timeout=120)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "applied" in again.stdout
    _week2_applied_correctly(seeded)
    # The dead process's run does not stay "started" for ever (it would hold the client's queued runs).
    runs = _runs_by_status(cli_env["DAGSTER_HOME"])
    assert sorted(runs) == ["FAILURE", "SUCCESS"]
    assert "is gone" in _failure_message(cli_env["DAGSTER_HOME"], runs["FAILURE"])


def _runs_by_status(dagster_home: str) -> dict[str, str]:
    from dagster import DagsterInstance

    with DagsterInstance.from_config(dagster_home) as instance:
        return {run.status.value: run.run_id for run in instance.get_runs()}


def _failure_message(dagster_home: str, run_id: str) -> str:
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(dagster_home) as instance:
        records = instance.get_records_for_run(run_id, of_type=DagsterEventType.RUN_FAILURE).records
        return " ".join(r.event_log_entry.dagster_event.message or "" for r in records)


def test_two_syncs_of_one_client_started_at_once_serialise_and_both_end_correctly(seeded, cli_env):
    seeded.warehouse().dispose()
    runs = [
        subprocess.Popen(
            [SCRIPT, "sync", "--client", "22"],
            env=cli_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=240) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs

    # One applied the file under the client's lock; the other then found it already applied.
    log = seeded.log("22")
    this_week = log.iloc[:2]
    assert sorted(this_week["status"]) == ["applied", "unchanged"]
    assert (log["status"] == "applied").sum() == 2  # week 1 and week 2, once each
    _week2_applied_correctly(seeded)


def test_a_failure_that_cannot_even_be_logged_says_so_without_the_errors_text(
    warehouse_url, monkeypatch, caplog
):
    """When the database is gone for the `failed` row too, the log line names types only: a database
    error's text can quote row values (here a planted email)."""
    from sis_pipeline.warehouse import Warehouse, store
    from sis_pipeline_tests.warehouse_builders import SyncFile, client, person

    planted = "planted.person@school.edu"
    warehouse = Warehouse(warehouse_url)
    warehouse.upgrade()
    writer_class = bulk.writer_class_for(warehouse.engine.dialect.name)

    def fail_quoting_a_value(*_args, **_kwargs):
        raise RuntimeError(f"duplicate key ({planted})")

    real_insert_log = store._insert_log

    def log_row_fails_for_failed(conn, **values):
        if values["status"] == "failed":
            raise RuntimeError(f"connection lost while writing {planted}")
        return real_insert_log(conn, **values)

    monkeypatch.setattr(writer_class, "upsert_subscribers", fail_quoting_a_value)
    monkeypatch.setattr(store, "_insert_log", log_row_fails_for_failed)
    caplog.set_level("DEBUG", logger="sis_pipeline")
    with pytest.raises(RuntimeError):
        SyncFile(client(), [person(1)]).apply(warehouse)
    warehouse.dispose()

    lines = [r.getMessage() + (r.exc_text or "") for r in caplog.records if r.name.startswith("sis_pipeline")]
    assert any("could not record the failed sync (RuntimeError after RuntimeError)" in line for line in lines)
    assert not any(planted in line for line in lines)
    assert all(r.exc_info is None for r in caplog.records if r.name.startswith("sis_pipeline"))


def test_commands_started_at_once_on_a_new_dagster_home_all_open_the_instance(tmp_path):
    """The first open of a new DAGSTER_HOME creates its SQLite storage; without the open lock two of four
    processes started together failed with "table alembic_version already exists"."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    probe = "from sis_pipeline import runner\nrunner._instance().get_runs_count()\nprint('opened')\n"
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", probe], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [err.decode()[-400:] for _, err in outputs]
    assert all(out.decode().strip() == "opened" for out, _ in outputs)
