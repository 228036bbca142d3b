"""Applying syncs to a real warehouse (PRODUCT.md §6), each test on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time

import pandas as pd
import pytest
import sqlalchemy as sa

from sis_pipeline import sync_plan
from sis_pipeline.warehouse import Warehouse, bulk, store
from sis_pipeline_tests.warehouse_builders import SyncFile, client, communities_of, dump, person, stored


@pytest.fixture
def warehouse(warehouse_url):
    wh = Warehouse(warehouse_url)
    wh.upgrade()
    yield wh
    wh.dispose()


def test_new_changed_and_identical_rows_are_counted_inserted_updated_unchanged(warehouse):
    cfg = client()
    SyncFile(cfg, [person(1), person(2), person(3)]).apply(warehouse)
    outcome = SyncFile(cfg, [person(1), person(2, last_name="Renamed"), person(3), person(4)]).apply(
        warehouse
    )
    assert outcome.status == "applied"
    assert outcome.counts == {
        "inserted": 1,
        "updated": 1,
        "unchanged_rows": 2,
        "reactivated": 0,
        "deprovisioned": 0,
        "deleted": 0,
        "missing": 0,
    }
    rows = stored(warehouse)
    assert rows.loc["student2@school.edu", "last_name"] == "Renamed"
    assert rows.loc["student4@school.edu", "status"] == "active"


def test_unchanged_rows_are_not_rewritten(warehouse):
    cfg = client()
    first = SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    before = stored(warehouse).loc["student1@school.edu"]
    second = SyncFile(cfg, [person(1), person(2, first_name="Changed")]).apply(warehouse)
    after = stored(warehouse)
    assert after.loc["student1@school.edu"].equals(before)
    assert after.loc["student1@school.edu", "last_sync_id"] == first.sync_id
    assert after.loc["student2@school.edu", "last_sync_id"] == second.sync_id


def test_sync_log_row_records_file_and_counts(warehouse):
    cfg = client()
    sync_file = SyncFile(
        cfg, [person(1), person(2)], rejected_rows=[(4, "email", "invalid_email", "not an email")]
    )
    outcome = sync_file.apply(warehouse)
    row = warehouse.sync_log("22").iloc[0]
    assert row["sync_id"] == outcome.sync_id
    assert row["status"] == "applied"
    assert row["sha256"] == sync_file.version.sha256
    assert (row["rows_total"], row["rows_valid"], row["rows_rejected"]) == (3, 2, 1)
    assert (row["inserted"], row["updated"], row["unchanged_rows"]) == (2, 0, 0)
    assert row["run_id"] == "test-run"
    assert row["finished_at"] is not None


def test_text_values_survive_the_round_trip_exactly(warehouse):
    cfg = client()
    tricky = 'O\'Brien, "Jr."\nline two \\ é 日本'
    SyncFile(cfg, [person(1, first_name=tricky, last_name="", user_login=None, graduation_year=None)]).apply(
        warehouse
    )
    row = stored(warehouse).loc["student1@school.edu"]
    assert row["first_name"] == tricky
    assert row["last_name"] == ""
    assert row["user_login"] is None
    assert row["graduation_year"] is None
    # Reading back and comparing finds no change, so nothing is rewritten.
    outcome = SyncFile(
        cfg,
        [person(1, first_name=tricky, last_name="", user_login=None, graduation_year=None)],
        sha256="b" * 64,
    ).apply(warehouse)
    assert outcome.counts["unchanged_rows"] == 1


def test_user_missing_from_n_applied_files_is_deprovisioned_then_reactivated(warehouse):
    cfg = client(auto_deprovision=True, deprovision_after_missing_files=2)
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    first_miss = SyncFile(cfg, [person(1)], sha256="1" * 64).apply(warehouse)
    assert first_miss.counts["missing"] == 1
    assert stored(warehouse).loc["student2@school.edu", ["status", "missing_count"]].tolist() == ["active", 1]
    second_miss = SyncFile(cfg, [person(1)], sha256="2" * 64).apply(warehouse)
    assert second_miss.counts["deprovisioned"] == 1
    assert stored(warehouse).loc["student2@school.edu", ["status", "missing_count"]].tolist() == [
        "deprovisioned",
        2,
    ]
    back = SyncFile(cfg, [person(1), person(2)], sha256="3" * 64).apply(warehouse)
    assert back.counts["reactivated"] == 1
    assert stored(warehouse).loc["student2@school.edu", ["status", "missing_count"]].tolist() == ["active", 0]


def test_absent_users_are_kept_without_auto_deprovision(warehouse):
    cfg = client(auto_deprovision=False)
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    SyncFile(cfg, [person(1)]).apply(warehouse)
    assert stored(warehouse).loc["student2@school.edu", ["status", "missing_count"]].tolist() == ["active", 0]


def test_delete_flag_marks_user_deleted_and_removes_communities(warehouse):
    cfg = client()
    chess = ("student1@school.edu", "Clubs", "Chess")
    SyncFile(cfg, [person(1), person(2)], communities=[chess]).apply(warehouse)
    outcome = SyncFile(cfg, [person(1, delete=True), person(2)], communities=[chess]).apply(warehouse)
    assert outcome.counts["deleted"] == 1
    assert stored(warehouse).loc["student1@school.edu", "status"] == "deleted"
    assert communities_of(warehouse) == set()
    restored = SyncFile(cfg, [person(1), person(2)], communities=[chess]).apply(warehouse)
    assert restored.counts["reactivated"] == 1
    assert stored(warehouse).loc["student1@school.edu", "status"] == "active"
    assert communities_of(warehouse) == {chess}


def test_email_opt_out_is_one_way(warehouse):
    cfg = client()
    SyncFile(cfg, [person(1, email_opt_out=True), person(2)]).apply(warehouse)
    SyncFile(cfg, [person(1, email_opt_out=False), person(2, email_opt_out=False)]).apply(warehouse)
    rows = stored(warehouse)
    assert bool(rows.loc["student1@school.edu", "email_opt_out"]) is True
    assert bool(rows.loc["student2@school.edu", "email_opt_out"]) is False


def test_opt_out_set_by_the_user_is_never_cleared_by_a_file(warehouse):
    cfg = client()
    SyncFile(cfg, [person(1)]).apply(warehouse)
    with warehouse.engine.begin() as conn:  # the user's own preference, set outside the pipeline
        conn.exec_driver_sql("UPDATE subscribers SET email_opt_out = true")
    outcome = SyncFile(cfg, [person(1, first_name="Renamed", email_opt_out=False)]).apply(warehouse)
    assert outcome.counts["updated"] == 1
    assert bool(stored(warehouse).loc["student1@school.edu", "email_opt_out"]) is True


def test_communities_of_users_in_the_file_are_replaced(warehouse):
    cfg = client()
    one_students = ("student1@school.edu", "People/Audience", "Students")
    one_chess = ("student1@school.edu", "Clubs", "Chess")
    one_drama = ("student1@school.edu", "Clubs", "Drama")
    two_chess = ("student2@school.edu", "Clubs", "Chess")
    SyncFile(cfg, [person(1), person(2)], communities=[one_students, one_chess, two_chess]).apply(warehouse)
    SyncFile(cfg, [person(1)], communities=[one_students, one_drama]).apply(warehouse)
    # Student 2 is absent from the file: their communities are left as they were.
    assert communities_of(warehouse) == {one_students, one_drama, two_chess}


def _record_membership_writes(warehouse, monkeypatch) -> list[tuple[str, int]]:
    """(method, rows or keys) for every membership write the warehouse's bulk writer makes."""
    writer_class = bulk.writer_class_for(warehouse.engine.dialect.name)
    calls: list[tuple[str, int]] = []
    for name in ("remove_memberships", "add_memberships"):
        original = getattr(writer_class, name)

        def recording(self, client_id, data, _name=name, _original=original):
            if len(data):
                calls.append((_name, len(data)))
            return _original(self, client_id, data)

        monkeypatch.setattr(writer_class, name, recording)
    return calls


