"""Validation (PRODUCT.md §3, row level and file-level columns): rejected rows, warnings, protected identities."""

from __future__ import annotations

import csv
import io

import pandas as pd
import pytest

from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile import schema, validate_file
from sis_pipeline.sisfile.parse import STRING_DTYPE
from sis_pipeline.sisfile.result import REJECTED_COLUMNS


def _client(**fields) -> ClientConfig:
    return ClientConfig(id="22", name="Test School", bucket="sis-test-22", **fields)


def _csv(header: list[str], *rows: list[str]) -> bytes:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


BASIC = ["first_name", "last_name", "email"]


def _validate(data: bytes, client: ClientConfig | None = None):
    return validate_file(data, client or _client(), "roster.csv")


def _reasons(result) -> list[tuple[int, str | None, str]]:
    rows = result.rejected.astype(object).where(result.rejected.notna(), None)
    return [(int(r.line_number), r.column_name, r.reason_code) for r in rows.itertuples()]


# --- file level ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("missing", BASIC)
def test_missing_core_column_makes_the_file_ignored(missing):
    header = [c for c in BASIC if c != missing]
    result = _validate(_csv(header, ["x"] * len(header)))
    assert result.problem.code == "missing_column"
    assert result.problem.column_name == missing and missing in result.problem.message
    assert result.valid.empty and result.rejected.empty


@pytest.mark.parametrize("identifier", ["user_id", "user_login"])
def test_identifier_column_is_required_when_it_is_the_identifier(identifier):
    result = _validate(_csv(BASIC, ["A", "B", "a@x.org"]), _client(identifier=identifier))
    assert result.problem.code == "missing_column" and result.problem.column_name == identifier


def test_graduation_is_required_with_class_year_tags():
    result = _validate(_csv(BASIC, ["A", "B", "a@x.org"]), _client(class_year_tags=True))
    assert result.problem.code == "missing_column" and result.problem.column_name == "graduation"


def test_ignored_file_has_empty_frames_and_the_problem():
    result = _validate(b"first_name,last_name,email\n")
    assert result.ignored and result.problem.code == "no_data"
    assert result.valid.empty and result.rejected.empty and result.protected_keys.empty
    assert list(result.rejected.columns) == list(REJECTED_COLUMNS)


def test_unmapped_extra_column_is_ignored_with_a_file_level_warning():
    result = _validate(_csv([*BASIC, "Favourite Colour"], ["A", "B", "a@x.org", "blue"]))
    assert "favourite_colour" not in result.valid.columns
    assert [(w.code, w.column_name) for w in result.warnings] == [("unmapped_column", "favourite_colour")]


def test_mapped_extra_column_is_kept():
    client = _client(extra_fields={"Program": {"group": "Programs", "values": {"Bio": "Biology"}}})
    result = _validate(_csv([*BASIC, "program"], ["A", "B", "a@x.org", "Bio"]), client)
    assert result.valid["program"].tolist() == ["Bio"] and result.warnings == []


# --- row level -------------------------------------------------------------------------------------------


def test_valid_rows_keep_trimmed_canonical_columns_and_line_numbers():
    result = _validate(_csv(["First Name", "Email Address", "Last Name"], [" A ", " a@x.org ", "B"]))
    assert result.valid.to_dict("records") == [
        {"first_name": "A", "email": "a@x.org", "last_name": "B", "line_number": 2}
    ]
    assert result.rows_total == 1 and result.rows_valid == 1 and result.rows_rejected == 0


def test_wrong_field_count_is_rejected_as_a_whole_row():
    result = _validate(b"first_name,last_name,email\nA,B,a@x.org\nC,D,,c@x.org\n")
    assert _reasons(result) == [(3, None, "field_count")]
    assert result.valid["email"].tolist() == ["a@x.org"]


def test_blank_email_is_rejected():
    result = _validate(_csv(BASIC, ["A", "B", "  "], ["C", "D", "c@x.org"]))
    assert _reasons(result) == [(2, "email", "blank_email")]
    assert result.valid["line_number"].tolist() == [3]


