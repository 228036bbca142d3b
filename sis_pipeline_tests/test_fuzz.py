"""Fuzzing the file contract (issue 7, reliability): whatever bytes a school uploads, the parser, validator
and mapper never raise, every file ends accepted, with rejected rows, or ignored, and the invariants that
downstream code relies on hold (counts add up, line numbers are real lines, codes are documented ones,
messages quote no value of the file).

Deterministic for CI: derandomized, no example database, bounded example counts (the file runs in well
under a minute on a shared 2-core machine).
"""

from __future__ import annotations

import ast
import csv
import hashlib
import io
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sis_pipeline import columns, sisfile
from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile import map_file, validate_file
from sis_pipeline.sisfile.schema import REASON_CODES
from sis_pipeline.warehouse import Warehouse
from sis_pipeline_tests.warehouse_builders import dump

SOURCE = "fuzz.csv"

#: docs/FILE_CONTRACT.md §3–5: the only codes a school is ever shown.
PROBLEM_CODES = {
    "not_decodable",
    "truncated",
    "no_header",
    "no_data",
    "missing_column",
    "wrong_delimiter",
    "duplicate_column",
    "unreadable_quoting",
}
WARNING_CODES = {
    "graduation_invalid",
    "user_type_unmapped",
    "extra_value_unmapped",
    "unmapped_column",
    "mapped_column_missing",
    "unnamed_column",
    "windows_1252",
}


def _code_vocabulary() -> frozenset[str]:
    """Every word of every string literal in the file contract's code (messages are built from these)."""
    files = [*Path(sisfile.__file__).parent.glob("*.py"), Path(columns.__file__)]
    words: set[str] = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                words.update(w.lower() for w in re.findall(r"[A-Za-z]+", node.value))
    return frozenset(words)


VOCABULARY = _code_vocabulary()
#: Punctuation messages use; zero-width characters only in a quoted header of a known column.
PUNCTUATION = set(":;,.()'\"-/?_") | set(columns.INVISIBLE_CHARACTERS)


def quotes_no_file_value(message: str, *names: str) -> bool:
    """Whether `message` is made only of the code's own words, numbers, hex bytes and punctuation, besides
    `names` (the source, the client id). A value of the file (a name, an email, a stray cell) carries words
    or characters no message of the code has, so it fails this."""
    for name in names:
        message = message.replace(name, " ")
    message = re.sub(r"0x[0-9a-f]{2}", " ", message)
    words = {w.lower() for w in re.findall(r"[A-Za-z]+", message)}
    others = set(re.sub(r"[A-Za-z0-9\s]", "", message))
    unknown = {w for w in words if w not in VOCABULARY and not (w.endswith("s") and w[:-1] in VOCABULARY)}
    return not unknown and others <= PUNCTUATION