def test_communities_replaced_when_the_files_set_differs(warehouse):
    cfg = client()
    chess, drama = ("student1@school.edu", "Clubs", "Chess"), ("student1@school.edu", "Clubs", "Drama")
    SyncFile(cfg, [person(1), person(2)], communities=[chess]).apply(warehouse)
    outcome = SyncFile(cfg, [person(1), person(2)], communities=[drama]).apply(warehouse)
    assert communities_of(warehouse) == {drama}
    assert outcome.counts["updated"] == 0  # a membership-only change is not a profile update
    log = warehouse.sync_log("22").iloc[0]
    assert (log["communities_added"], log["communities_removed"]) == (1, 1)
    row = stored(warehouse).loc["student1@school.edu"]
    assert row["communities_signature"] == "Clubs\x1fDrama"
    assert row["last_sync_id"] == outcome.sync_id


def test_communities_untouched_when_the_files_set_is_the_same(warehouse, monkeypatch):
    cfg = client()
    chess = ("student1@school.edu", "Clubs", "Chess")
    first = SyncFile(cfg, [person(1), person(2)], communities=[chess]).apply(warehouse)
    calls = _record_membership_writes(warehouse, monkeypatch)
    SyncFile(cfg, [person(1), person(2, last_name="Renamed")], communities=[chess]).apply(warehouse)
    assert calls == []  # no membership row deleted or inserted
    assert communities_of(warehouse) == {chess}
    # The upsert's skip-unchanged WHERE still skips a row whose profile and signature are unchanged.
    assert stored(warehouse).loc["student1@school.edu", "last_sync_id"] == first.sync_id