@pytest.mark.parametrize(
    "email",
    [
        "plain",
        "a@b",
        "a@@x.org",
        "a b@x.org",
        "@x.org",
        "a@x.",
        "a@-x.org",
        "a..b@x.org",
        ".a@x.org",
        "a@x.o",
    ],
)
def test_invalid_email_is_rejected(email):
    result = _validate(_csv(BASIC, ["A", "B", email]))
    assert _reasons(result) == [(2, "email", "invalid_email")]


@pytest.mark.parametrize(
    "email", ["a@x.org", "First.Last+tag@Sub.Example.EDU", "o'neil@x.co.uk", "a_b-c@x-y.io", "u1@x.museum"]
)
def test_valid_email_is_accepted(email):
    assert _validate(_csv(BASIC, ["A", "B", email])).rejected.empty


@pytest.mark.parametrize("identifier", ["user_id", "user_login"])
def test_blank_identifier_is_rejected_when_it_is_the_identifier(identifier):
    result = _validate(
        _csv([*BASIC, identifier], ["A", "B", "a@x.org", ""], ["C", "D", "c@x.org", "u2"]),
        _client(identifier=identifier),
    )
    assert _reasons(result) == [(2, identifier, "blank_identifier")]


def test_blank_user_id_is_fine_when_email_is_the_identifier():
    assert _validate(_csv([*BASIC, "user_id"], ["A", "B", "a@x.org", ""])).rejected.empty


@pytest.mark.parametrize("cell", ["Graduate;Alumni", "Graduate ; Alumni;", " a;b;c "])
def test_more_than_one_user_type_is_rejected(cell):
    result = _validate(_csv([*BASIC, "study_level"], ["A", "B", "a@x.org", cell]))
    assert _reasons(result) == [(2, "user_type", "multiple_user_types")]


@pytest.mark.parametrize("cell", ["Graduate", "Graduate;", " ; Graduate ;", ""])
def test_one_user_type_with_stray_separators_is_accepted(cell):
    assert _validate(_csv([*BASIC, "user_type"], ["A", "B", "a@x.org", cell])).rejected.empty


def test_duplicate_email_rejects_every_copy_case_insensitively():
    result = _validate(
        _csv(
            BASIC, ["A", "B", "a@x.org"], ["C", "D", "c@x.org"], ["E", "F", "A@X.ORG"], ["G", "H", "a@x.org"]
        )
    )
    assert _reasons(result) == [
        (2, "email", "duplicate"),
        (4, "email", "duplicate"),
        (5, "email", "duplicate"),
    ]
    assert result.valid["line_number"].tolist() == [3]
    assert "3 rows" in result.rejected["message"].iloc[0] and "line 2" in result.rejected["message"].iloc[0]


def test_duplicate_identifier_rejects_every_copy():
    result = _validate(
        _csv([*BASIC, "student_id"], ["A", "B", "a@x.org", "u1"], ["C", "D", "c@x.org", "u1"]),
        _client(identifier="user_id"),
    )
    assert _reasons(result) == [(2, "user_id", "duplicate"), (3, "user_id", "duplicate")]


def test_row_sharing_the_login_of_another_row_is_a_duplicate_even_when_email_is_the_identifier():
    result = _validate(
        _csv(
            [*BASIC, "login"],
            ["A", "B", "a@x.org", "jdoe"],
            ["C", "D", "c@x.org", "jdoe"],
            ["E", "F", "e@x.org", ""],
            ["G", "H", "g@x.org", ""],
        )
    )
    assert _reasons(result) == [(2, "user_login", "duplicate"), (3, "user_login", "duplicate")]


def test_each_failure_is_one_rejected_row_and_a_line_counts_once():
    result = _validate(_csv([*BASIC, "user_type"], ["A", "B", "bad", "x;y"]))
    assert _reasons(result) == [(2, "email", "invalid_email"), (2, "user_type", "multiple_user_types")]
    assert result.rows_rejected == 1
    assert result.rejected_by_reason() == {"invalid_email": 1, "multiple_user_types": 1}


