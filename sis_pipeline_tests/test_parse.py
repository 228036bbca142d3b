"""Parsing (PRODUCT.md §3, file level): decoding, RFC 4180, header normalisation, field counts, line numbers."""

from __future__ import annotations

import csv
import io
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sis_pipeline.columns import ALIASES
from sis_pipeline.sisfile.parse import is_utf8, parse_csv

HEADER = "first_name,last_name,email"


def _parse(text: str | bytes):
    data = text.encode("utf-8") if isinstance(text, str) else text
    return parse_csv(data, "roster.csv")


def _records(parsed) -> list[dict]:
    return parsed.frame.to_dict("records")


# --- decoding -------------------------------------------------------------------------------------------

# UTF-8 that Python's codec refuses and a lax checker might let through: overlong forms, surrogates, code
# points past U+10FFFF, cut-off and stray continuation bytes.
_UTF8_EDGES = [b"\xc0\x80", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf8\x88\x80\x80\x80",
               b"\xe2\x82", b"\x80", b"\xbf\xbf", b"\xc3\xa9", b"\xe2\x82\xac", b"\xf0\x9f\x98\x80", b"a"]  # fmt: skip


@given(st.lists(st.sampled_from(_UTF8_EDGES) | st.binary(max_size=6), max_size=12))
@settings(max_examples=400, deadline=None)
def test_fast_utf8_check_agrees_with_python_s_codec(pieces):
    data = b"".join(pieces)
    try:
        data.decode("utf-8")
        valid = True
    except UnicodeDecodeError:
        valid = False
    assert is_utf8(data) is valid


def test_utf8_without_bom_is_read():
    parsed = _parse(f"{HEADER}\nZoë,Ng,z@x.org\n")
    assert parsed.problem is None and parsed.encoding == "utf-8"
    assert _records(parsed)[0]["first_name"] == "Zoë"


def test_utf8_with_bom_is_read_and_bom_stripped_from_header():
    parsed = _parse(b"\xef\xbb\xbf" + f"{HEADER}\nZoë,Ng,z@x.org\n".encode())
    assert parsed.encoding == "utf-8-sig"
    assert parsed.columns == ["first_name", "last_name", "email"]


def test_windows_1252_is_accepted_with_a_warning():
    parsed = _parse(f"{HEADER}\nZoë,Müller,z@x.org\n".encode("cp1252"))
    assert parsed.problem is None and parsed.encoding == "windows-1252"
    assert _records(parsed)[0]["last_name"] == "Müller"
    assert [w.code for w in parsed.warnings] == ["windows_1252"]


def test_utf16_is_ignored_naming_the_byte_offset():
    parsed = _parse(f"{HEADER}\nA,B,a@x.org\n".encode("utf-16"))
    assert parsed.problem.code == "not_decodable"
    assert parsed.problem.byte_offset == 0 and "byte offset 0" in parsed.problem.message


def test_nul_byte_is_ignored_naming_its_offset():
    parsed = _parse(f"{HEADER}\n".encode() + b"A\x00,B,a@x.org\n")
    assert parsed.problem.code == "not_decodable"
    assert parsed.problem.byte_offset == len(HEADER) + 2


def test_bytes_neither_utf8_nor_cp1252_are_ignored_naming_the_offset():
    data = f"{HEADER}\n".encode() + b"A\x81,B,a@x.org\n"
    parsed = _parse(data)
    assert parsed.problem.code == "not_decodable"
    offset = data.index(b"\x81")
    assert parsed.problem.byte_offset == offset
    assert f"byte offset {offset}" in parsed.problem.message


# --- RFC 4180 -------------------------------------------------------------------------------------------


def test_quoted_field_with_comma_is_one_value():
    parsed = _parse(f'{HEADER}\n"Smith, Jr.",Ng,a@x.org\n')
    assert _records(parsed)[0]["first_name"] == "Smith, Jr."


def test_doubled_quotes_are_one_quote():
    parsed = _parse(f'{HEADER}\n"The ""Rock""",Ng,a@x.org\n')
    assert _records(parsed)[0]["first_name"] == 'The "Rock"'


def test_newline_inside_quotes_stays_in_the_value():
    parsed = _parse(f'{HEADER}\n"two\nlines",Ng,a@x.org\n')
    assert _records(parsed)[0]["first_name"] == "two\nlines"


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["lf", "crlf", "cr"])
def test_line_endings_lf_crlf_and_cr_are_records(newline):
    parsed = _parse(newline.join([HEADER, "A,B,a@x.org", "C,D,c@x.org"]) + newline)
    assert [r["line_number"] for r in _records(parsed)] == [2, 3]
    assert _records(parsed)[1]["email"] == "c@x.org"