def test_upsert_skips_a_row_handed_over_with_the_same_signature(warehouse):
    cfg = client()
    first = SyncFile(cfg, [person(1)], communities=[("student1@school.edu", "Clubs", "Chess")]).apply(
        warehouse
    )
    with warehouse.engine.begin() as conn:
        bulk.writer_for(conn).upsert_subscribers("22", first.plan.upsert_frame(), 999, store._now())
    assert stored(warehouse).loc["student1@school.edu", "last_sync_id"] == first.sync_id


def test_signature_written_for_inserts(warehouse):
    cfg = client()
    communities = [("student1@school.edu", "Clubs", "Chess"), ("student1@school.edu", "Arts", "Band")]
    SyncFile(cfg, [person(1), person(2)], communities=communities).apply(warehouse)
    signatures = stored(warehouse)["communities_signature"]
    assert signatures.to_dict() == {
        "student1@school.edu": "Arts\x1fBand\x1eClubs\x1fChess",
        "student2@school.edu": "",
    }


def test_deleted_user_loses_communities(warehouse):
    cfg = client()
    chess = ("student1@school.edu", "Clubs", "Chess")
    SyncFile(cfg, [person(1)], communities=[chess]).apply(warehouse)
    SyncFile(cfg, [person(1, delete=True)], communities=[chess]).apply(warehouse)
    assert communities_of(warehouse) == set()
    assert stored(warehouse).loc["student1@school.edu", "communities_signature"] == ""


def test_absent_user_keeps_communities(warehouse, monkeypatch):
    cfg = client(auto_deprovision=True, deprovision_after_missing_files=1, guard={"max_fraction": 1.0})
    chess = ("student2@school.edu", "Clubs", "Chess")
    SyncFile(cfg, [person(1), person(2)], communities=[chess]).apply(warehouse)
    calls = _record_membership_writes(warehouse, monkeypatch)
    SyncFile(cfg, [person(1)]).apply(warehouse)
    assert calls == []
    assert communities_of(warehouse) == {chess}
    assert stored(warehouse).loc["student2@school.edu", "status"] == "deprovisioned"


def test_status_summary_counts_active_and_lists_only_the_others(warehouse):
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0})
    SyncFile(cfg, [person(n) for n in range(4)]).apply(warehouse)
    SyncFile(cfg, [person(0), person(1), person(2, delete=True)]).apply(warehouse)
    SyncFile(client("57"), [person(9)]).apply(warehouse)  # another client's rows are not counted
    active, inactive = warehouse.status_summary("22")
    assert active == 2
    assert sorted(map(tuple, inactive[["subscriber_key", "status"]].to_numpy().tolist())) == [
        ("student2@school.edu", "deleted"),
        ("student3@school.edu", "deprovisioned"),
    ]
    found = warehouse.statuses_of(
        "22", pd.Series(["student2@school.edu", "nobody@school.edu", "student0@school.edu"])
    )
    assert dict(zip(found["subscriber_key"], found["status"], strict=True)) == {
        "student2@school.edu": "deleted",
        "student0@school.edu": "active",
    }


def test_subscriber_statuses_are_keys_and_statuses_only(warehouse):
    cfg = client()
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    SyncFile(cfg, [person(1), person(2, delete=True)]).apply(warehouse)
    statuses = warehouse.subscriber_statuses("22")
    assert list(statuses.columns) == ["subscriber_key", "status"]
    assert dict(zip(statuses["subscriber_key"], statuses["status"], strict=True)) == {
        "student1@school.edu": "active",
        "student2@school.edu": "deleted",
    }