def test_messages_never_contain_personal_values():
    result = _validate(
        _csv(
            [*BASIC, "user_id"],
            ["Alice", "Zed", "alice.zed@", "u-secret-1"],
            ["Bo", "Yu", "bo@x.org", "u-secret-2"],
            ["Bo", "Yu", "BO@x.org", "u-secret-3"],
        ),
    )
    text = " ".join(result.rejected["message"].tolist())
    for personal in ("Alice", "Zed", "alice", "bo@x.org", "BO@x.org", "u-secret"):
        assert personal not in text


# --- warnings --------------------------------------------------------------------------------------------


def test_bad_graduation_values_warn_with_counts_per_value():
    result = _validate(
        _csv(
            [*BASIC, "class_year"],
            ["A", "B", "a@x.org", "Fall"],
            ["C", "D", "c@x.org", "Fall"],
            ["E", "F", "e@x.org", "2026"],
            ["G", "H", "g@x.org", "13/1/2025"],
        )
    )
    assert result.rejected.empty
    counts = {(w.code, w.value): w.count for w in result.warnings}
    assert counts == {("graduation_invalid", "Fall"): 2, ("graduation_invalid", "13/1/2025"): 1}
    assert result.rows_warned == 3


def test_unmapped_user_type_warns_with_counts_when_the_client_maps_user_types():
    client = _client(user_types={"Graduate": "Graduate Students"})
    result = _validate(
        _csv(
            [*BASIC, "user_type"],
            ["A", "B", "a@x.org", "graduate"],
            ["C", "D", "c@x.org", "Alumni"],
            ["E", "F", "e@x.org", "Alumni"],
        ),
        client,
    )
    assert [(w.code, w.value, w.count) for w in result.warnings] == [("user_type_unmapped", "Alumni", 2)]
    assert result.rows_warned == 2


def test_unmapped_extra_field_values_warn_with_counts():
    client = _client(extra_fields={"program": {"group": "Programs", "values": {"Bio": "Biology"}}})
    result = _validate(
        _csv([*BASIC, "program"], ["A", "B", "a@x.org", "bio;Art;Art"], ["C", "D", "c@x.org", "Art; Music"]),
        client,
    )
    assert sorted((w.value, w.count) for w in result.warnings) == [("Art", 2), ("Music", 1)]
    assert {w.code for w in result.warnings} == {"extra_value_unmapped"}


def test_mapped_column_missing_from_the_file_warns():
    client = _client(extra_fields={"program": {"group": "Programs"}})
    result = _validate(_csv(BASIC, ["A", "B", "a@x.org"]), client)
    assert [(w.code, w.column_name) for w in result.warnings] == [("mapped_column_missing", "program")]


# --- protected identities --------------------------------------------------------------------------------


def test_protected_keys_include_valid_and_rejected_identities():
    result = _validate(
        _csv(
            BASIC,
            ["A", "B", "a@x.org"],
            ["C", "D", "Not-An-Email"],
            ["E", "F", "D@x.org"],
            ["G", "H", "d@X.org"],
        )
    )
    assert set(result.protected_keys) == {"a@x.org", "not-an-email", "d@x.org"}


def test_rejected_row_protects_its_identifier_as_stored():
    result = _validate(
        _csv([*BASIC, "user_id"], ["A", "B", "", "u1"], ["C", "D", "c@x.org", "u2"]),
        _client(identifier="user_id"),
    )
    assert {"22_u1", "22_u2"} <= set(result.protected_keys)


def test_wrong_field_count_row_protects_every_field_as_a_candidate_key():
    result = _validate(
        b"first_name,last_name,email,user_id\nA,B,a@x.org,u1\nC,D,E,C@x.org,u2\n",
        _client(identifier="user_id"),
    )
    keys = set(result.protected_keys)
    assert {"22_u1", "C@x.org", "c@x.org", "22_u2", "u2"} <= keys


def test_log_lines_carry_counts_not_personal_values(caplog):
    caplog.set_level("DEBUG", logger="sis_pipeline")
    _validate(_csv(BASIC, ["Alice", "Zed", "alice@x.org"], ["Bob", "Yu", "bad-address"]))
    assert "2 rows, 1 valid, 1 rejected" in caplog.text
    for personal in ("Alice", "Zed", "alice@x.org", "Bob", "bad-address"):
        assert personal not in caplog.text


