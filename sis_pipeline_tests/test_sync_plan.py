"""The sync plan as a pure function: mapped file + current rows + client config -> changes and guard."""

from __future__ import annotations

import dataclasses

import pandas as pd

from sis_pipeline.sync_plan import CURRENT_COLUMNS, build_sync_plan, communities_signature
from sis_pipeline_tests.warehouse_builders import SyncFile, client, memberships, person


def current(rows: list[dict]) -> pd.DataFrame:
    """Warehouse rows: person() fields plus status and missing_count."""
    return pd.DataFrame(rows, columns=list(CURRENT_COLUMNS))


def stored_person(n: int, status: str = "active", missing_count: int = 0, **fields) -> dict:
    return {**person(n, **fields), "status": status, "missing_count": missing_count}


def plan_for(cfg, file_rows, stored_rows, **kwargs):
    sync_file = SyncFile(
        cfg, file_rows, **{k: kwargs.pop(k) for k in ("communities", "protected") if k in kwargs}
    )
    return build_sync_plan(sync_file.mapped, current(stored_rows), cfg, **kwargs)


def test_new_changed_and_identical_rows_are_inserts_updates_and_unchanged():
    plan = plan_for(
        client(),
        [person(1), person(2, last_name="Renamed"), person(3)],
        [stored_person(2), stored_person(3)],
    )
    assert plan.counts() == {
        "inserted": 1,
        "updated": 1,
        "unchanged_rows": 1,
        "reactivated": 0,
        "deprovisioned": 0,
        "deleted": 0,
        "missing": 0,
    }
    assert plan.inserts["subscriber_key"].tolist() == ["student1@school.edu"]
    assert plan.updates["changed_fields"].tolist() == ["last_name"]


def test_null_and_equal_values_are_not_changes():
    plan = plan_for(
        client(), [person(1, user_login=None, graduation_year=None)], [stored_person(1, graduation_year=None)]
    )
    assert plan.counts()["unchanged_rows"] == 1


def test_file_cannot_clear_an_opt_out():
    plan = plan_for(client(), [person(1, email_opt_out=False)], [stored_person(1, email_opt_out=True)])
    assert plan.counts()["unchanged_rows"] == 1


def test_file_can_set_an_opt_out():
    plan = plan_for(client(), [person(1, email_opt_out=True)], [stored_person(1)])
    assert plan.updates["changed_fields"].tolist() == ["email_opt_out"]
    assert plan.updates["email_opt_out"].tolist() == [True]


def test_absent_user_is_only_counted_missing_with_auto_deprovision():
    plan = plan_for(client(auto_deprovision=False), [person(1)], [stored_person(1), stored_person(2)])
    assert plan.counts()["missing"] == 0
    assert plan.counts()["deprovisioned"] == 0


def test_absent_user_is_deprovisioned_when_missing_count_reaches_threshold():
    cfg = client(auto_deprovision=True, deprovision_after_missing_files=2)
    plan = plan_for(cfg, [person(1)], [stored_person(1), stored_person(2), stored_person(3, missing_count=1)])
    assert plan.missing.to_dict("records") == [{"subscriber_key": "student2@school.edu", "missing_count": 1}]
    assert plan.deprovisions.to_dict("records") == [
        {"subscriber_key": "student3@school.edu", "missing_count": 2}
    ]


def test_seen_again_resets_missing_count():
    plan = plan_for(
        client(auto_deprovision=True, deprovision_after_missing_files=3),
        [person(1)],
        [stored_person(1, missing_count=2)],
    )
    assert plan.updates["changed_fields"].tolist() == ["missing_count"]
    assert plan.updates["missing_count"].tolist() == [0]


def test_protected_identity_is_never_missing():
    cfg = client(auto_deprovision=True)
    plan = plan_for(cfg, [person(1)], [stored_person(1), stored_person(2)], protected=["student2@school.edu"])
    assert plan.counts()["deprovisioned"] == 0
    assert plan.counts()["missing"] == 0


