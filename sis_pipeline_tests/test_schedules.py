"""`sis_weekly_schedule` / `sis_daily_schedule` evaluated by Dagster (PRODUCT.md §7)."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import build_schedule_context

from sis_pipeline.assets import ALL_ASSETS, PREVIEW_ASSETS

UTC = ZoneInfo("UTC")


def _tick(harness, instance, name: str, when: datetime):
    schedule = harness.defs.resolve_schedule_def(name)
    context = build_schedule_context(
        instance=instance,
        scheduled_execution_time=when,
        resources=harness.resources(),
        repository_def=harness.defs.get_repository_def(),
    )
    data = schedule.evaluate_tick(context)
    return data.run_requests or []


def _clients(harness):
    harness.add_client("w1", create_bucket=False)  # weekly default: Saturday 23:00 America/New_York
    harness.add_client("w2", create_bucket=False, cron="30 6 * * 1", timezone="Europe/Paris")
    harness.add_client("w3", create_bucket=False, auto_sync_enabled=False)
    harness.add_client("d1", create_bucket=False, sync="daily")
    harness.add_client("d2", create_bucket=False, sync="daily", timezone="Asia/Tokyo")
    harness.add_client("m1", create_bucket=False, sync="manual")
    harness.add_client("u1", create_bucket=False, sync="on_upload")


def test_weekly_default_runs_saturday_23_new_york_for_weekly_clients_only(harness, dagster_instance):
    _clients(harness)
    saturday_23_ny = datetime(2026, 11, 28, 23, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    requests = _tick(harness, dagster_instance, "sis_weekly_schedule", saturday_23_ny)
    assert sorted(r.partition_key for r in requests) == ["w1", "w3"]


def test_unreviewed_clients_are_scheduled_as_previews(harness, dagster_instance):
    _clients(harness)
    saturday_23_ny = datetime(2026, 11, 28, 23, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    requests = {
        r.partition_key: set(r.asset_selection)
        for r in _tick(harness, dagster_instance, "sis_weekly_schedule", saturday_23_ny)
    }
    assert requests == {"w1": set(ALL_ASSETS), "w3": set(PREVIEW_ASSETS)}


def test_client_cron_and_timezone_are_honoured(harness, dagster_instance):
    _clients(harness)
    monday_0630_paris = datetime(2026, 11, 30, 6, 30, tzinfo=ZoneInfo("Europe/Paris")).astimezone(UTC)
    assert [
        r.partition_key for r in _tick(harness, dagster_instance, "sis_weekly_schedule", monday_0630_paris)
    ] == ["w2"]
    # Five minutes later nothing is due any more.
    later = monday_0630_paris.replace(minute=monday_0630_paris.minute + 5)
    assert _tick(harness, dagster_instance, "sis_weekly_schedule", later) == []


def test_a_cron_between_ticks_fires_at_the_next_tick_once(harness, dagster_instance):
    harness.add_client("w4", create_bucket=False, cron="7 9 * * 2", timezone="UTC")
    at_0705 = datetime(2026, 12, 1, 9, 5, tzinfo=UTC)
    at_0710 = datetime(2026, 12, 1, 9, 10, tzinfo=UTC)
    at_0715 = datetime(2026, 12, 1, 9, 15, tzinfo=UTC)
    assert _tick(harness, dagster_instance, "sis_weekly_schedule", at_0705) == []
    fired = _tick(harness, dagster_instance, "sis_weekly_schedule", at_0710)
    assert [r.partition_key for r in fired] == ["w4"]
    assert _tick(harness, dagster_instance, "sis_weekly_schedule", at_0715) == []


def test_daily_schedule_runs_daily_clients_at_two_in_their_zone(harness, dagster_instance):
    _clients(harness)
    two_ny = datetime(2026, 11, 24, 2, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    two_tokyo = datetime(2026, 11, 24, 2, 0, tzinfo=ZoneInfo("Asia/Tokyo")).astimezone(UTC)
    assert [r.partition_key for r in _tick(harness, dagster_instance, "sis_daily_schedule", two_ny)] == ["d1"]
    assert [r.partition_key for r in _tick(harness, dagster_instance, "sis_daily_schedule", two_tokyo)] == [
        "d2"
    ]


def test_run_keys_make_a_reevaluated_tick_start_nothing_twice(harness, dagster_instance):
    _clients(harness)
    saturday_23_ny = datetime(2026, 11, 28, 23, 0, tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)
    first = _tick(harness, dagster_instance, "sis_weekly_schedule", saturday_23_ny)
    second = _tick(harness, dagster_instance, "sis_weekly_schedule", saturday_23_ny)
    assert [r.run_key for r in first] == [r.run_key for r in second]
    assert len({r.run_key for r in first}) == len(first)


def test_over_a_week_each_client_runs_exactly_as_its_cron_says(harness):
    from sis_pipeline.registry import load_registry
    from sis_pipeline.schedules import scheduled_run_requests

    _clients(harness)
    registry = load_registry(harness.registry_path)
    fired: list[str] = []
    tick = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)
    while tick < datetime(2026, 11, 30, 0, 0, tzinfo=UTC):
        for name, mode in (("sis_weekly_schedule", "weekly"), ("sis_daily_schedule", "daily")):
            fired += [r.partition_key for r in scheduled_run_requests(name, mode, registry, tick)]
        tick += timedelta(minutes=5)
    assert "m1" not in fired and "u1" not in fired
    assert {c: fired.count(c) for c in ("w1", "w2", "w3", "d1", "d2")} == {
        "w1": 1,
        "w2": 1,
        "w3": 1,
        "d1": 7,
        "d2": 7,
    }
