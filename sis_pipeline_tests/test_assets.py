"""The import graph as Dagster runs: materialisations, checks, sync-log statuses (PRODUCT.md §6–7)."""

from __future__ import annotations

import threading

from dagster import AssetKey

from sis_pipeline.assets import (
    ALL_ASSETS,
    CHECK_FILE_ACCEPTED,
    CHECK_GUARD,
    CHECK_WAREHOUSE_MATCHES,
    DEPROVISION_SET,
    PREVIEW_ASSETS,
    RAW_SIS_FILE,
    SUBSCRIBERS_TABLE,
    VALIDATED_SIS_FRAME,
)
from sis_pipeline_tests.orchestration_support import roster_csv


def _materialized(result) -> set[AssetKey]:
    return {m.asset_key for m in result.asset_materializations_for_node("sis_import")}


def _check(result, name: str):
    evaluations = [
        e.event_specific_data for e in result.all_events if e.event_type_value == "ASSET_CHECK_EVALUATION"
    ]
    return next(e for e in evaluations if e.check_name == name)


def _statuses(harness, client_id: str) -> list[str]:
    return list(harness.log(client_id).sort_values("sync_id")["status"])


def test_full_run_applies_file_and_materialises_every_asset(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(50))
    result = harness.run(dagster_instance, "22")
    assert result.success
    assert _materialized(result) == set(ALL_ASSETS)
    assert _check(result, CHECK_WAREHOUSE_MATCHES).passed
    assert _statuses(harness, "22") == ["applied"]
    state = harness.warehouse().current_subscribers("22")
    assert len(state) == 50 and set(state["status"]) == {"active"}


def test_raw_file_metadata_records_exact_version_and_sha256(harness, dagster_instance):
    import hashlib

    harness.add_client("22")
    data = roster_csv(5)
    put = harness.upload("22", data)
    result = harness.run(dagster_instance, "22")
    raw = next(m for m in result.asset_materializations_for_node("sis_import") if m.asset_key == RAW_SIS_FILE)
    meta = {k: v.value for k, v in raw.metadata.items()}
    assert meta["sha256"] == hashlib.sha256(data).hexdigest()
    assert meta["version_id"] == put["VersionId"]
    assert meta["size_bytes"] == len(data)
    assert meta["etag"] == put["ETag"].strip('"')
    archived = harness.tmp / "archive" / "22" / f"{meta['sha256']}.csv"
    assert archived.read_bytes() == data


def test_same_file_again_is_unchanged_and_writes_only_the_log_row(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(20))
    assert harness.run(dagster_instance, "22").success
    before = harness.warehouse().current_subscribers("22")
    second = harness.run(dagster_instance, "22")
    assert second.success
    assert _statuses(harness, "22") == ["applied", "unchanged"]
    after = harness.warehouse().current_subscribers("22")
    assert (
        before.sort_values("subscriber_key")
        .reset_index(drop=True)
        .equals(after.sort_values("subscriber_key").reset_index(drop=True))
    )


def test_forced_rerun_of_unchanged_file_applies_and_changes_nothing(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(20))
    harness.run(dagster_instance, "22")
    forced = harness.run(dagster_instance, "22", force=True)
    assert forced.success
    last = harness.log("22").sort_values("sync_id").iloc[-1]
    assert last["status"] == "applied"
    assert (last["inserted"], last["updated"], last["unchanged_rows"]) == (0, 0, 20)