# --- broken headers explained (the bad-file corpus in bad_files.py runs these through the warehouse) -------


@pytest.mark.parametrize(("delimiter", "name"), [(";", "semicolon"), ("\t", "tab")])
def test_semicolon_or_tab_separated_export_is_ignored_as_wrong_delimiter(delimiter, name):
    text = _csv(BASIC, ["Ana", "Ng", "a@x.org"]).decode().replace(",", delimiter)
    problem = _validate(text.encode()).problem
    assert problem.code == "wrong_delimiter" and problem.line_number == 1
    assert f"{name}-separated" in problem.message and "comma-separated" in problem.message


def test_semicolon_inside_one_header_of_a_comma_file_is_a_missing_column_with_a_hint():
    problem = _validate(b"first_name,last_name,e-mail;address\nA,B,a@x.org\n").problem
    assert problem.code == "missing_column" and problem.column_name == "email"
    assert "semicolon" in problem.message


def test_file_without_header_row_says_so_without_quoting_the_row():
    problem = _validate(b"Ana,Ng,ana.ng@x.org\nBo,Yu,bo@x.org\n").problem
    assert problem.code == "missing_column" and "header row" in problem.message
    assert "Ana" not in problem.message and "ana.ng" not in problem.message


def test_unmapped_columns_are_warned_by_name_up_to_fifty_then_summarised():
    extra = [f"extra {i}" for i in range(10_000)]
    result = _validate(_csv([*BASIC, *extra], ["A", "B", "a@x.org", *([""] * len(extra))]))
    unmapped = [w for w in result.warnings if w.code == "unmapped_column"]
    assert len(unmapped) == 51 and sum(w.count for w in unmapped) == len(extra)
    assert unmapped[-1].column_name is None and "9950 more columns" in unmapped[-1].message
    assert list(result.valid.columns) == [*BASIC, "line_number"]


# --- a file cut off ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tail", "evidence"),
    [("C,D,c@x", "invalid_email"), ("C,D", "field_count"), ("C,D,", "blank_email")],
    ids=["inside-the-email", "before-the-email", "right-after-the-comma"],
)
def test_last_line_cut_off_without_line_break_makes_the_file_ignored_as_truncated(tail, evidence):
    result = _validate(b"first_name,last_name,email\nA,B,a@x.org\n" + tail.encode())
    assert result.problem.code == "truncated" and result.problem.line_number == 3
    assert evidence in result.problem.message and "line 3" in result.problem.message
    assert result.valid.empty and result.protected_keys.empty


def test_complete_last_line_without_line_break_imports():
    result = _validate(b"first_name,last_name,email\nA,B,a@x.org\nC,D,c@x.org")
    assert result.problem is None and result.valid["email"].tolist() == ["a@x.org", "c@x.org"]


def test_bad_row_that_is_not_the_last_line_is_only_rejected():
    result = _validate(b"first_name,last_name,email\nA,B,a@\nC,D,c@x.org")
    assert result.problem is None and _reasons(result) == [(2, "email", "invalid_email")]


def test_duplicate_on_an_unterminated_last_line_is_not_taken_for_a_cut():
    result = _validate(b"first_name,last_name,email\nA,B,a@x.org\nC,D,a@x.org")
    assert result.problem is None and {r[2] for r in _reasons(result)} == {"duplicate"}


# --- a quote that swallows lines -----------------------------------------------------------------------


def test_value_spanning_lines_in_a_core_column_is_rejected_and_the_swallowed_people_protected():
    data = (
        b"first_name,last_name,email,user_id\n"
        b'A,"Ng,a@x.org,u1\n'  # the quote opens here...
        b"B,Yu,B@x.org,u2\n"
        b'C,Li",c@x.org,u3\n'  # ...and closes here: lines 3 and 4 became part of one value
        b"D,Ko,d@x.org,u4\n"
    )
    result = _validate(data)
    assert _reasons(result) == [(2, "last_name", "line_break")]
    assert "from line 2 to line 4" in result.rejected["message"][0]
    assert result.valid["email"].tolist() == ["d@x.org"]
    assert {"a@x.org", "b@x.org", "22_u1", "22_u2", "c@x.org"} <= set(result.protected_keys)


