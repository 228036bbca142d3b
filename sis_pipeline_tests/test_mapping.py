"""Mapping (PRODUCT.md §4): subscribers, identity keys, class years, flags, communities, protected keys."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile import map_file, mapping, validate_file
from sis_pipeline.sisfile.mapping import duplicated
from sis_pipeline.sisfile.result import MEMBERSHIP_COLUMNS, SUBSCRIBER_COLUMNS
from sis_pipeline.sync_plan import communities_signature

BASIC = ["first_name", "last_name", "email"]


def _client(**fields) -> ClientConfig:
    return ClientConfig(id="22", name="Test School", bucket="sis-test-22", **fields)


def _map(header: list[str], *rows: list[str], client: ClientConfig | None = None):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    client = client or _client()
    validated = validate_file(buffer.getvalue().encode(), client, "roster.csv")
    return map_file(validated, client)


def _one(mapped, column: str):
    value = mapped.subscribers[column].iloc[0]
    if pd.isna(value):
        return None
    return value.item() if hasattr(value, "item") else value  # numpy scalars as Python values


def test_subscriber_frame_has_the_documented_columns_and_types():
    mapped = _map([*BASIC, "graduation"], ["A", "B", "a@x.org", "2026"])
    assert list(mapped.subscribers.columns) == list(SUBSCRIBER_COLUMNS)
    assert list(mapped.memberships.columns) == list(MEMBERSHIP_COLUMNS)
    types = mapped.subscribers.dtypes
    assert str(types["graduation_year"]) == "Int64"
    assert str(types["email_opt_out"]) == "bool" and str(types["delete"]) == "bool"
    assert types["line_number"] == "int64"


def test_email_is_trimmed_with_domain_lowercased_and_local_part_as_given():
    mapped = _map(BASIC, ["A", "B", "  First.Last@Example.EDU "])
    assert _one(mapped, "email") == "First.Last@example.edu"


def test_subscriber_key_is_the_lowercased_email_when_email_is_the_identifier():
    mapped = _map(BASIC, ["A", "B", "First.Last@Example.EDU"])
    assert _one(mapped, "subscriber_key") == "first.last@example.edu"


def test_user_id_not_in_email_format_is_prefixed_with_the_client_id():
    mapped = _map(
        [*BASIC, "student_id"], ["A", "B", "a@x.org", "u2765"], client=_client(identifier="user_id")
    )
    assert _one(mapped, "subscriber_key") == "22_u2765"
    assert _one(mapped, "user_login") == "22_u2765"


def test_user_login_in_email_format_is_stored_as_it_is():
    mapped = _map(
        [*BASIC, "sso_login_name"],
        ["A", "B", "a@x.org", "JDoe@Sso.Example.edu"],
        client=_client(identifier="user_login"),
    )
    assert _one(mapped, "subscriber_key") == "JDoe@Sso.Example.edu"
    assert _one(mapped, "user_login") == "JDoe@Sso.Example.edu"


def test_user_login_is_filled_from_the_login_column_when_email_is_the_identifier():
    mapped = _map([*BASIC, "user_id", "login"], ["A", "B", "a@x.org", "111", "jdoe"])
    assert _one(mapped, "user_login") == "22_jdoe"


def test_user_login_falls_back_to_user_id_when_email_is_the_identifier():
    mapped = _map([*BASIC, "user_id"], ["A", "B", "a@x.org", "111"])
    assert _one(mapped, "user_login") == "22_111"


def test_user_login_is_null_without_a_login_column():
    assert _one(_map(BASIC, ["A", "B", "a@x.org"]), "user_login") is None


@pytest.mark.parametrize(
    ("value", "year"),
    [
        ("2027", 2027),
        ("2026-05-15", 2026),
        ("2026-08-31", 2026),
        ("2026-09-01", 2027),
        ("8/31/2026", 2026),
        ("9/1/2026", 2027),
        ("12/31/2025", 2026),
        ("2026-06-01T10:30:00", 2026),
        ("2026-10-01 00:00", 2027),
        ("5/20/2025 14:00", 2025),
        ("6/1/2025 9:30 AM", 2025),
    ],
)
def test_graduation_year_or_date_maps_to_a_class_year_with_the_31_august_cutoff(value, year):
    assert _one(_map([*BASIC, "graduation"], ["A", "B", "a@x.org", value]), "graduation_year") == year


def test_graduation_date_on_aug_31_maps_to_that_year():
    assert _one(_map([*BASIC, "graduation"], ["A", "B", "a@x.org", "2025-08-31"]), "graduation_year") == 2025


def test_graduation_date_after_aug_31_maps_to_next_year():
    assert _one(_map([*BASIC, "graduation"], ["A", "B", "a@x.org", "2025-09-01"]), "graduation_year") == 2026


@pytest.mark.parametrize("value", ["", "Fall 2026", "2026.0", "26", "2/30/2026", "2026-13-01"])
def test_graduation_neither_year_nor_date_is_null(value):
    assert _one(_map([*BASIC, "graduation"], ["A", "B", "a@x.org", value]), "graduation_year") is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1", True),
        ("yes", True),
        ("YES", True),
        (" True ", True),
        ("tRuE", True),
        ("0", False),
        ("no", False),
        ("y", False),
        ("", False),
        ("2", False),
    ],
)
def test_flags_mean_yes_for_1_yes_true_in_any_case(value, expected):
    mapped = _map([*BASIC, "opt_out", "delete_user"], ["A", "B", "a@x.org", value, value])
    assert _one(mapped, "email_opt_out") is expected
    assert _one(mapped, "delete") is expected


def test_absent_flag_columns_mean_no():
    mapped = _map(BASIC, ["A", "B", "a@x.org"])
    assert _one(mapped, "email_opt_out") is False and _one(mapped, "delete") is False


def test_user_type_maps_to_a_people_audience_community():
    client = _client(user_types={"Graduate": "Graduate Students", "Grad": "Graduate Students"})
    mapped = _map(
        [*BASIC, "study_level"],
        ["A", "B", "a@x.org", " graduate "],
        ["C", "D", "c@x.org", "Alumni"],
        client=client,
    )
    assert mapped.memberships.values.tolist() == [["a@x.org", "People/Audience", "Graduate Students"]]
    assert mapped.subscribers["user_type"].tolist() == ["graduate", "Alumni"]


def test_extra_field_values_split_trimmed_blanks_dropped_and_mapped_many_to_one():
    client = _client(
        extra_fields={
            "Program": {
                "group": "Programs",
                "values": {"Bio": "Life Sciences", "Biology": "Life Sciences", "Chem": "Chemistry"},
            }
        }
    )
    mapped = _map([*BASIC, "program"], ["A", "B", "a@x.org", " bio ; ;BIOLOGY;Chem;Art;"], client=client)
    assert sorted(mapped.memberships.values.tolist()) == [
        ["a@x.org", "Programs", "Chemistry"],
        ["a@x.org", "Programs", "Life Sciences"],
    ]


def test_each_extra_column_feeds_its_own_group():
    client = _client(
        extra_fields={
            "program": {"group": "Programs", "values": {"Bio": "Biology"}},
            "affinity": {"group": "Affinity", "values": {"Vet": "Veterans"}},
        }
    )
    mapped = _map([*BASIC, "program", "affinity"], ["A", "B", "a@x.org", "Bio", "vet"], client=client)
    assert sorted(mapped.memberships["community_group"]) == ["Affinity", "Programs"]


def test_exactly_one_subscriber_row_per_key():
    mapped = _map(BASIC, ["A", "B", "a@x.org"], ["C", "D", "A@x.org"], ["E", "F", "e@x.org"])
    assert mapped.subscribers["subscriber_key"].tolist() == ["e@x.org"]
    assert mapped.subscribers["subscriber_key"].is_unique


def test_blank_names_are_null():
    mapped = _map(BASIC, ["", " ", "a@x.org"])
    assert _one(mapped, "first_name") is None and _one(mapped, "last_name") is None


def test_protected_keys_cover_valid_and_rejected_rows():
    mapped = _map(
        BASIC, ["A", "B", "a@x.org"], ["C", "D", "dup@x.org"], ["E", "F", "DUP@x.org"], ["G", "H", "bad"]
    )
    assert set(mapped.protected_keys) == {"a@x.org", "dup@x.org", "bad"}


def test_ignored_file_maps_to_empty_frames():
    client = _client()
    validated = validate_file(b"first_name,last_name\nA,B\n", client, "roster.csv")
    mapped = map_file(validated, client)
    assert validated.ignored
    assert mapped.subscribers.empty and mapped.memberships.empty and mapped.protected_keys.empty
    assert list(mapped.subscribers.columns) == list(SUBSCRIBER_COLUMNS)


def test_login_already_carrying_the_prefix_is_prefixed_again_so_prefixing_stays_one_to_one():
    mapped = _map(
        [*BASIC, "user_id"],
        ["A", "B", "a@x.org", "22_u1"],
        ["C", "D", "c@x.org", "u1"],
        client=_client(identifier="user_id"),
    )
    assert mapped.subscribers["subscriber_key"].tolist() == ["22_22_u1", "22_u1"]


def test_class_years_parsed_by_validation_are_the_ones_mapped(monkeypatch):
    import dataclasses

    from sis_pipeline.sisfile import mapping

    header = [*BASIC, "graduation"]
    rows = [
        ["A", "B", f"s{n}@x.org", value]
        for n, value in enumerate(["2031", "2030-09-01", "6/30/2029", "soon", ""])
    ]
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    validated = validate_file(buffer.getvalue().encode(), _client(), source="t.csv")
    assert validated.class_years.tolist() == [2031, 2031, 2029, pd.NA, pd.NA]
    recomputed = map_file(dataclasses.replace(validated, class_years=None), _client())

    def parsed_again(_values):
        raise AssertionError("the mapping parsed the graduation column a second time")

    monkeypatch.setattr(mapping, "graduation_years", parsed_again)
    mapped = map_file(validated, _client())
    pd.testing.assert_series_equal(
        mapped.subscribers["graduation_year"], recomputed.subscribers["graduation_year"]
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([None, None], [False, False]),
        (["a", None, "a", "b", None], [True, False, True, False, False]),
        (["a"], [False]),
        ([], []),
    ],
)
def test_duplicated_marks_every_copy_and_never_a_null(values, expected):
    assert duplicated(pa.chunked_array([pa.array(values, pa.large_string())])).tolist() == expected


_SIGNATURE_CLIENT = _client(
    user_types={"Student": "Students", "Faculty": "Faculty & Staff", "Staff": "Faculty & Staff"},
    extra_fields={
        "program": {
            "group": "Programs",
            "values": {"Bio": "Biology", "Biology": "Biology", "Éco": "Écologie"},
        },
        "minor": {"group": "Minors", "values": {"Bio": "Biology", "Art": "Art"}},
        "club": {"group": "Clubs", "values": {"Chess": "Chess", "Go": "Go", "Zen": "Zen"}},
    },
)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Student", "faculty", "Staff", "Visitor", ""]),
            st.lists(st.sampled_from(["Bio", "biology", "Éco", "Art", "x", " "]), max_size=4),
            st.lists(st.sampled_from(["Bio", "Art", "Zz"]), max_size=3),
            st.lists(st.sampled_from(["Chess", "go", "Zen", "Other"]), max_size=4),
        ),
        min_size=1,
        max_size=30,
    )
)
@settings(max_examples=60, deadline=None)
@pytest.mark.parametrize("mask_pairs", [64, 1])  # rows' sets as bit masks, and the general sort by row
def test_map_file_signatures_are_those_of_its_memberships(mask_pairs, rows):
    """map_file builds each row's communities_signature from integer ranks; it must be byte for byte what
    the plan's own builder makes from the memberships frame (a stored signature that differs would
    rewrite every user's communities once)."""
    lines = [
        ["A", "B", f"u{i}@x.org", user_type, ";".join(program), ";".join(minor), ";".join(club)]
        for i, (user_type, program, minor, club) in enumerate(rows)
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(mapping, "MASK_PAIRS", mask_pairs)
        mapped = _map([*BASIC, "user_type", "program", "minor", "club"], *lines, client=_SIGNATURE_CLIENT)
    expected = communities_signature(mapped.memberships, mapped.subscribers["subscriber_key"])
    assert mapped.signatures.to_pylist() == expected.to_pylist()


def test_a_row_s_signature_lists_its_pairs_sorted():
    mapped = _map(
        [*BASIC, "user_type", "program", "minor", "club"],
        ["A", "B", "a@x.org", "Staff", "Éco;bio", "Bio", "zen;Chess"],
        ["C", "D", "c@x.org", "Visitor", "", "", ""],
        client=_SIGNATURE_CLIENT,
    )
    assert mapped.signatures.to_pylist() == [
        "Clubs\x1fChess\x1eClubs\x1fZen\x1eMinors\x1fBiology\x1ePeople/Audience\x1fFaculty & Staff"
        "\x1ePrograms\x1fBiology\x1ePrograms\x1fÉcologie",
        "",
    ]


def test_mapping_reuses_the_warnings_lookups_and_maps_the_same():
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*BASIC, "user_type", "program", "minor", "club"])
    writer.writerows(
        [
            ["A", "B", "a@x.org", "Staff", "Éco;bio;x", "Bio", "zen;Chess;Other"],
            ["C", "D", "c@x.org", "", "", "Art", ""],
            ["E", "F", "bad-email", "Student", "Bio", "", "Go"],  # rejected: not among the rows looked up
            ["G", "H", "g@x.org", "Student", "biology", "Zz", "go"],
        ]
    )
    validated = validate_file(buffer.getvalue().encode(), _SIGNATURE_CLIENT, "roster.csv")
    assert set(validated.looked_up) == {"user_type", "program", "minor", "club"}
    reused = map_file(validated, _SIGNATURE_CLIENT)
    validated.looked_up = None
    fresh = map_file(validated, _SIGNATURE_CLIENT)
    pd.testing.assert_frame_equal(reused.subscribers, fresh.subscribers)
    pd.testing.assert_frame_equal(reused.memberships, fresh.memberships)
    assert reused.signatures.equals(fresh.signatures)
    assert len(reused.memberships) == 10