def test_ignored_file_stops_the_write_and_is_logged_ignored(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", b"first_name,last_name\r\nAna,Lopez\r\n")  # no email column
    result = harness.run(dagster_instance, "22")
    assert not result.success  # the blocking file_accepted check fails the run
    assert not _check(result, CHECK_FILE_ACCEPTED).passed
    assert SUBSCRIBERS_TABLE not in _materialized(result)
    assert _statuses(harness, "22") == ["ignored"]
    assert len(harness.warehouse().current_subscribers("22")) == 0


def test_guard_blocks_mass_deprovision_and_logs_blocked(harness, dagster_instance):
    harness.add_client("22", auto_deprovision=True, guard={"max_fraction": 0.1, "min_active": 10})
    harness.upload("22", roster_csv(100))
    assert harness.run(dagster_instance, "22").success
    harness.upload("22", roster_csv(50))  # half the school gone: far past 10%
    blocked = harness.run(dagster_instance, "22")
    assert not blocked.success
    assert not _check(blocked, CHECK_GUARD).passed
    assert SUBSCRIBERS_TABLE not in _materialized(blocked)
    assert _statuses(harness, "22") == ["applied", "blocked"]
    state = harness.warehouse().current_subscribers("22")
    assert (state["status"] == "active").sum() == 100

    overridden = harness.run(dagster_instance, "22", override_guard=True)
    assert overridden.success
    assert _statuses(harness, "22")[-1] == "applied"
    state = harness.warehouse().current_subscribers("22")
    assert (state["status"] == "active").sum() == 50
    assert (state["status"] == "deprovisioned").sum() == 50


def test_unreviewed_client_is_previewed_never_applied(harness, dagster_instance):
    harness.add_client("57", auto_sync_enabled=False)
    harness.upload("57", roster_csv(10))
    result = harness.run(dagster_instance, "57")
    assert result.success
    assert SUBSCRIBERS_TABLE not in _materialized(result)
    assert DEPROVISION_SET in _materialized(result)
    assert _statuses(harness, "57") == ["preview"]
    assert len(harness.warehouse().current_subscribers("57")) == 0


def test_dry_run_previews_a_reviewed_client(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(10))
    result = harness.run(dagster_instance, "22", dry_run=True)
    assert result.success
    assert _statuses(harness, "22") == ["preview"]
    assert len(harness.warehouse().current_subscribers("22")) == 0


def test_preview_selection_materialises_all_but_the_table(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(10))
    result = harness.run(dagster_instance, "22", selection=PREVIEW_ASSETS)
    assert result.success
    assert _materialized(result) == set(PREVIEW_ASSETS)
    assert _statuses(harness, "22") == ["preview"]


def test_table_alone_applies_the_previewed_bytes_from_the_archive(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(10))
    assert harness.run(dagster_instance, "22", selection=PREVIEW_ASSETS).success
    harness.upload("22", roster_csv(30))  # the school uploads again after the preview
    result = harness.run(dagster_instance, "22", selection=[SUBSCRIBERS_TABLE])
    assert result.success
    assert len(harness.warehouse().current_subscribers("22")) == 10  # what was previewed, not the new file


def test_replay_of_an_older_version_by_version_id(harness, dagster_instance):
    harness.add_client("22")
    first = harness.upload("22", roster_csv(10))
    harness.upload("22", roster_csv(25))
    result = harness.run(dagster_instance, "22", version_id=first["VersionId"])
    assert result.success
    raw = next(m for m in result.asset_materializations_for_node("sis_import") if m.asset_key == RAW_SIS_FILE)
    assert raw.metadata["version_id"].value == first["VersionId"]
    assert len(harness.warehouse().current_subscribers("22")) == 10


def test_missing_upload_fails_the_run_and_is_logged(harness, dagster_instance):
    harness.add_client("22")
    result = harness.run(dagster_instance, "22")
    assert not result.success
    assert _statuses(harness, "22") == ["failed"]


def test_rejected_rows_reach_metadata_with_line_numbers_and_no_personal_data(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(5, extra_rows="Zed,Bad,not-an-email,Student\r\n"))
    result = harness.run(dagster_instance, "22")
    assert result.success
    validated = next(
        m for m in result.asset_materializations_for_node("sis_import") if m.asset_key == VALIDATED_SIS_FRAME
    )
    assert validated.metadata["rows_rejected"].value == 1
    assert validated.metadata["first_rejected_lines"].value == ["line 7: invalid_email (email)"]
    rendered = str({k: v.value for k, v in validated.metadata.items()})
    assert "not-an-email" not in rendered and "Zed" not in rendered


def test_backfill_over_two_clients_runs_each_partition(harness, dagster_instance):
    from sis_pipeline_tests.orchestration_support import run_backfill

    harness.add_client("22")
    harness.add_client("41")
    harness.upload("22", roster_csv(5))
    harness.upload("41", roster_csv(7, domain="other.example.edu"))
    run_ids = run_backfill(harness, dagster_instance, ["22", "41"])
    assert len(run_ids) == 2
    assert _statuses(harness, "22") == ["applied"]
    assert _statuses(harness, "41") == ["applied"]


def test_unexpected_error_is_logged_failed_naming_the_stage_not_the_data(
    harness, dagster_instance, monkeypatch
):
    import sis_pipeline.assets as assets

    def broken_mapping(validated, client):
        raise ValueError("student7@school.example.edu broke the mapper")

    monkeypatch.setattr(assets, "map_file", broken_mapping)
    harness.add_client("22")
    harness.upload("22", roster_csv(8))
    result = harness.run(dagster_instance, "22")
    assert not result.success
    last = harness.log("22").iloc[0]
    assert last["status"] == "failed"
    assert "mapping subscribers" in last["message"] and "ValueError" in last["message"]
    assert "student7" not in last["message"]
    assert len(harness.warehouse().current_subscribers("22")) == 0


def test_the_stored_rows_are_read_beside_validation_and_a_failed_read_fails_the_plan(
    harness, dagster_instance, monkeypatch
):
    from sis_pipeline.warehouse.store import Warehouse

    original, readers = Warehouse.snapshot, []

    def snapshot(self, client_id):
        readers.append(threading.current_thread().name)
        if len(readers) == 2:
            raise OSError("disk I/O error reading student7@school.example.edu")
        return original(self, client_id)

    monkeypatch.setattr(Warehouse, "snapshot", snapshot)
    harness.add_client("22")
    harness.upload("22", roster_csv(5))
    assert harness.run(dagster_instance, "22").success
    assert readers[0].startswith("sis-snapshot")  # not the step's own thread
    harness.upload("22", roster_csv(6))
    assert not harness.run(dagster_instance, "22").success
    last = harness.log("22").iloc[0]
    assert last["status"] == "failed"
    assert "planning the sync" in last["message"] and "OSError" in last["message"]
    assert "student7" not in last["message"]
    assert len(harness.warehouse().current_subscribers("22")) == 5


def test_same_version_again_is_unchanged_without_downloading(harness, dagster_instance, monkeypatch):
    import sis_pipeline.assets as assets

    harness.add_client("22")
    harness.upload("22", roster_csv(20))
    assert harness.run(dagster_instance, "22").success

    def no_download(*args, **kwargs):
        raise AssertionError("the unchanged version was downloaded")

    monkeypatch.setattr(assets, "fetch_upload", no_download)
    again = harness.run(dagster_instance, "22")
    assert again.success
    last = harness.log("22").iloc[0]
    assert last["status"] == "unchanged" and "same version" in last["message"]
    raw = next(m for m in again.asset_materializations_for_node("sis_import") if m.asset_key == RAW_SIS_FILE)
    assert raw.metadata["sha256"].value == harness.log("22").iloc[1]["sha256"]


def test_same_bytes_as_a_new_version_are_unchanged_by_sha256(harness, dagster_instance):
    harness.add_client("22")
    harness.upload("22", roster_csv(20))
    assert harness.run(dagster_instance, "22").success
    harness.upload("22", roster_csv(20))  # a new object version with identical content
    assert harness.run(dagster_instance, "22").success
    last = harness.log("22").iloc[0]
    assert last["status"] == "unchanged" and "sha256" in last["message"]


def test_warehouse_check_fails_for_a_wrong_status_a_missing_subscriber_or_a_wrong_active_count(tmp_path):
    from sis_pipeline.assets import _warehouse_check
    from sis_pipeline.warehouse import Warehouse
    from sis_pipeline.warehouse.tables import subscribers
    from sis_pipeline_tests.warehouse_builders import SyncFile, client, person

    warehouse = Warehouse(f"sqlite:///{tmp_path / 'wh.sqlite'}")
    warehouse.upgrade()
    SyncFile(client(), [person(n) for n in range(6)]).apply(warehouse)
    # Student 5 is deleted; student 6, flagged but never stored, is skipped (and not a mismatch).
    sync_file = SyncFile(client(), [person(n) for n in range(5)] + [person(n, delete=True) for n in (5, 6)])
    assert sync_file.apply(warehouse).counts["deleted"] == 1

    def check(expected_active):
        result = _warehouse_check(warehouse, "22", sync_file.mapped, expected_active)
        return result.passed, result.metadata["file_subscribers_with_wrong_status"].value

    def tamper(key, **values):
        where = (subscribers.c.client_id == "22") & (subscribers.c.subscriber_key == key)
        with warehouse.engine.begin() as conn:
            conn.execute(
                subscribers.update().where(where).values(**values)
                if values
                else subscribers.delete().where(where)
            )

    assert check(5) == (True, 0)
    assert check(6) == (False, 0)  # the active count is not what the plan said
    tamper("student2@school.edu")  # a file subscriber vanished: the active count falls short
    assert check(5) == (False, 0)
    tamper("student1@school.edu", status="deprovisioned")  # a file subscriber is not active
    assert check(None) == (False, 1)
    tamper("student5@school.edu", status="active")  # a user flagged for deletion is active
    assert check(None) == (False, 2)
    warehouse.dispose()