def test_mixed_line_endings_count_physical_lines():
    parsed = _parse(f"{HEADER}\r\nA,B,a@x.org\nC,D,c@x.org\rE,F,e@x.org")
    assert [r["line_number"] for r in _records(parsed)] == [2, 3, 4]


def test_line_number_is_the_physical_line_where_the_record_starts_after_multiline_fields():
    text = f'{HEADER}\n"a\nb\r\nc",X,a@x.org\nD,"e\n\nf",d@x.org\nG,H,g@x.org\n'
    assert [r["line_number"] for r in _records(_parse(text))] == [2, 5, 8]


def test_blank_lines_are_not_records_but_count_as_lines():
    parsed = _parse(f"{HEADER}\n\nA,B,a@x.org\n\r\n\nC,D,c@x.org\n\n")
    assert [r["line_number"] for r in _records(parsed)] == [3, 6]
    assert parsed.rows_total == 2


def test_values_are_trimmed():
    assert _records(_parse(f"{HEADER}\n  A , B\t, a@x.org  \n"))[0] == {
        "first_name": "A",
        "last_name": "B",
        "email": "a@x.org",
        "line_number": 2,
    }


def test_last_record_without_newline_is_read():
    assert _records(_parse(f"{HEADER}\nA,B,a@x.org"))[0]["email"] == "a@x.org"


def test_wrong_field_count_is_rejected_per_line_never_shifted():
    parsed = _parse(f"{HEADER}\nA,B,a@x.org\nC,D,extra,c@x.org\nE,e@x.org\nG,H,g@x.org\n")
    assert parsed.bad_rows[["line_number", "field_count"]].values.tolist() == [[3, 4], [4, 2]]
    assert parsed.bad_rows["fields"].tolist() == [["C", "D", "extra", "c@x.org"], ["E", "e@x.org"]]
    assert [(r["line_number"], r["email"]) for r in _records(parsed)] == [(2, "a@x.org"), (5, "g@x.org")]
    assert parsed.rows_total == 4


def test_wrong_field_count_after_multiline_field_keeps_line_numbers():
    parsed = _parse(f'{HEADER}\n"x\ny",B,a@x.org,extra\nC,D,c@x.org\n')
    assert parsed.bad_rows["line_number"].tolist() == [2]
    assert _records(parsed)[0]["line_number"] == 4


def test_unterminated_quote_makes_the_file_ignored_naming_the_line_it_opened():
    parsed = _parse(f'{HEADER}\nA,B,a@x.org\nC,"D,c@x.org\nE,F,e@x.org\nG,H,g@x.org\n')
    assert parsed.problem.code == "unreadable_quoting"
    assert parsed.problem.line_number == 3 and "line 3" in parsed.problem.message


def test_stray_quote_inside_an_unquoted_field_is_kept_literally():
    parsed = _parse(f'{HEADER}\nShaquille,O"Neal,s@x.org\n"a\nb",C,c@x.org\nD,E,d@x.org,extra\n')
    assert parsed.problem is None
    assert [(r["line_number"], r["last_name"]) for r in _records(parsed)] == [(2, 'O"Neal'), (3, "C")]
    assert parsed.bad_rows["line_number"].tolist() == [5]


def test_unterminated_quote_in_a_file_with_stray_quotes_is_still_caught():
    parsed = _parse(f'{HEADER}\nShaquille,O"Neal,s@x.org\nC,"D,c@x.org\nE,F,e@x.org\n')
    assert parsed.problem.code == "unreadable_quoting"
    assert parsed.problem.line_number == 3


# --- header ---------------------------------------------------------------------------------------------


def test_header_normalisation_trims_lowercases_and_turns_spaces_and_hyphens_to_underscores():
    parsed = _parse(" First Name ,LAST-NAME,\u200bEmail\nA,B,a@x.org\n")
    assert parsed.columns == ["first_name", "last_name", "email"]


@pytest.mark.parametrize(("alias", "canonical"), sorted(ALIASES.items()))
def test_header_alias_maps_to_canonical_column(alias, canonical):
    header = alias.replace("_", " ").title()
    parsed = _parse(f"{header}\nvalue\n")
    assert parsed.columns == [canonical]


def test_empty_file_is_ignored_as_no_header():
    assert _parse(b"").problem.code == "no_header"
    assert _parse("\n\r\n\n").problem.code == "no_header"


def test_header_without_data_record_is_ignored():
    assert _parse(f"{HEADER}\n").problem.code == "no_data"
    assert _parse(f"{HEADER}\n\n\n").problem.code == "no_data"