def test_user_rejected_for_blank_identifier_is_protected_by_email():
    # identifier user_id: the stored key is the prefixed id, but the rejected row only had an email
    cfg = client(auto_deprovision=True, identifier="user_id")
    keep = stored_person(2, subscriber_key="22_u2", user_login="22_u2")
    plan = plan_for(
        cfg,
        [person(1, subscriber_key="22_u1", user_login="22_u1")],
        [stored_person(1, subscriber_key="22_u1", user_login="22_u1"), keep],
        protected=["22_u1", "student2@school.edu"],
    )
    assert plan.counts()["deprovisioned"] == 0
    assert plan.counts()["missing"] == 0


def test_user_rejected_for_invalid_email_is_protected_by_stored_login():
    # identifier email: the row's email was unusable, but its student id names the stored user
    cfg = client(auto_deprovision=True)
    keep = stored_person(2, user_login="22_u2")
    plan = plan_for(cfg, [person(1)], [stored_person(1), keep], protected=["student1@school.edu", "22_u2"])
    assert plan.counts()["deprovisioned"] == 0
    assert plan.counts()["missing"] == 0
    # and without that protection the same user is deprovisioned (the rule above is what keeps them)
    unprotected = plan_for(cfg, [person(1)], [stored_person(1), keep], protected=["student1@school.edu"])
    assert unprotected.counts()["deprovisioned"] == 1


def test_only_active_users_count_towards_missing():
    cfg = client(auto_deprovision=True)
    plan = plan_for(
        cfg,
        [person(1)],
        [stored_person(1), stored_person(2, status="deprovisioned"), stored_person(3, status="deleted")],
    )
    assert plan.counts()["deprovisioned"] == 0


def test_reappearing_user_is_reactivated():
    plan = plan_for(
        client(),
        [person(1), person(2)],
        [stored_person(1, status="deprovisioned"), stored_person(2, status="deleted")],
    )
    assert sorted(plan.reactivations["subscriber_key"]) == ["student1@school.edu", "student2@school.edu"]
    assert set(plan.reactivations["status"]) == {"active"}


def test_delete_flag_deletes_an_existing_user_and_skips_an_unknown_one():
    plan = plan_for(client(), [person(1, delete=True), person(2, delete=True)], [stored_person(1)])
    assert plan.deletes["subscriber_key"].tolist() == ["student1@school.edu"]
    assert plan.skipped_deletes == 1
    assert plan.counts()["inserted"] == 0


def test_already_deleted_user_with_delete_flag_is_unchanged():
    plan = plan_for(client(), [person(1, delete=True)], [stored_person(1, status="deleted")])
    assert plan.counts()["unchanged_rows"] == 1


def test_forced_reapply_does_not_count_missing_again():
    cfg = client(auto_deprovision=True, deprovision_after_missing_files=2)
    plan = plan_for(
        cfg, [person(1)], [stored_person(1), stored_person(2, missing_count=1)], count_missing=False
    )
    assert plan.counts()["deprovisioned"] == 0
    assert plan.counts()["missing"] == 0


def test_guard_trips_above_max_fraction_of_active_users():
    cfg = client(auto_deprovision=True, guard={"max_fraction": 0.1, "min_active": 10})
    stored = [stored_person(n) for n in range(20)]
    plan = plan_for(cfg, [person(n) for n in range(17)], stored)  # 3 of 20 > 10%
    assert plan.guard.blocked
    assert (plan.guard.active_before, plan.guard.deprovisions, plan.guard.deletes) == (20, 3, 0)
    assert "max_fraction" in plan.guard.reason


def test_guard_allows_changes_up_to_max_fraction():
    cfg = client(auto_deprovision=True, guard={"max_fraction": 0.1, "min_active": 10})
    plan = plan_for(cfg, [person(n) for n in range(18)], [stored_person(n) for n in range(20)])  # 2 of 20
    assert not plan.guard.blocked
    assert not plan.guard.tripped


def test_guard_fraction_ignored_below_min_active():
    cfg = client(auto_deprovision=True, guard={"max_fraction": 0.1, "min_active": 100})
    plan = plan_for(cfg, [person(0)], [stored_person(n) for n in range(20)])
    assert not plan.guard.blocked