def test_each_membership_records_its_subscriber_s_row_and_is_stored_compactly():
    mapped = _map(
        [*BASIC, "user_type", "program", "minor", "club"],
        ["A", "B", "a@x.org", "Staff", "Éco;bio", "Bio", "zen"],
        ["C", "D", "c@x.org", "Visitor", "", "", ""],
        ["E", "F", "e@x.org", "Student", "bio", "", "Chess"],
        client=_SIGNATURE_CLIENT,
    )
    keys = mapped.subscribers["subscriber_key"].to_numpy()
    text = mapped.memberships.astype("string")
    assert keys[mapped.membership_rows].tolist() == text["subscriber_key"].tolist()
    # keys index the subscribers' own key array; groups and communities their few distinct texts
    assert all(pa.types.is_dictionary(dtype.pyarrow_dtype) for dtype in mapped.memberships.dtypes)
    assert sorted(text.values.tolist()) == [
        ["a@x.org", "Clubs", "Zen"],
        ["a@x.org", "Minors", "Biology"],
        ["a@x.org", "People/Audience", "Faculty & Staff"],
        ["a@x.org", "Programs", "Biology"],
        ["a@x.org", "Programs", "Écologie"],
        ["e@x.org", "Clubs", "Chess"],
        ["e@x.org", "People/Audience", "Students"],
        ["e@x.org", "Programs", "Biology"],
    ]