def test_two_columns_with_the_same_name_after_normalisation_make_the_file_ignored():
    parsed = _parse("email,First Name,Email Address\na@x.org,A,a@x.org\n")
    assert parsed.problem.code == "duplicate_column"
    assert parsed.problem.column_name == "email"
    assert "columns 1" in parsed.problem.message and "3" in parsed.problem.message


def test_columns_with_blank_headers_are_ignored_with_a_warning():
    parsed = _parse(f"{HEADER},,\nA,B,a@x.org,x,y\n")
    assert parsed.problem is None
    assert list(parsed.frame.columns) == ["first_name", "last_name", "email", "line_number"]
    assert [w.code for w in parsed.warnings] == ["unnamed_column"]


# --- property: whatever Python's csv module writes in RFC 4180 form, we read back -----------------------------------------

_VALUE = st.text(alphabet=st.sampled_from(list("aZé中 0,;\"'=\r\n\t")), max_size=8)
_BREAK = re.compile(r"\r\n|\r|\n")


@st.composite
def _tables(draw):
    n_columns = draw(st.integers(min_value=1, max_value=5))
    names = [f"col_{i}" for i in range(n_columns)]
    rows = draw(st.lists(st.lists(_VALUE, min_size=n_columns, max_size=n_columns), min_size=1, max_size=8))
    terminator = draw(st.sampled_from(["\r\n", "\n"]))
    if terminator == "\n":  # with LF rows Python's writer leaves a lone CR unquoted, which is not RFC 4180
        rows = [[value.replace("\r", "") for value in row] for row in rows]
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL]))
    return names, rows, terminator, quoting


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_tables())
def test_any_table_written_by_python_csv_parses_back_to_the_same_values(table):
    names, rows, terminator, quoting = table
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=terminator, quoting=quoting)
    writer.writerow(names)
    starts, line = [], 1 + len(_BREAK.findall(terminator))
    for row in rows:
        start = buffer.tell()
        writer.writerow(row)
        starts.append(line)
        line += len(_BREAK.findall(buffer.getvalue()[start:]))
    parsed = _parse(buffer.getvalue())
    assert parsed.problem is None
    assert parsed.bad_rows.empty
    assert parsed.frame[names].values.tolist() == [[v.strip() for v in row] for row in rows]
    assert parsed.frame["line_number"].tolist() == starts


# --- files that are not CSV text, named for what they are (bad_files.py has the full corpus) -------------


@pytest.mark.parametrize(
    ("head", "words"),
    [
        (b"\x1f\x8b\x08\x00" + bytes(20), "gzip-compressed"),
        (b"BZh91AY&SY" + bytes(20), "bzip2-compressed"),
        (b"PK\x03\x04" + bytes(26) + b"[Content_Types].xml" + b"xl/workbook.xml", "Excel workbook (.xlsx)"),
        (b"PK\x03\x04" + bytes(26) + b"mimetypeapplication/vnd.oasis.opendocument.spreadsheet", "(.ods)"),
        (b"PK\x03\x04" + bytes(26) + b"roster.csv", "ZIP archive"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(40), "Excel 97-2003 workbook (.xls)"),
        (b"%PDF-1.7\n" + bytes(20), "PDF document"),
        ("first_name\n".encode("utf-32"), "UTF-32"),
        ("first_name\n".encode("utf-16"), "UTF-16"),
    ],
    ids=["gzip", "bzip2", "xlsx", "ods", "zip", "xls", "pdf", "utf32", "utf16"],
)
def test_upload_that_is_not_csv_text_is_ignored_saying_what_it_is(head, words):
    problem = _parse(head).problem
    assert problem.code == "not_decodable" and problem.byte_offset == 0
    assert words in problem.message and "byte offset 0" in problem.message


def test_utf16_without_bom_is_recognised_by_its_nul_bytes():
    problem = _parse(f"{HEADER}\nA,B,a@x.org\n".encode("utf-16-le")).problem
    assert problem.code == "not_decodable" and problem.byte_offset == 1
    assert "UTF-16" in problem.message


def test_nul_byte_in_otherwise_text_file_is_called_binary_not_utf16():
    data = f"{HEADER}\nA,B,a@x.org\n".encode() * 20 + b"\x00"
    problem = _parse(data).problem
    assert problem.byte_offset == len(data) - 1 and "UTF-16" not in problem.message


def test_utf8_file_with_one_invalid_byte_is_ignored_rather_than_read_as_windows_1252():
    good = f"{HEADER}\nZoë,Müller,z@x.org\n".encode()
    data = good + b"A\xff,B,a@x.org\n"
    problem = _parse(data).problem
    assert problem.code == "not_decodable" and problem.byte_offset == len(good) + 1
    assert "0xff" in problem.message and f"byte offset {len(good) + 1}" in problem.message