def test_guard_max_count_applies_regardless_of_min_active():
    cfg = client(guard={"max_count": 1, "min_active": 100})
    plan = plan_for(
        cfg, [person(0, delete=True), person(1, delete=True)], [stored_person(0), stored_person(1)]
    )
    assert plan.guard.blocked
    assert "max_count" in plan.guard.reason


def test_guard_override_keeps_the_verdict_visible():
    cfg = client(guard={"max_count": 0})
    plan = plan_for(cfg, [person(0, delete=True)], [stored_person(0)], override_guard=True)
    assert not plan.guard.blocked
    assert plan.guard.tripped and plan.guard.overridden


def signed(n: int, pairs: list[tuple[str, str]], **fields) -> dict:
    """A stored user whose communities_signature records `pairs` (group, community)."""
    keyed = memberships([(person(n)["subscriber_key"], g, c) for g, c in pairs])
    signature = communities_signature(keyed, pd.Series([person(n)["subscriber_key"]]))
    return stored_person(n, communities_signature=signature[0].as_py(), **fields)


def test_signature_is_the_sorted_pairs_joined_by_unit_and_record_separators():
    keyed = memberships(
        [
            ("a@x.edu", "People/Audience", "Students"),
            ("b@x.edu", "Clubs", "Drama"),
            ("a@x.edu", "Clubs", "Chess"),
        ]
    )
    signature = communities_signature(keyed, pd.Series(["a@x.edu", "b@x.edu", "c@x.edu"]))
    assert signature.to_pylist() == [
        "Clubs\x1fChess\x1ePeople/Audience\x1fStudents",
        "Clubs\x1fDrama",
        "",
    ]


def test_communities_replaced_when_the_files_set_differs():
    cfg = client()
    plan = plan_for(
        cfg,
        [person(1)],
        [signed(1, [("People/Audience", "Students"), ("Clubs", "Chess")])],
        communities=[
            ("student1@school.edu", "People/Audience", "Students"),
            ("student1@school.edu", "Clubs", "Drama"),
        ],
    )
    assert plan.memberships_replace_keys.tolist() == ["student1@school.edu"]
    assert sorted(plan.memberships_add.values.tolist()) == [
        ["student1@school.edu", "Clubs", "Drama"],
        ["student1@school.edu", "People/Audience", "Students"],
    ]
    # Net counts: one community swapped for another; a membership-only change is not an update.
    assert plan.membership_counts() == {"communities_added": 1, "communities_removed": 1}
    assert plan.counts()["updated"] == 0 and plan.counts()["unchanged_rows"] == 1
    assert plan.upsert_frame()["communities_signature"].tolist() == [
        "Clubs\x1fDrama\x1ePeople/Audience\x1fStudents"
    ]


def test_communities_untouched_when_the_files_set_is_the_same():
    plan = plan_for(
        client(),
        [person(1)],
        [signed(1, [("Clubs", "Chess")])],
        communities=[("student1@school.edu", "Clubs", "Chess")],
    )
    assert plan.memberships_replace_keys.empty and plan.memberships_add.empty
    assert plan.upsert_frame().empty
    assert not plan.changes_anything


def test_signature_written_for_inserts():
    plan = plan_for(client(), [person(1)], [], communities=[("student1@school.edu", "Clubs", "Chess")])
    assert plan.inserts["communities_signature"].tolist() == ["Clubs\x1fChess"]
    assert plan.memberships_add.values.tolist() == [["student1@school.edu", "Clubs", "Chess"]]
    assert plan.memberships_replace_keys.empty  # a new user has nothing stored to remove
    assert plan.membership_counts() == {"communities_added": 1, "communities_removed": 0}


def test_deleted_user_loses_all_communities():
    plan = plan_for(
        client(),
        [person(1, delete=True)],
        [signed(1, [("Clubs", "Chess")])],
        communities=[("student1@school.edu", "Clubs", "Chess")],
    )
    assert plan.memberships_add.empty
    assert plan.memberships_replace_keys.tolist() == ["student1@school.edu"]
    assert plan.deletes["communities_signature"].tolist() == [""]
    assert plan.membership_counts() == {"communities_added": 0, "communities_removed": 1}