def test_rejected_identity_is_never_deprovisioned(warehouse):
    cfg = client(auto_deprovision=True)
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    outcome = SyncFile(
        cfg,
        [person(1)],
        rejected_rows=[(3, "user_type", "multiple_user_types", "two user types")],
        protected=["student2@school.edu"],
    ).apply(warehouse)
    assert outcome.counts["deprovisioned"] == 0
    assert stored(warehouse).loc["student2@school.edu", ["status", "missing_count"]].tolist() == ["active", 0]


def test_guard_blocks_mass_deprovision_and_writes_only_the_log_row(warehouse):
    cfg = client(auto_deprovision=True, guard={"max_fraction": 0.1, "min_active": 10})
    SyncFile(cfg, [person(n) for n in range(20)]).apply(warehouse)
    before = dump(warehouse)
    outcome = SyncFile(
        cfg, [person(n) for n in range(10)], rejected_rows=[(99, "email", "invalid_email", "bad")]
    ).apply(warehouse)
    assert outcome.status == "blocked"
    assert outcome.plan is not None and outcome.plan.guard.deprovisions == 10
    after = dump(warehouse)
    assert {name: rows for name, rows in after.items() if name != "sis_sync_log"} == {
        name: rows for name, rows in before.items() if name != "sis_sync_log"
    }
    row = warehouse.sync_log("22").iloc[0]
    assert row["status"] == "blocked"
    assert (row["active_before"], row["deprovisioned"]) == (20, 10)
    assert "max_fraction" in row["message"]


def test_guard_override_applies_the_blocked_plan(warehouse):
    cfg = client(auto_deprovision=True, guard={"max_count": 2})
    SyncFile(cfg, [person(n) for n in range(5)]).apply(warehouse)
    sync_file = SyncFile(cfg, [person(0)])
    assert sync_file.apply(warehouse).status == "blocked"
    outcome = sync_file.apply(warehouse, override_guard=True)
    assert outcome.status == "applied"
    assert outcome.counts["deprovisioned"] == 4
    assert bool(warehouse.sync_log("22").iloc[0]["guard_overridden"]) is True
    assert (stored(warehouse)["status"] == "deprovisioned").sum() == 4


def test_same_file_is_unchanged_and_writes_only_the_log_row(warehouse):
    cfg = client(auto_deprovision=True)
    sync_file = SyncFile(cfg, [person(1), person(2)])
    sync_file.apply(warehouse)
    assert warehouse.last_applied_sha256("22") == sync_file.version.sha256
    before = dump(warehouse)
    outcome = sync_file.apply(warehouse)
    assert outcome.status == "unchanged"
    after = dump(warehouse)
    assert len(after["sis_sync_log"]) == len(before["sis_sync_log"]) + 1
    assert {k: v for k, v in after.items() if k != "sis_sync_log"} == {
        k: v for k, v in before.items() if k != "sis_sync_log"
    }


def test_forced_reapply_of_the_same_file_changes_nothing(warehouse):
    cfg = client(auto_deprovision=True, deprovision_after_missing_files=3)
    SyncFile(
        cfg, [person(1), person(2), person(3)], communities=[("student1@school.edu", "Clubs", "Chess")]
    ).apply(warehouse)
    sync_file = SyncFile(cfg, [person(1), person(2)], communities=[("student1@school.edu", "Clubs", "Chess")])
    sync_file.apply(warehouse)  # student3 missing once
    before = dump(warehouse)
    outcome = sync_file.apply(warehouse, force=True)
    assert outcome.status == "applied"
    assert outcome.counts == {
        "inserted": 0,
        "updated": 0,
        "unchanged_rows": 2,
        "reactivated": 0,
        "deprovisioned": 0,
        "deleted": 0,
        "missing": 0,
    }
    after = dump(warehouse)
    assert {k: v for k, v in after.items() if k not in ("sis_sync_log", "sis_rejected_rows")} == {
        k: v for k, v in before.items() if k not in ("sis_sync_log", "sis_rejected_rows")
    }
    assert bool(warehouse.sync_log("22").iloc[0]["forced"]) is True