FUZZ = settings(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _client(client_id: str = "22", **fields) -> ClientConfig:
    return ClientConfig(id=client_id, name="Fuzz School", bucket=f"sis-fuzz-{client_id}", **fields)


CLIENTS = [
    _client(),
    _client(
        identifier="user_id",
        user_types={"Student": "Students", "Staff": "Staff"},
        extra_fields={"program": {"group": "Programs", "values": {"Bio": "Biology", "Art": "Arts"}}},
    ),
    _client(identifier="user_login", class_year_tags=True),
]

BREAK = re.compile(rb"\r\n|\r|\n")


def physical_lines(data: bytes) -> int:
    """Lines as a text editor counts them (CRLF, LF or a lone CR end a line)."""
    return len(BREAK.findall(data)) + 1


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def _captured_logs() -> Iterator[list[str]]:
    """The package's log lines at DEBUG (not caplog: hypothesis re-runs the body without re-entering it)."""
    logger = logging.getLogger("sis_pipeline")
    handler, level = _Collect(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def outcome(result) -> str:
    """Which of the three outcomes a file had (for hypothesis' statistics)."""
    if result.ignored:
        return f"ignored ({result.problem.code})"
    return "accepted with rejected rows" if len(result.rejected) else "accepted"


def check_contract_outcome(data: bytes, client: ClientConfig):
    """Run parse + validate + map on `data` and assert every invariant of the outcome; return it."""
    with _captured_logs() as logs:
        result = validate_file(data, client, SOURCE)
        mapped = map_file(result, client)
    lines = physical_lines(data)
    rejected_lines = set(result.rejected["line_number"].tolist())
    valid_lines = result.valid["line_number"].tolist()

    if result.ignored:  # outcome 1: ignored, nothing else
        problem = result.problem
        assert problem.code in PROBLEM_CODES
        assert quotes_no_file_value(problem.message, SOURCE), problem.message
        assert result.valid.empty and result.rejected.empty and result.rows_valid == 0
        assert mapped.subscribers.empty and mapped.memberships.empty and mapped.protected_keys.empty
        if problem.line_number is not None:
            assert 1 <= problem.line_number <= lines + 1
        if problem.byte_offset is not None:
            assert 0 <= problem.byte_offset < len(data)
    else:  # outcome 2 or 3: accepted, with or without rejected rows
        assert result.rows_total >= 1
        assert result.rows_valid + result.rows_rejected == result.rows_total
        assert not rejected_lines & set(valid_lines)
        assert valid_lines == sorted(set(valid_lines))
        assert all(2 <= line <= lines for line in rejected_lines | set(valid_lines))
        assert set(result.rejected["reason_code"]) <= set(REASON_CODES)
        for message in result.rejected["message"]:
            assert quotes_no_file_value(message), message
        keys = mapped.subscribers["subscriber_key"]
        assert keys.notna().all() and keys.is_unique
        assert len(mapped.subscribers) == result.rows_valid
        assert set(mapped.subscribers["line_number"]) == set(valid_lines)
        # nobody the file names may be deprovisioned because of it
        assert set(keys) <= set(mapped.protected_keys)
    assert {w.code for w in result.warnings} <= WARNING_CODES
    for line in logs:
        assert quotes_no_file_value(line, SOURCE, client.id), line
    return result, mapped


def test_the_message_check_flags_a_quoted_value_and_passes_the_codes_own_messages():
    """The invariant has teeth: a message quoting a cell fails it; the contract's own messages pass."""
    for leaked in (
        f"{SOURCE}: line 1: columns 1 ('Kimzqel') and 2 ('Kimzqel') are both 'kimzqel' after normalisation",
        "email appears on 2 rows (first on line 2): jo@x.org",
        "the line has 4 fields but the header has 3: O'Neil",
        "user_type holds more than one value: Étudiant;Staff",
    ):
        assert not quotes_no_file_value(leaked, SOURCE), leaked
    result = validate_file(
        _write(
            ["first_name", "last_name", "email", "user_type"], [["A", "B", "bad", "x;y"], ["C", "D", "", ""]]
        ),
        CLIENTS[0],
        SOURCE,
    )
    assert len(result.rejected) == 3
    assert all(quotes_no_file_value(m) for m in result.rejected["message"])


# --- (a) arbitrary bytes and CSV-ish bytes -------------------------------------------------------------

#: Headers (with their number of columns) the bytes may follow; b"" leaves the header to the fuzzer too.
HEADERS = [
    (b"", 3),
    (b"first_name,last_name,email\n", 3),
    (b"\xef\xbb\xbffirst_name,last_name,email,user_type\r\n", 4),
    (b"First Name,Last Name,Email Address,Student ID,Login,Graduation,Program\r\n", 7),
    (b'"first_name","last_name","email","user_id","user_login","class_year"\r', 6),
]
# fmt: off
#: Pieces of cells: names, emails (valid, invalid, duplicates in two cases), logins that collide with their
#: prefixed form, multi-value cells, dates, quotes (well and badly placed), emoji, right-to-left text and
#: zero-width characters.
CELL_PIECES = [
    b"", b" ", b"\t", b"a", b"Zo", b"O'Neil", b'O"Brien', b"@", b".", b"x.org", b"a@x.org", b"A@X.ORG",
    b"b@x.org", b"bad@", b"22_", b"u1", b"Student", b"Bio;Art", b";", b"2026", b"6/1/2026", b"Fall", b"yes",
    b'"', b'""', b'"q,uoted"', b'"two\nlines"', b'"cr\rlf\r\n"',
    b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xd7\xa9\xd7\x9c", b"\xe2\x80\x8b", b"\xe2\x80\xae",
]
#: Bytes that make a file hard or impossible to decode: Windows-1252, a cut or invalid UTF-8 sequence, NUL,
#: BOMs in the middle, a DOS end-of-file mark.
BYTE_NOISE = [b"\xe9", b"\xc3", b"\x81", b"\x00", b"\xef\xbb\xbf", b"\xff\xfe", b"\x1a"]
LINE_ENDS = [b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\n\n"]
# fmt: on


@st.composite
def csv_like_files(draw) -> bytes:
    """A header, then records of cells glued from CELL_PIECES (in one file in four, BYTE_NOISE too), mostly
    with the header's field count, ended by mixed line breaks; sometimes no final line break (cut off)."""
    header, width = draw(st.sampled_from(HEADERS))
    noisy = draw(st.booleans()) and draw(st.booleans())
    cell = st.lists(st.sampled_from(CELL_PIECES + BYTE_NOISE if noisy else CELL_PIECES), max_size=3)
    fields = st.one_of(st.just(width), st.integers(min_value=1, max_value=width + 2))
    records = draw(
        st.lists(fields.flatmap(lambda n: st.lists(cell.map(b"".join), min_size=n, max_size=n)), max_size=8)
    )
    body = b"".join(b",".join(record) + draw(st.sampled_from(LINE_ENDS)) for record in records)
    if records and draw(st.booleans()) and draw(st.booleans()):
        body = body.rstrip(b"\r\n")
    return header + body


@settings(FUZZ, max_examples=150)
@given(data=st.binary(max_size=400), client=st.sampled_from(CLIENTS), header=st.sampled_from(HEADERS))
def test_validate_file_never_raises_for_any_bytes(data, client, header):
    result, _ = check_contract_outcome(header[0] + data, client)
    event(outcome(result))


@settings(FUZZ, max_examples=200)
@given(data=csv_like_files(), client=st.sampled_from(CLIENTS))
def test_csv_like_bytes_end_accepted_rejected_or_ignored_with_sound_invariants(data, client):
    result, _ = check_contract_outcome(data, client)
    event(outcome(result))


_LOGIN_PART = st.sampled_from(["", ".", "@", "u1", "a", "x.org", "@x.org", "a@x.org", "22_"])


@st.composite
def logins(draw) -> list[str]:
    """Distinct logins, some of them another one with the client's prefix (`u1` is stored `22_u1`, and
    `22_u1` may be in the file too): the raw values differ, the stored forms may not."""
    base = draw(st.lists(st.lists(_LOGIN_PART, min_size=1, max_size=4).map("".join), min_size=1, max_size=4))
    prefixed = [f"22_{v}" for v in draw(st.lists(st.sampled_from(base), max_size=2))]
    return list(dict.fromkeys(base + prefixed))


@settings(FUZZ, max_examples=60)
@given(logins=logins(), identifier=st.sampled_from(["user_id", "user_login"]))
def test_distinct_logins_that_are_stored_alike_never_become_one_subscriber(logins, identifier):
    client = _client(identifier=identifier)
    rows = [["F", "L", f"s{i}@x.org", login] for i, login in enumerate(logins)]
    result, mapped = check_contract_outcome(
        _write(["first_name", "last_name", "email", identifier], rows), client
    )
    event(outcome(result))
    assert mapped.subscribers["subscriber_key"].is_unique


def test_a_login_equal_to_another_rows_stored_login_rejects_both_rows():
    client = _client(identifier="user_id")
    data = _write(
        ["first_name", "last_name", "email", "user_id"],
        [
            ["A", "B", "a@x.org", ".a@x.org"],
            ["C", "D", "c@x.org", "22_.a@x.org"],
            ["E", "F", "e@x.org", "u9"],
        ],
    )
    result, mapped = check_contract_outcome(data, client)
    assert result.rejected[["line_number", "reason_code"]].values.tolist() == [
        [2, "duplicate"],
        [3, "duplicate"],
    ]
    assert mapped.subscribers["subscriber_key"].tolist() == ["22_u9"]


# --- (b) well-formed CSVs with random unicode ----------------------------------------------------------

# Quotes, separators, emoji, right-to-left text, combining marks, zero-width and direction marks.
_SPECIALS = [*"\",;'\t =+-@", "😀", "👩\u200d🎓", "שלום", "مرحبا", "e\u0301", "é", "\u200b", "\u202e", "中"]
_UNICODE = st.text(st.characters(exclude_categories=["Cs", "Cc"]), max_size=3)
#: One-line values: a line break in a core column (a name) rejects the row by design (FILE_CONTRACT §4).
NAMES = st.lists(st.one_of(st.sampled_from(_SPECIALS), _UNICODE), max_size=6).map("".join)
#: Values of extra columns may span lines.
MULTILINE = st.lists(st.one_of(st.sampled_from([*_SPECIALS, "\r", "\n", "\r\n"]), _UNICODE), max_size=6).map(
    "".join
)
EMAIL_LOCAL = st.from_regex(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,6}(\.[A-Za-z0-9_-]{1,4})?", fullmatch=True)
EMAIL_DOMAIN = st.sampled_from(["x.org", "School.Example.EDU", "sub-1.x.co.uk"])
PADDING = st.sampled_from(["", " ", "\t", "  "])
HEADER_SPELLINGS = {
    "first_name": ["first_name", "First Name", "FIRST-NAME", " first name "],
    "last_name": ["last_name", "Last Name", "last-name"],
    "email": ["email", "Email Address", "EMAIL"],
    "user_id": ["user_id", "Student ID", "userid"],
    "user_type": ["user_type", "Study Level"],
    "program": ["program", "Program"],
    "notes": ["notes", "Notes"],
}
#: The client of (b): maps user types and one extra column; `notes` is an unmapped extra column.
TABLE_CLIENT = _client(
    user_types={"Student": "Students", "Staff": "Staff"},
    extra_fields={"program": {"group": "Programs", "values": {"Bio": "Biology", "Art": "Arts"}}},
)


@st.composite
def well_formed_tables(draw):
    """(header cells, canonical columns, rows, per-row line terminators, quoting) of a valid roster."""
    optional = draw(st.lists(st.sampled_from(["user_id", "user_type", "program", "notes"]), unique=True))
    names = draw(st.permutations(["first_name", "last_name", "email", *optional]))
    header = [draw(st.sampled_from(HEADER_SPELLINGS[c])) for c in names]
    n = draw(st.integers(min_value=1, max_value=8))
    rows = []
    for i in range(n):
        values = {
            "first_name": draw(NAMES),
            "last_name": draw(NAMES),
            # unique case-insensitively by construction: the row number is part of the local part
            "email": draw(PADDING) + f"{draw(EMAIL_LOCAL)}.r{i}@{draw(EMAIL_DOMAIN)}" + draw(PADDING),
            "user_id": draw(NAMES) + f"#{i}",
            "user_type": draw(st.sampled_from(["", "Student", "staff ", "Student;", "Visitor"])),
            "program": draw(st.sampled_from(["", "Bio", "bio; Art", "Art;Music", "Bio\nArt", "Art\r\n;Bio"])),
            "notes": draw(MULTILINE),
        }
        rows.append([values[c] for c in names])
    terminators = draw(st.lists(st.sampled_from(["\r\n", "\n", "\r"]), min_size=n + 1, max_size=n + 1))
    quoting = draw(st.sampled_from([csv.QUOTE_MINIMAL, csv.QUOTE_ALL, csv.QUOTE_NONNUMERIC]))
    blank_lines = draw(st.lists(st.sampled_from(["", "\n", "\r\n\r\n"]), min_size=n, max_size=n))
    return header, names, rows, terminators, quoting, blank_lines


def _trimmed(value: str) -> str:
    """A value as the contract reads it: surrounding white space and invisible characters removed."""
    return value.strip().strip(columns.INVISIBLE_CHARACTERS).strip()


def _write(header: list[str], rows: list[list[str]]) -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\r\n").writerows([header, *rows])
    return buffer.getvalue().encode("utf-8")


def _write_record(values: list[str], terminator: str, quoting: int) -> str:
    buffer = io.StringIO(newline="")
    # Python's writer only quotes a line break when it is part of the terminator; RFC 4180 quotes both.
    quoting = csv.QUOTE_ALL if quoting == csv.QUOTE_MINIMAL and terminator != "\r\n" else quoting
    csv.writer(buffer, lineterminator=terminator, quoting=quoting).writerow(values)
    return buffer.getvalue()


@settings(FUZZ, max_examples=80)
@given(well_formed_tables())
def test_every_row_of_a_well_formed_csv_is_accepted_intact_at_the_line_where_it_starts(table):
    header, names, rows, terminators, quoting, blank_lines = table
    text = _write_record(header, terminators[0], quoting)
    record_starts = []
    for row, terminator, blank in zip(rows, terminators[1:], blank_lines, strict=True):
        text += blank
        record_starts.append(len(text))
        text += _write_record(row, terminator, quoting)
    data = text.encode("utf-8")
    # the physical line of each record start, counted over the whole text as an editor would
    breaks = [m.end() for m in re.finditer(r"\r\n|\r|\n", text)]
    expected_lines = [sum(1 for b in breaks if b <= start) + 1 for start in record_starts]

    result, mapped = check_contract_outcome(data, TABLE_CLIENT)
    event(outcome(result))
    assert not result.ignored, result.problem
    assert result.rejected.empty, result.rejected.to_dict("records")
    assert result.rows_valid == result.rows_total == len(rows)
    assert result.valid["line_number"].tolist() == expected_lines
    kept = [c for c in names if c != "notes"]  # an unmapped extra column is dropped with a warning
    expected = [[_trimmed(row[names.index(c)]) for c in kept] for row in rows]
    assert result.valid[kept].values.tolist() == expected

    subscribers = mapped.subscribers
    assert subscribers["subscriber_key"].is_unique
    emails = [row[names.index("email")].strip() for row in rows]
    assert subscribers["subscriber_key"].tolist() == [e.lower() for e in emails]
    assert subscribers["email"].tolist() == [e.split("@")[0] + "@" + e.split("@")[1].lower() for e in emails]
    for column in ("first_name", "last_name"):
        stored = [None if pd.isna(v) else v for v in subscribers[column]]
        assert stored == [_trimmed(row[names.index(column)]) or None for row in rows]


# --- (c) a fuzzed file applied to a warehouse: applied, or nothing changes -----------------------------

_BASE = _write(
    ["first_name", "last_name", "email", "user_type", "program"],
    [[f"Base{n}", "Roster", f"base{n}@x.org", "Student", "Bio"] for n in range(5)],
)
_WAREHOUSE_BODY = st.one_of(
    csv_like_files(),
    st.lists(
        st.tuples(NAMES, st.sampled_from(["a@x.org", "base1@x.org", "BASE2@X.ORG", "bad", ""])), max_size=5
    ).map(
        lambda rows: _write(
            ["first_name", "last_name", "email", "delete"],
            [[name, "L", email, "yes" if i % 3 == 2 else ""] for i, (name, email) in enumerate(rows)],
        )
    ),
)


def _version(data: bytes) -> FileVersion:
    digest = hashlib.sha256(data).hexdigest()
    return FileVersion(
        bucket="sis-fuzz", key="student_feed.csv", etag=None, version_id=None, sha256=digest, size=len(data)
    )


def _apply(warehouse: Warehouse, client: ClientConfig, data: bytes):
    validated = validate_file(data, client, SOURCE)
    mapped = map_file(validated, client)
    outcome = warehouse.apply(
        client=client, validated=validated, mapped=mapped, file=_version(data), run_id=None, force=True
    )
    return validated, mapped, outcome


def _tables(warehouse: Warehouse) -> dict[str, list[tuple]]:
    snapshot = dump(warehouse)
    return {name: snapshot[name] for name in ("subscribers", "subscriber_communities")}


def test_a_fuzzed_file_is_applied_or_leaves_the_subscribers_byte_identical(tmp_path):
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'fuzz.sqlite'}")
    warehouse.upgrade()
    counter = iter(range(10_000))

    @settings(FUZZ, max_examples=25)
    @given(data=_WAREHOUSE_BODY)
    def apply_fuzzed_file(data):
        client = _client(
            f"c{next(counter)}",
            user_types={"Student": "Students"},
            extra_fields={"program": {"group": "Programs", "values": {"Bio": "Biology"}}},
        )
        assert _apply(warehouse, client, _BASE)[2].status == "applied"
        before = _tables(warehouse)
        validated, mapped, outcome = _apply(warehouse, client, data)
        event(f"{outcome.status}, {'some' if validated.rows_rejected else 'no'} rows rejected")
        if validated.ignored:
            assert outcome.status == "ignored"
            assert _tables(warehouse) == before
            return
        assert outcome.status == "applied"
        state = warehouse.current_subscribers(client.id).set_index("subscriber_key")
        for row in mapped.subscribers.itertuples():
            assert state.loc[row.subscriber_key, "status"] == ("deleted" if row.delete else "active")
            assert state.loc[row.subscriber_key, "email"] == row.email
        untouched = {f"base{n}@x.org" for n in range(5)} - set(mapped.subscribers["subscriber_key"])
        assert set(state.loc[sorted(untouched), "status"]) <= {"active"}  # no auto_deprovision
        log = warehouse.sync_log(client.id, limit=1).iloc[0]
        assert (log["rows_valid"], log["rows_rejected"]) == (validated.rows_valid, validated.rows_rejected)

    try:
        apply_fuzzed_file()
    finally:
        warehouse.dispose()