def test_absent_user_keeps_communities():
    plan = plan_for(client(), [person(1)], [signed(1, []), signed(2, [("Clubs", "Chess")])])
    assert "student2@school.edu" not in plan.memberships_replace_keys.tolist()
    assert plan.membership_counts() == {"communities_added": 0, "communities_removed": 0}


def test_unknown_stored_signature_replaces_the_users_communities():
    plan = plan_for(client(), [person(1)], [stored_person(1)], communities=[])
    assert plan.memberships_replace_keys.tolist() == ["student1@school.edu"]
    assert plan.community_updates["communities_signature"].tolist() == [""]


def test_plan_against_an_empty_warehouse_inserts_everyone():
    plan = plan_for(client(auto_deprovision=True), [person(1), person(2)], [])
    assert plan.counts()["inserted"] == 2
    assert plan.guard.active_before == 0


def test_a_file_s_own_signatures_plan_exactly_as_its_memberships_do():
    """map_file hands the plan each row's signature (MappedFile.signatures) instead of the plan deriving
    them from the memberships; a row flagged for deletion keeps no communities either way."""
    cfg = client()
    stored_rows = [signed(1, [("Clubs", "Chess")]), signed(2, [("Clubs", "Go")]), signed(3, [])]
    sync_file = SyncFile(
        cfg,
        [person(1, delete=True), person(2), person(3), person(4)],
        communities=[
            ("student1@school.edu", "Clubs", "Chess"),
            ("student2@school.edu", "Clubs", "Chess"),
            ("student4@school.edu", "Clubs", "Go"),
        ],
    )
    derived = build_sync_plan(sync_file.mapped, current(stored_rows), cfg)
    keys = sync_file.mapped.subscribers["subscriber_key"]
    own = dataclasses.replace(
        sync_file.mapped, signatures=communities_signature(sync_file.mapped.memberships, keys)
    )
    given = build_sync_plan(own, current(stored_rows), cfg)
    for part in ("inserts", "updates", "deletes", "community_updates", "memberships_add"):
        pd.testing.assert_frame_equal(getattr(given, part), getattr(derived, part))
    assert given.deletes["communities_signature"].tolist() == [""]
    assert given.memberships_replace_keys.tolist() == derived.memberships_replace_keys.tolist()
    assert (
        given.membership_counts()
        == derived.membership_counts()
        == {
            "communities_added": 2,
            "communities_removed": 2,
        }
    )


def test_memberships_located_by_row_plan_exactly_as_those_matched_by_key():
    """map_file records each membership's subscriber row (MappedFile.membership_rows) so the plan picks the
    memberships it writes by position; matched by key instead, the plan is the same."""
    cfg = client()
    stored_rows = [signed(1, [("Clubs", "Chess")]), signed(2, [("Clubs", "Go")])]
    sync_file = SyncFile(
        cfg,
        [person(1, delete=True), person(2), person(3)],
        communities=[
            ("student3@school.edu", "Clubs", "Go"),
            ("student1@school.edu", "Clubs", "Chess"),
            ("student2@school.edu", "Clubs", "Chess"),
        ],
    )
    by_key = build_sync_plan(sync_file.mapped, current(stored_rows), cfg)
    keys = pd.Index(sync_file.mapped.subscribers["subscriber_key"])
    rows = keys.get_indexer(sync_file.mapped.memberships["subscriber_key"])
    by_row = build_sync_plan(
        dataclasses.replace(sync_file.mapped, membership_rows=rows), current(stored_rows), cfg
    )
    pd.testing.assert_frame_equal(by_row.memberships_add, by_key.memberships_add)
    assert sorted(by_row.memberships_add.values.tolist()) == [
        ["student2@school.edu", "Clubs", "Chess"],
        ["student3@school.edu", "Clubs", "Go"],
    ]
    assert by_row.membership_counts() == by_key.membership_counts()