def test_sync_of_one_client_never_touches_another_clients_rows(warehouse):
    school_a = client("22", auto_deprovision=True, guard={"max_fraction": 1.0})
    school_b = client("23", auto_deprovision=True, guard={"max_fraction": 1.0})
    shared = [person(1), person(2)]  # the same people (same keys) at both schools
    SyncFile(school_a, shared, communities=[("student1@school.edu", "Clubs", "Chess")]).apply(warehouse)
    SyncFile(school_b, shared, communities=[("student1@school.edu", "Clubs", "Chess")]).apply(warehouse)
    before_b = (stored(warehouse, "23"), communities_of(warehouse, "23"))
    # School A deletes one, drops one, renames... none of it may reach school B.
    SyncFile(school_a, [person(1, delete=True), person(3, first_name="New")], sha256="c" * 64).apply(
        warehouse
    )
    assert stored(warehouse, "23").equals(before_b[0])
    assert communities_of(warehouse, "23") == before_b[1]
    assert warehouse.sync_log("23")["client_id"].tolist() == ["23"]
    assert stored(warehouse, "22")["status"].to_dict() == {
        "student1@school.edu": "deleted",
        "student2@school.edu": "deprovisioned",
        "student3@school.edu": "active",
    }


def test_apply_refuses_a_mapped_file_of_another_client(warehouse):
    sync_file = SyncFile(client("22"), [person(1)])
    with pytest.raises(ValueError, match="client"):
        warehouse.apply(
            client=client("23"),
            validated=sync_file.validated,
            mapped=sync_file.mapped,
            file=sync_file.version,
            run_id=None,
        )