def test_ascii_file_with_a_windows_1252_letter_is_still_read_as_windows_1252():
    parsed = _parse(f"{HEADER}\nA,B,a@x.org\n".encode() + "Zoé,C,c@x.org\n".encode("cp1252"))
    assert parsed.problem is None and parsed.encoding == "windows-1252"
    assert _records(parsed)[1]["first_name"] == "Zoé"


def test_file_ending_inside_a_multibyte_character_is_ignored_as_truncated():
    data = f"{HEADER}\nA,B,a@x.org\nZo".encode() + "ë".encode()[:1]
    problem = _parse(data).problem
    assert problem.code == "truncated" and problem.byte_offset == len(data) - 1
    assert "cut off" in problem.message


def test_trailing_dos_end_of_file_mark_is_not_a_record():
    parsed = _parse(f"{HEADER}\nA,B,a@x.org\n".encode() + b"\x1a")
    assert parsed.problem is None and parsed.rows_total == 1 and parsed.bad_rows.empty
    assert parsed.unterminated_line is None


# --- invisible characters and odd white space --------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "First\u00a0Name,Last\u202fName,\u3000Email",  # no-break, narrow no-break, ideographic spaces
        "first_name,last_\ufeffname,email",  # a BOM in the middle (two exports concatenated)
        "\u200bfirst_name\u200c,last_name,\u200b\u200demail\u2060",  # zero-width characters
    ],
    ids=["unicode-spaces", "bom-in-the-middle", "zero-width"],
)
def test_header_with_invisible_or_unicode_space_characters_is_read_as_it_looks(header):
    parsed = _parse(f"{header}\nA,B,a@x.org\n")
    assert parsed.problem is None
    assert parsed.columns == ["first_name", "last_name", "email"]


def test_soft_hyphen_is_removed_not_turned_into_an_underscore():
    assert _parse("first\u00adname,last_name,email\nA,B,a@x.org\n").columns[0] == "firstname"


def test_values_are_trimmed_of_no_break_spaces_and_of_invisible_characters_at_their_ends():
    parsed = _parse(f"{HEADER}\n\u00a0A\u200b,\ufeffB\u00a0,\u200ba@x.org\u2060 \n")
    assert _records(parsed)[0] == {"first_name": "A", "last_name": "B", "email": "a@x.org", "line_number": 2}


def test_invisible_characters_inside_a_value_are_kept():
    parsed = _parse(f"{HEADER}\nA,B,a\u200b@x.org\n")
    assert _records(parsed)[0]["email"] == "a\u200b@x.org"


# --- what validation needs from the parser ------------------------------------------------------------------


def test_keep_materialises_only_the_chosen_columns_but_lists_them_all():
    header = ",".join([*HEADER.split(","), *(f"x{i}" for i in range(2000))])
    row = ",".join(["A", "B", "a@x.org", *("v" for _ in range(2000))])
    parsed = parse_csv(f"{header}\n{row}\n{row}\n".encode(), "wide.csv", keep=lambda n: not n.startswith("x"))
    assert len(parsed.columns) == 2003
    assert list(parsed.frame.columns) == ["first_name", "last_name", "email", "line_number"]
    assert parsed.frame["email"].tolist() == ["a@x.org", "a@x.org"]


def test_keep_applies_to_files_read_the_careful_way_too():
    parsed = parse_csv(f'{HEADER},notes\nA,O"Neal,a@x.org,n\n'.encode(), "r.csv", keep=lambda n: n != "notes")
    assert list(parsed.frame.columns) == ["first_name", "last_name", "email", "line_number"]
    assert _records(parsed)[0]["last_name"] == 'O"Neal'


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (f"{HEADER}\nA,B,a@x.org\nC,D,c@x", 3),
        (f'{HEADER}\nA,"B\nB",a@x.org\nC,D,c@x', 4),
        (f'{HEADER}\nA,O"B,a@x.org\nC,D,c@x', 3),  # read the careful way
        (f"{HEADER}\nA,B,a@x.org\n", None),
        (f"{HEADER}\nA,B,a@x.org\r", None),
        (f"{HEADER}\nA,B,a@x.org\n  ", None),
    ],
    ids=["cut", "after-multiline", "careful-reader", "lf", "cr", "trailing-spaces"],
)
def test_last_line_without_a_line_break_is_reported(text, line):
    assert _parse(text).unterminated_line == line


def test_multiline_values_are_flagged_only_when_a_line_break_sits_inside_quotes():
    assert _parse(f'{HEADER}\n"a\nb",B,a@x.org\n').multiline_values
    assert not _parse(f'{HEADER}\n"a, b",B,a@x.org\n').multiline_values
    assert _parse(f'{HEADER}\nO"Neal,"x\ny",a@x.org\n').multiline_values  # careful reader