def test_line_break_in_a_mapped_extra_field_is_a_value():
    client = _client(extra_fields={"notes": {"group": "Notes", "values": {"a": "A"}}})
    result = _validate(b'first_name,last_name,email,notes\nA,B,a@x.org,"a\nb"\n', client)
    assert result.rejected.empty and result.valid["notes"].tolist() == ["a\nb"]


def test_zero_width_character_inside_a_rejected_email_still_protects_the_person():
    result = _validate(_csv(BASIC, ["A", "B", "Ana\u200b@X.org"], ["C", "D", "c@x.org"]))
    assert _reasons(result) == [(2, "email", "invalid_email")]
    assert "ana@x.org" in set(result.protected_keys)


@pytest.mark.parametrize(("length", "valid"), [(254, True), (255, False)])
def test_email_longer_than_254_characters_is_invalid(length, valid):
    address = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * (length - 64 - 1 - 128 - 4) + ".org"
    assert len(address) == length
    result = _validate(_csv(BASIC, ["A", "B", address]))
    assert result.rejected.empty is valid


# --- how the rules run (a large file's duplicate checks on a thread pool; line breaks searched sparingly) --


def _three_identity_duplicates() -> bytes:
    return _csv(
        [*BASIC, "student_id", "login"],
        ["A", "B", "a@x.org", "u1", "l1"],
        ["C", "D", "A@x.org", "u2", "l2"],  # email of line 2, case aside
        ["E", "F", "e@x.org", "u1", "l3"],  # user_id of line 2
        ["G", "H", "g@x.org", "u4", "l2"],  # user_login of line 3
        ["I", "J", "i@x.org", "u5", "l5"],
    )


EXPECTED_DUPLICATES = [
    (2, "email", "duplicate"),
    (2, "user_id", "duplicate"),
    (3, "email", "duplicate"),
    (3, "user_login", "duplicate"),
    (4, "user_id", "duplicate"),
    (5, "user_login", "duplicate"),
]


@pytest.mark.parametrize("parallel_rows", [1, 10**9], ids=["thread-pool", "in-line"])
def test_duplicate_checks_find_the_same_rows_on_the_thread_pool_and_in_line(monkeypatch, parallel_rows):
    monkeypatch.setattr(schema, "PARALLEL_ROWS", parallel_rows)
    result = _validate(_three_identity_duplicates())
    assert _reasons(result) == EXPECTED_DUPLICATES
    assert result.valid["line_number"].tolist() == [6]


@pytest.mark.parametrize("parallel_rows", [1, 10**9], ids=["thread-pool", "in-line"])
def test_a_rule_that_crashes_fails_validation_without_quoting_its_error(monkeypatch, parallel_rows):
    def crash(values, column, client_id):
        raise ValueError("a@x.org")  # an error whose text holds a value

    monkeypatch.setattr(schema, "PARALLEL_ROWS", parallel_rows)
    monkeypatch.setattr(schema, "_unique_mask", crash)
    with pytest.raises(RuntimeError) as raised:
        _validate(_three_identity_duplicates())
    assert str(raised.value) == "validation rule duplicate of column email raised ValueError"


def test_line_break_in_the_last_row_is_found():
    data = b'first_name,last_name,email\nA,B,a@x.org\nC,"D\nE",c@x.org\n'
    assert _reasons(_validate(data)) == [(3, "last_name", "line_break")]


def test_line_break_search_reads_only_rows_that_span_lines_and_all_rows_out_of_order():
    values = pd.Series(["a", "b\nc", "d", "e\rf"], index=[2, 3, 5, 6], dtype=STRING_DTYPE)
    assert schema._no_line_break(values).tolist() == [True, False, True, False]
    # a row followed directly by the next line cannot span lines: its value is not read
    assert schema._no_line_break(pd.Series(["x\ny", "z"], index=[2, 3], dtype=STRING_DTYPE)).tolist() == [
        True,
        True,
    ]
    shuffled = pd.Series(["b\nc", "a", "d"], index=[3, 2, 4], dtype=STRING_DTYPE)
    assert schema._no_line_break(shuffled).tolist() == [False, True, True]