def test_failure_after_half_the_rows_leaves_the_warehouse_as_before(warehouse, monkeypatch):
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0})
    SyncFile(
        cfg, [person(n) for n in range(40)], communities=[("student1@school.edu", "Clubs", "Chess")]
    ).apply(warehouse)
    before = dump(warehouse)
    writer_class = bulk.writer_class_for(warehouse.engine.dialect.name)
    original = writer_class.upsert_subscribers

    def write_half_then_fail(self, client_id, frame, sync_id, now):
        original(self, client_id, frame.iloc[: len(frame) // 2], sync_id, now)
        raise RuntimeError("injected failure after half the rows")

    monkeypatch.setattr(writer_class, "upsert_subscribers", write_half_then_fail)
    changed = [person(n, first_name=f"Changed{n}") for n in range(20, 60)]
    sync_file = SyncFile(
        cfg,
        changed,
        communities=[("student30@school.edu", "Clubs", "Drama")],
        rejected_rows=[(9, "email", "invalid_email", "x")],
    )
    with pytest.raises(RuntimeError, match="injected"):
        sync_file.apply(warehouse)
    after = dump(warehouse)
    assert {k: v for k, v in after.items() if k != "sis_sync_log"} == {
        k: v for k, v in before.items() if k != "sis_sync_log"
    }
    assert after["sis_sync_log"][: len(before["sis_sync_log"])] == before["sis_sync_log"]
    log = warehouse.sync_log("22")
    assert len(log) == len(before["sis_sync_log"]) + 1
    failed = log.iloc[0]
    assert failed["status"] == "failed"
    assert failed["sha256"] == sync_file.version.sha256
    assert "RuntimeError" in failed["message"]
    # A failed file is not "applied": the next run applies it instead of calling it unchanged.
    monkeypatch.setattr(writer_class, "upsert_subscribers", original)
    assert sync_file.apply(warehouse).status == "applied"


def test_concurrent_applies_for_one_client_serialise(warehouse, monkeypatch):
    cfg = client()
    real_plan = store.build_sync_plan

    def slow_plan(*args, **kwargs):
        plan = real_plan(*args, **kwargs)
        time.sleep(0.3)  # widen the window between reading the rows and writing them
        return plan

    monkeypatch.setattr(store, "build_sync_plan", slow_plan)
    files = {
        "a": SyncFile(cfg, [person(n, first_name="A") for n in range(30)]),
        "b": SyncFile(cfg, [person(n, first_name="B") for n in range(30)]),
    }
    outcomes: dict[str, object] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(name: str) -> None:
        try:
            start.wait()
            outcomes[name] = files[name].apply(warehouse)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(name,)) for name in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    first, second = sorted(outcomes.values(), key=lambda o: o.sync_id)
    # The first sync inserted everyone; the second saw those rows and updated them all.
    assert (first.counts["inserted"], first.counts["updated"]) == (30, 0)
    assert (second.counts["inserted"], second.counts["updated"]) == (0, 30)
    last_name = next(name for name, o in outcomes.items() if o is second)
    assert set(stored(warehouse)["first_name"]) == {last_name.upper()}


def test_rejected_rows_are_stored_with_the_applied_sync(warehouse):
    cfg = client()
    outcome = SyncFile(
        cfg,
        [person(1)],
        rejected_rows=[
            (3, "email", "invalid_email", "not an email"),
            (5, None, "wrong_field_count", "7 fields"),
        ],
    ).apply(warehouse)
    rejected = warehouse.rejected_rows(outcome.sync_id)
    assert rejected.astype(object).where(rejected.notna(), None).to_dict("records") == [
        {"line_number": 3, "column_name": "email", "reason_code": "invalid_email", "message": "not an email"},
        {"line_number": 5, "column_name": None, "reason_code": "wrong_field_count", "message": "7 fields"},
    ]


def test_unchanged_sync_stores_no_rejected_rows(warehouse):
    cfg = client()
    sync_file = SyncFile(cfg, [person(1)], rejected_rows=[(3, "email", "invalid_email", "x")])
    sync_file.apply(warehouse)
    outcome = sync_file.apply(warehouse)
    assert outcome.status == "unchanged"
    assert warehouse.rejected_rows(outcome.sync_id).empty


def test_preview_writes_nothing_and_record_logs_it_with_rejected_rows(warehouse):
    cfg = client(auto_deprovision=True)
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    before = dump(warehouse)
    sync_file = SyncFile(cfg, [person(1), person(3)], rejected_rows=[(3, "email", "invalid_email", "x")])
    plan = warehouse.preview(sync_file.mapped, cfg)
    assert plan.counts()["inserted"] == 1
    assert plan.counts()["deprovisioned"] == 1
    assert dump(warehouse) == before
    outcome = warehouse.record(
        client_id="22",
        status="preview",
        file=sync_file.version,
        validated=sync_file.validated,
        run_id="r1",
        message="auto sync disabled",
        plan=plan,
    )
    row = warehouse.sync_log("22").iloc[0]
    assert (row["status"], row["inserted"], row["deprovisioned"]) == ("preview", 1, 1)
    assert len(warehouse.rejected_rows(outcome.sync_id)) == 1
    assert {k: v for k, v in dump(warehouse).items() if k not in ("sis_sync_log", "sis_rejected_rows")} == {
        k: v for k, v in before.items() if k not in ("sis_sync_log", "sis_rejected_rows")
    }
    # A preview is not an applied file.
    assert warehouse.last_applied_sha256("22") != sync_file.version.sha256


def test_ignored_file_is_logged_and_protects_everyone(warehouse):
    from sis_pipeline.sisfile.result import FileProblem

    cfg = client(auto_deprovision=True)
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    before = dump(warehouse)
    sync_file = SyncFile(cfg, [])
    sync_file.validated.problem = FileProblem(
        code="missing_column", message="required column email is missing"
    )
    outcome = sync_file.apply(warehouse)
    assert outcome.status == "ignored"
    assert {k: v for k, v in dump(warehouse).items() if k != "sis_sync_log"} == {
        k: v for k, v in before.items() if k != "sis_sync_log"
    }
    assert warehouse.sync_log("22").iloc[0]["message"] == "required column email is missing"


def test_record_rejects_an_unknown_status(warehouse):
    with pytest.raises(ValueError, match="unknown sync status"):
        warehouse.record(client_id="22", status="done", file=None, validated=None, run_id=None, message="")


def test_current_subscribers_match_the_plan_columns(warehouse):
    SyncFile(client(), [person(1)]).apply(warehouse)
    current = warehouse.current_subscribers("22")
    assert list(current.columns) == list(sync_plan.CURRENT_COLUMNS)
    assert current["subscriber_key"].tolist() == ["student1@school.edu"]


def test_a_previewed_plan_is_reused_when_nothing_was_applied_since(warehouse, monkeypatch):
    cfg = client()
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    second = SyncFile(cfg, [person(1), person(3)])
    planned = warehouse.preview(second.mapped, cfg, file=second.version)
    calls = []
    original = store.build_sync_plan
    monkeypatch.setattr(store, "build_sync_plan", lambda *a, **k: calls.append(1) or original(*a, **k))
    outcome = second.apply(warehouse, planned=planned)
    assert calls == []  # the preview's plan was applied, not planned again
    assert outcome.counts["inserted"] == 1


def test_a_stale_previewed_plan_is_planned_again_under_the_lock(warehouse):
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0, "min_active": 0})
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    late = SyncFile(cfg, [person(1), person(2), person(3)])
    planned = warehouse.preview(late.mapped, cfg, file=late.version)  # plans person 3 as an insert
    SyncFile(cfg, [person(1), person(2), person(3)], sha256="f" * 64).apply(
        warehouse
    )  # someone else got there
    outcome = late.apply(warehouse, planned=planned)
    assert outcome.status == "applied"
    assert outcome.counts["inserted"] == 0 and outcome.counts["unchanged_rows"] == 3
    assert set(stored(warehouse)["status"]) == {"active"}


def test_a_snapshot_taken_before_another_sync_gives_a_plan_that_is_planned_again(warehouse):
    # The import reads the snapshot while it validates the file: another sync may land in between.
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0, "min_active": 0})
    SyncFile(cfg, [person(1), person(2)]).apply(warehouse)
    snapshot = warehouse.snapshot("22")
    assert sorted(snapshot.current["subscriber_key"]) == ["student1@school.edu", "student2@school.edu"]
    SyncFile(cfg, [person(1), person(2), person(3)], sha256="f" * 64).apply(warehouse)
    late = SyncFile(cfg, [person(1), person(3)])
    planned = warehouse.preview(late.mapped, cfg, file=late.version, snapshot=snapshot)
    assert planned.counts()["inserted"] == 1  # planned against the snapshot: person 3 was not there yet
    outcome = late.apply(warehouse, planned=planned)
    assert outcome.counts["inserted"] == 0 and outcome.counts["unchanged_rows"] == 2
    assert outcome.counts["deprovisioned"] == 1
    assert stored(warehouse)["status"].to_dict() == {
        "student1@school.edu": "active",
        "student2@school.edu": "deprovisioned",
        "student3@school.edu": "active",
    }


def test_a_snapshot_of_another_client_is_refused(warehouse):
    other = client("23")
    SyncFile(other, [person(1)]).apply(warehouse)
    mine = SyncFile(client(), [person(1)])
    with pytest.raises(ValueError, match="snapshot of client 23 used to plan client 22"):
        warehouse.preview(mine.mapped, client(), snapshot=warehouse.snapshot("23"))


def test_rows_read_in_batches_are_the_same_rows(warehouse, monkeypatch):
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0})
    SyncFile(cfg, [person(n, user_login=f"22_u{n}" if n % 2 else None) for n in range(7)]).apply(warehouse)
    SyncFile(cfg, [person(n) for n in range(5)]).apply(warehouse)
    whole = warehouse.current_subscribers("22").sort_values("subscriber_key", ignore_index=True)
    monkeypatch.setattr(bulk, "FETCH_ROWS", 2)  # four batches, the last one short
    batched = warehouse.current_subscribers("22").sort_values("subscriber_key", ignore_index=True)
    pd.testing.assert_frame_equal(batched, whole)
    assert len(whole) == 7 and set(whole["status"]) == {"active", "deprovisioned"}


def _reltuples(warehouse: Warehouse, table: str) -> float:
    with warehouse.engine.connect() as conn:
        return conn.execute(
            sa.text(f"SELECT reltuples FROM pg_class WHERE oid = '{table}'::regclass")
        ).scalar()


def test_a_bulk_load_refreshes_the_planner_statistics_in_its_own_sync(postgres_schema_url):
    # Without statistics the next sync's joins are planned blind; autovacuum would only get there later.
    warehouse = Warehouse(postgres_schema_url)
    warehouse.upgrade()
    try:
        assert _reltuples(warehouse, "subscribers") == -1  # never analysed
        cfg = client()

        def load(people: int) -> None:
            clubs = [(f"student{n}@school.edu", "Clubs", "Chess") for n in range(people)]
            SyncFile(cfg, [person(n) for n in range(people)], communities=clubs).apply(warehouse)

        load(200)
        assert _reltuples(warehouse, "subscribers") == 200
        assert _reltuples(warehouse, "subscriber_communities") == 200
        load(210)  # 10 more is below autovacuum's threshold (10% + 50): no ANALYZE, the estimate stays
        assert _reltuples(warehouse, "subscribers") == 200
        load(510)  # 300 more is above it
        assert _reltuples(warehouse, "subscribers") == 510
    finally:
        warehouse.dispose()


def test_sqlite_has_no_statistics_to_refresh(tmp_path):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    warehouse.upgrade()
    with warehouse.engine.begin() as conn:
        assert bulk.writer_for(conn).refresh_statistics(10**6) is False
    warehouse.dispose()


def test_absent_users_of_a_big_table_are_updated_by_key_probes_and_the_settings_restored(
    postgres_schema_url, monkeypatch
):
    # A few absent users of many: hash and merge joins are switched off for that UPDATE only.
    warehouse = Warehouse(postgres_schema_url)
    warehouse.upgrade()
    seen = []
    original = bulk.PostgresBulkWriter._settings

    def recording(self, *statements):
        seen.extend(statements)
        original(self, *statements)

    monkeypatch.setattr(bulk.PostgresBulkWriter, "_settings", recording)
    try:
        cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0})
        SyncFile(cfg, [person(n) for n in range(300)]).apply(warehouse)  # analysed: 300 rows estimated
        outcome = SyncFile(cfg, [person(n) for n in range(290)]).apply(warehouse)
        assert outcome.counts["deprovisioned"] == 10
        assert seen == [
            "SET LOCAL enable_hashjoin = off",
            "SET LOCAL enable_mergejoin = off",
            "RESET enable_hashjoin",
            "RESET enable_mergejoin",
        ]
        assert (stored(warehouse)["status"] == "deprovisioned").sum() == 10
        seen.clear()
        SyncFile(cfg, [person(n) for n in range(200)]).apply(warehouse)  # 90 of 300 is not "few"
        assert seen == []
        with warehouse.engine.begin() as conn:
            writer = bulk.writer_for(conn)
            writer._settings("SET LOCAL enable_hashjoin = off")
            writer._settings("RESET enable_hashjoin")
            assert conn.exec_driver_sql("SHOW enable_hashjoin").scalar() == "on"
    finally:
        warehouse.dispose()


def test_the_snapshot_holds_exactly_the_rows_a_plain_read_does(warehouse):
    # PostgreSQL reads the snapshot through another driver (ADBC): same rows, values, nulls and types.
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0, "min_active": 0})
    rows = [
        person(1, first_name='Zoë "Zo", Jr.', last_name="Ødegård", user_login="22_zoe", email_opt_out=True),
        person(2, graduation_year=None, user_type=None, first_name=None),
        person(3, last_name="O'Neil\\x"),
        person(4),
    ]
    SyncFile(cfg, rows).apply(warehouse)
    SyncFile(cfg, rows[:3], sha256="e" * 64).apply(warehouse)  # person 4 missing once
    plain = warehouse.current_subscribers("22").sort_values("subscriber_key", ignore_index=True)
    snap = warehouse.snapshot("22").current.sort_values("subscriber_key", ignore_index=True)
    pd.testing.assert_frame_equal(snap, plain)
    assert plain["missing_count"].tolist() == [0, 0, 0, 1] and plain["first_name"].isna().sum() == 1
    empty = warehouse.snapshot("no-such-client").current
    pd.testing.assert_frame_equal(empty, warehouse.current_subscribers("no-such-client"))


def test_the_snapshot_rows_come_from_the_snapshot_of_its_basis(warehouse, monkeypatch):
    """On PostgreSQL the rows are read on a second connection, which must see the read transaction's own
    snapshot: a sync committed in between is in neither the basis nor the rows."""
    if warehouse.engine.dialect.name != "postgresql":
        pytest.skip("SQLite reads the snapshot on the transaction's own connection")
    cfg = client(auto_deprovision=True, guard={"max_fraction": 1.0, "min_active": 0})
    first = SyncFile(cfg, [person(1)])
    first.apply(warehouse)
    real_connect = bulk.adbc_connect

    def connect_after_another_sync(uri):
        SyncFile(cfg, [person(1), person(2)], sha256="d" * 64).apply(warehouse)  # commits meanwhile
        return real_connect(uri)

    monkeypatch.setattr(bulk, "adbc_connect", connect_after_another_sync)
    snapshot = warehouse.snapshot("22")
    assert snapshot.last_sha256 == first.version.sha256
    assert snapshot.current["subscriber_key"].tolist() == ["student1@school.edu"]
    assert len(warehouse.current_subscribers("22")) == 2
