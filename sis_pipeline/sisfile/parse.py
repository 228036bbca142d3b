"""Bytes -> frame (PRODUCT.md §3, file level): decoding, RFC 4180, header normalisation, field counts.

The common case is read by pyarrow's CSV reader with every column as a string. Record boundaries and
physical line numbers come from numpy over the raw bytes: a line break is a record end exactly when the
number of `"` before it is even (RFC 4180 quotes come in pairs, `""` included). That shortcut is only
sound when every quote sits where RFC 4180 puts it, which is checked first, vectorised; a file with stray
quotes (`O"Brien` in an unquoted field) is read by Python's `csv` module instead, which reads such quotes
the same lenient way pyarrow does, only slower. Nothing here depends on a client.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from sis_pipeline.columns import CORE_COLUMNS, INVISIBLE_CHARACTERS, normalise_header
from sis_pipeline.sisfile.result import FileProblem, FileWarning

#: pandas dtype of every text column: pyarrow-backed, so string operations run in Arrow's kernels.
STRING_DTYPE = pd.StringDtype("pyarrow")

#: Problem codes of a file that cannot be read at all.
NOT_DECODABLE = "not_decodable"
NO_HEADER = "no_header"
NO_DATA = "no_data"
DUPLICATE_COLUMN = "duplicate_column"
UNREADABLE_QUOTING = "unreadable_quoting"
TRUNCATED = "truncated"

#: Internal name prefix of columns whose header cell is blank (ignored with a warning).
UNNAMED_PREFIX = "__unnamed_"

_QUOTE, _COMMA, _LF, _CR = 34, 44, 10, 13
_UTF8_BOM = b"\xef\xbb\xbf"
# What files that are not CSV text start with, and what to tell the school (checked before decoding).
_UTF32_BOMS = (b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_SAVE_AS_CSV = "open it in Excel (or your SIS) and save or export it as 'CSV UTF-8 (Comma delimited)'"
_SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "this is a gzip-compressed file, not a CSV; upload the uncompressed .csv file"),
    (b"BZh", "this is a bzip2-compressed file, not a CSV; upload the uncompressed .csv file"),
    (
        b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
        f"this is an Excel 97-2003 workbook (.xls), not a CSV; {_SAVE_AS_CSV}",
    ),
    (b"%PDF-", "this is a PDF document, not a CSV; export the roster from your SIS as CSV"),
    (_UTF32_BOMS[0], "it is UTF-32 text (it starts with a UTF-32 byte order mark); save it as UTF-8"),
    (_UTF32_BOMS[1], "it is UTF-32 text (it starts with a UTF-32 byte order mark); save it as UTF-8"),
    (
        _UTF16_BOMS[0],
        "it is UTF-16 text (it starts with a UTF-16 byte order mark, as Excel's 'Unicode Text' "
        "does); save it as UTF-8",
    ),
    (_UTF16_BOMS[1], "it is UTF-16 text (it starts with a UTF-16 byte order mark); save it as UTF-8"),
)
_ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
#: A trailing Ctrl-Z: the end-of-file mark some DOS-era export tools still append.
_DOS_EOF = b"\x1a"
_UTF8_CHARACTER = re.compile("[^\x00-\x7f\ufffd]")
#: Trimmed from both ends of every value, in one pass: Unicode white space (the set Arrow's
#: utf8_trim_whitespace and str.isspace agree on, no-break spaces included) and invisible characters.
_TRIMMED = "".join(c for c in map(chr, range(0x3001)) if c.isspace()) + INVISIBLE_CHARACTERS
# A character no roster contains, used to detect a quoted field still open at the end of the file.
_SENTINEL = "\ue000"


@dataclass
class ParsedFile:
    """A file read into strings. When `problem` is set the file is ignored and the frames are empty."""

    source: str
    encoding: str  # utf-8, utf-8-sig (with BOM) or windows-1252
    raw_header: list[str] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)  # normalised names, file order; blanks -> __unnamed_<i>
    frame: pd.DataFrame = field(default_factory=pd.DataFrame)  # named columns, trimmed, + line_number
    bad_rows: pd.DataFrame = field(default_factory=pd.DataFrame)  # line_number, field_count, fields (list)
    rows_total: int = 0  # data records (blank lines are not records)
    warnings: list[FileWarning] = field(default_factory=list)
    problem: FileProblem | None = None
    # The line of the last record when the file does not end with a line break: a file cut off mid-row
    # looks like that (see validate_file). None when the file ends with one.
    unterminated_line: int | None = None
    multiline_values: bool = False  # some quoted value holds a line break

    @property
    def ignored(self) -> bool:
        return self.problem is not None


def parse_csv(data: bytes, source: str, keep: Callable[[str], bool] | None = None) -> ParsedFile:
    """Read one roster file. Never raises for bad input: an unreadable file comes back with `problem` set.

    `keep(name)` chooses which named columns are materialised in `frame` (all when None); `columns` always
    lists every column. A 10,000-column export costs one pass over the bytes, not 10,000 pandas columns.
    """
    decoded = _decode(data, source)
    if isinstance(decoded, FileProblem):
        return _ignored(source, "unknown", decoded)
    body, encoding, warnings = decoded
    records = _fast_records(body, source)
    if isinstance(records, FileProblem):
        return _ignored(source, encoding, records, warnings)
    if records is None:
        return _slow_parse(body, source, encoding, warnings, keep)
    starts, ends, lines, multiline = records
    if len(starts) == 0:
        return _ignored(source, encoding, _no_header(source), warnings)
    raw_header = _split_record(body[starts[0] : ends[0]])
    header = _header(raw_header, source)
    if isinstance(header, FileProblem):
        return _ignored(source, encoding, header, warnings)
    columns, header_warnings = header
    data_starts, data_ends, data_lines = starts[1:], ends[1:], lines[1:]
    if len(data_starts) == 0:
        return _ignored(source, encoding, _no_data(source), warnings)
    wanted = _wanted(columns, keep)
    table, invalid_rows = _read_arrow(body, int(data_starts[0]), len(columns), wanted)
    if table is None:
        return _slow_parse(body, source, encoding, warnings, keep)
    if invalid_rows:
        counts = _field_counts(body, data_starts, data_ends)
        good = counts == len(columns)
    else:
        counts = np.full(len(data_starts), len(columns))
        good = np.ones(len(data_starts), dtype=bool)
    if table.num_rows != int(good.sum()):  # the two readers disagree: trust the careful one
        return _slow_parse(body, source, encoding, warnings, keep)
    bad_idx = np.flatnonzero(~good)
    bad_rows = _bad_rows_frame(
        data_lines[bad_idx],
        counts[bad_idx],
        [_split_record(body[data_starts[i] : data_ends[i]]) for i in bad_idx],
    )
    frame = _arrow_to_frame(table, columns, wanted, data_lines[good])
    return ParsedFile(
        source=source,
        encoding=encoding,
        raw_header=raw_header,
        columns=columns,
        frame=frame,
        bad_rows=bad_rows,
        rows_total=len(data_starts),
        warnings=warnings + header_warnings,
        unterminated_line=_unterminated_line(body, body[int(data_starts[-1]) :], int(data_lines[-1])),
        multiline_values=multiline,
    )


def _wanted(columns: list[str], keep: Callable[[str], bool] | None) -> list[int]:
    """Positions of the named columns the caller wants materialised."""
    return [
        i
        for i, name in enumerate(columns)
        if not name.startswith(UNNAMED_PREFIX) and (keep is None or keep(name))
    ]


def _unterminated_line(body: bytes, last_record: bytes | str, last_line: int) -> int | None:
    """The last record's line when the file does not end with a line break and that record holds more
    than white space; else None."""
    if body.endswith((b"\n", b"\r")) or not last_record.strip():
        return None
    return last_line


# --- decoding -------------------------------------------------------------------------------------------


def _decode(data: bytes, source: str) -> tuple[bytes, str, list[FileWarning]] | FileProblem:
    """UTF-8 bytes without BOM, the encoding read, and warnings; or why the bytes are not text we accept."""
    not_text = _not_a_text_file(data)
    if not_text is not None:
        return _not_decodable(source, 0, not_text)
    nul = data.find(b"\x00")
    if nul >= 0:
        return _not_decodable(source, nul, _why_nul(data))
    if data.endswith(_DOS_EOF):
        data = data[: -len(_DOS_EOF)]
    if data.startswith(_UTF8_BOM):
        data, encoding = data[len(_UTF8_BOM) :], "utf-8-sig"
    else:
        encoding = "utf-8"
    bom = len(_UTF8_BOM) if encoding == "utf-8-sig" else 0
    if is_utf8(data):
        return data, encoding, []
    try:
        data.decode("utf-8")  # the slow, exact reader: where the first invalid byte is, and why
        return data, encoding, []
    except UnicodeDecodeError as utf8_error:
        utf8_offset = utf8_error.start + bom
        cut_character = utf8_error.end == len(data) and utf8_error.reason == "unexpected end of data"
    if cut_character:
        # The last bytes start a multi-byte character that never finishes: the upload was cut off.
        return FileProblem(
            code=TRUNCATED,
            message=f"{source}: the file ends in the middle of a character (byte offset {utf8_offset}): "
            "it looks cut off, so it is ignored rather than deprovision the students after the cut. "
            "Upload the complete file",
            byte_offset=utf8_offset,
        )
    if _has_utf8_characters(data):
        # Real UTF-8 characters and a stray byte: reading it all as Windows-1252 would garble every
        # accented name in the file, so the file is refused instead.
        return _not_decodable(
            source,
            utf8_offset,
            f"the file is UTF-8 but byte 0x{data[utf8_offset - bom]:02x} is not valid UTF-8 (a damaged file, "
            "or text pasted in from another encoding); fix that place or save the whole file as UTF-8 again",
        )
    try:
        text = data.decode("cp1252")
    except UnicodeDecodeError as exc:
        return _not_decodable(
            source,
            exc.start + bom,
            f"byte 0x{data[exc.start]:02x} is neither UTF-8 nor Windows-1252; save it as UTF-8",
        )
    warning = FileWarning(
        code="windows_1252",
        message=f"{source}: not UTF-8 (first invalid byte at offset {utf8_offset}); read as Windows-1252. "
        "Save the file as UTF-8 to be sure accented names are read as intended.",
    )
    return text.encode("utf-8"), "windows-1252", [warning]


def is_utf8(data: bytes) -> bool:
    """Whether the bytes are valid UTF-8, by Arrow's vectorised check (about ten times Python's decode of a
    100 MB file, and no copy): the bytes as one binary value, cast to text."""
    offsets = pa.py_buffer(np.array([0, len(data)], dtype=np.int64))
    value = pa.Array.from_buffers(pa.large_binary(), 1, [None, offsets, pa.py_buffer(data)])
    try:
        value.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _not_a_text_file(data: bytes) -> str | None:
    """What the file is when its first bytes say it is not CSV text (an archive, a workbook, UTF-16...)."""
    for signature, why in _SIGNATURES:
        if data.startswith(signature):
            return why
    if data.startswith(_ZIP_SIGNATURES):
        head_and_tail = data[:65536] + data[-65536:]
        if b"xl/" in head_and_tail:
            return f"this is an Excel workbook (.xlsx), not a CSV; {_SAVE_AS_CSV}"
        if b"opendocument.spreadsheet" in head_and_tail:
            return f"this is an OpenDocument spreadsheet (.ods), not a CSV; {_SAVE_AS_CSV}"
        return "this is a ZIP archive, not a CSV; upload the .csv file itself"
    return None


def _why_nul(data: bytes) -> str:
    """A NUL byte never occurs in CSV text: UTF-16 without a byte order mark, or binary data."""
    head = np.frombuffer(data[:4096], dtype=np.uint8)
    even, odd = head[0::2], head[1::2]
    if len(odd) >= 2 and ((even == 0).mean() > 0.3 or (odd == 0).mean() > 0.3):
        return (
            "it looks like UTF-16 text without a byte order mark (every other byte is NUL); save it as UTF-8"
        )
    return (
        "it contains a NUL byte, which CSV text never does (a binary file, or a damaged export); "
        "save it as UTF-8 CSV"
    )


def _has_utf8_characters(data: bytes) -> bool:
    """Whether the bytes hold at least one valid multi-byte UTF-8 character (Windows-1252 text almost never
    does: its accented letters are single bytes that do not form UTF-8 sequences)."""
    return _UTF8_CHARACTER.search(data.decode("utf-8", errors="replace")) is not None


def _not_decodable(source: str, offset: int, why: str) -> FileProblem:
    return FileProblem(
        code=NOT_DECODABLE,
        message=f"{source}: not readable as text at byte offset {offset}: {why}",
        byte_offset=offset,
    )


# --- record boundaries (vectorised) ---------------------------------------------------------------------


def _fast_records(
    body: bytes, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool] | FileProblem | None:
    """Start/end byte offsets and start line of each non-blank record, and whether any line break sits
    inside quotes; or a quoting problem.

    None means the quotes are not all where RFC 4180 puts them; the caller reads the file the slow way.
    """
    arr = np.frombuffer(body, dtype=np.uint8)
    n = len(arr)
    quotes = np.flatnonzero(arr == _QUOTE)
    if len(quotes):
        opener_ok, closer_ok = _quotes_well_placed(arr, quotes)
        if len(quotes) % 2:  # the last quote opens a field that never closes
            if not (opener_ok[:-1].all() and closer_ok.all()) or not opener_ok[-1]:
                return None
        elif not (opener_ok.all() and closer_ok.all()):
            return None
    cr = np.flatnonzero(arr == _CR)
    lf = np.flatnonzero(arr == _LF)
    if len(cr) and len(cr) == len(lf) and bool((lf - cr == 1).all()):
        breaks, break_len = cr, np.int64(2)  # every line ends in CRLF, as RFC 4180 and Excel write them
    elif len(cr):
        lf = lf[(lf == 0) | (arr[np.maximum(lf - 1, 0)] != _CR)]  # the LF of a CRLF is part of the CR's break
        breaks = np.sort(np.concatenate([cr, lf]))
        crlf = (arr[breaks] == _CR) & (arr[np.minimum(breaks + 1, n - 1)] == _LF) & (breaks + 1 < n)
        break_len = np.where(crlf, 2, 1)
    else:
        breaks = lf
        break_len = np.ones(len(breaks), dtype=np.int64)
    ends_record = np.searchsorted(quotes, breaks) % 2 == 0
    end_idx = np.flatnonzero(ends_record)
    if len(quotes) % 2:
        record_start = int(breaks[end_idx[-1]]) + 1 if len(end_idx) else 0
        first_quote = int(quotes[np.searchsorted(quotes, record_start)])
        line = int(np.searchsorted(breaks, first_quote)) + 1
        return FileProblem(
            code=UNREADABLE_QUOTING,
            message=f"{source}: line {line}: a quoted field opened here (byte offset {first_quote}) is never "
            f"closed, so it would swallow the rest of the file (to line {len(breaks) + 1})",
            line_number=line,
            byte_offset=first_quote,
        )
    rec_ends = breaks[end_idx]
    step = break_len[end_idx] if break_len.ndim else break_len
    starts = np.concatenate([[0], breaks[end_idx] + step]).astype(np.int64)
    ends = np.concatenate([rec_ends, [n]]).astype(np.int64)
    lines = np.concatenate([[1], end_idx + 2]).astype(np.int64)
    keep = ends > starts  # blank lines are not records (pyarrow skips them too)
    return starts[keep], ends[keep], lines[keep], bool(len(end_idx) < len(breaks))


def _quotes_well_placed(arr: np.ndarray, quotes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which opening quotes start a field and which closing quotes end one (or are half of a `""`)."""
    n = len(arr)
    openers, closers = quotes[0::2], quotes[1::2]
    before = arr[np.maximum(openers - 1, 0)]
    opener_ok = (openers == 0) | (before == _COMMA) | (before == _LF) | (before == _CR)
    # an opener right after a closer is the second half of an escaped quote `""`
    opener_ok[1:] |= openers[1:] == closers[: len(openers) - 1] + 1
    after = arr[np.minimum(closers + 1, n - 1)]
    closer_ok = (closers == n - 1) | (after == _COMMA) | (after == _LF) | (after == _CR)
    next_opener = openers[1 : len(closers) + 1]
    closer_ok[: len(next_opener)] |= next_opener == closers[: len(next_opener)] + 1
    return opener_ok, closer_ok


def _field_counts(body: bytes, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Fields per record: 1 + the commas outside quotes between its start and end."""
    arr = np.frombuffer(body, dtype=np.uint8)
    quotes = np.flatnonzero(arr == _QUOTE)
    commas = np.flatnonzero(arr == _COMMA)
    commas = commas[np.searchsorted(quotes, commas) % 2 == 0]
    return 1 + np.searchsorted(commas, ends) - np.searchsorted(commas, starts)


# --- header ---------------------------------------------------------------------------------------------


def _split_record(raw: bytes) -> list[str]:
    """One record's fields (used for the header and for the rare row with the wrong field count)."""
    rows = list(csv.reader(io.StringIO(raw.decode("utf-8"), newline="")))
    return [value for row in rows for value in row] if len(rows) != 1 else rows[0]


def _header(raw_header: list[str], source: str) -> tuple[list[str], list[FileWarning]] | FileProblem:
    names = [normalise_header(h) for h in raw_header]
    if not any(names):
        return _no_header(source)
    columns: list[str] = []
    seen: dict[str, int] = {}
    unnamed: list[int] = []
    for position, name in enumerate(names, start=1):
        if not name:
            unnamed.append(position)
            columns.append(f"{UNNAMED_PREFIX}{position}")
            continue
        if name in seen:
            first = seen[name]
            if name not in CORE_COLUMNS:
                # Not a column name we know: maybe a student's row read as the header (no header row), so
                # the cells are personal data and are not repeated.
                return FileProblem(
                    code=DUPLICATE_COLUMN,
                    message=f"{source}: line 1: columns {first} and {position} have the same header after "
                    "normalisation (is the header row missing?)",
                    line_number=1,
                )
            return FileProblem(
                code=DUPLICATE_COLUMN,
                message=f"{source}: line 1: columns {first} ({raw_header[first - 1].strip()!r}) and {position} "
                f"({raw_header[position - 1].strip()!r}) are both {name!r} after normalisation",
                line_number=1,
                column_name=name,
            )
        seen[name] = position
        columns.append(name)
    warnings = []
    if unnamed:
        warnings.append(
            FileWarning(
                code="unnamed_column",
                message=f"{source}: line 1: column(s) {', '.join(map(str, unnamed))} have a blank header and "
                "are ignored",
                count=len(unnamed),
            )
        )
    return columns, warnings


def _no_header(source: str) -> FileProblem:
    return FileProblem(code=NO_HEADER, message=f"{source}: the file is empty: no header row", line_number=1)


def _no_data(source: str) -> FileProblem:
    return FileProblem(
        code=NO_DATA,
        message=f"{source}: a header row but no data record; an empty roster is never applied",
        line_number=2,
    )


# --- reading values -------------------------------------------------------------------------------------


def _read_arrow(
    body: bytes, data_start: int, n_columns: int, wanted: list[int]
) -> tuple[pa.Table | None, int]:
    """The `wanted` columns of every data record with the header's field count, as strings; and how many
    records had another count."""
    names = [f"c{i}" for i in range(n_columns)]
    included = [names[i] for i in wanted]
    invalid = 0

    def skip_invalid(_row) -> str:
        nonlocal invalid
        invalid += 1
        return "skip"

    try:
        table = pa_csv.read_csv(
            pa.py_buffer(memoryview(body)[data_start:]),
            read_options=pa_csv.ReadOptions(column_names=names, block_size=16 << 20),
            parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip_invalid),
            convert_options=pa_csv.ConvertOptions(
                # large_string: the type pandas' Arrow strings hold, so no column is cast again
                column_types=dict.fromkeys(included, pa.large_string()),
                include_columns=included,
                null_values=[],
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException):
        return None, invalid
    return table, invalid


def _arrow_to_frame(
    table: pa.Table, columns: list[str], wanted: list[int], lines: np.ndarray
) -> pd.DataFrame:
    """The wanted columns (the table holds exactly those, in order) as pyarrow-backed strings trimmed of
    white space and invisible characters, plus `line_number`."""
    data: dict[str, pd.Series] = {}
    for position, i in enumerate(wanted):
        column = pc.utf8_trim(table.column(position), characters=_TRIMMED)
        data[columns[i]] = pd.Series(pd.arrays.ArrowStringArray(column))
    frame = pd.DataFrame(data, index=pd.RangeIndex(len(lines)))
    frame["line_number"] = np.asarray(lines, dtype=np.int64)
    return frame


def _bad_rows_frame(lines, counts, fields: list[list[str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "line_number": np.asarray(lines, dtype=np.int64),
            "field_count": np.asarray(counts, dtype=np.int64),
            "fields": pd.Series(fields, dtype=object),
        }
    )


def _ignored(source: str, encoding: str, problem: FileProblem, warnings=None) -> ParsedFile:
    return ParsedFile(source=source, encoding=encoding, warnings=list(warnings or []), problem=problem)


# --- the careful reader for files with stray quotes -----------------------------------------------------


def _slow_parse(
    body: bytes,
    source: str,
    encoding: str,
    warnings: list[FileWarning],
    keep: Callable[[str], bool] | None = None,
) -> ParsedFile:
    """Python's csv module, one record at a time: only for files the vectorised path cannot delimit."""
    lines = list(io.StringIO(body.decode("utf-8"), newline=""))
    reader = csv.reader(iter(lines))
    records: list[list[str]] = []
    starts: list[int] = []
    line_before = 0
    try:
        for row in reader:
            if row:  # blank lines are not records
                records.append(row)
                starts.append(line_before + 1)
            line_before = reader.line_num
    except csv.Error as exc:
        line = line_before + 1
        problem = FileProblem(
            code=UNREADABLE_QUOTING,
            message=f"{source}: line {line}: the record cannot be read ({exc})",
            line_number=line,
        )
        return _ignored(source, encoding, problem, warnings)
    if records:
        tail = "".join(lines[starts[-1] - 1 :]) + "\n" + _SENTINEL
        if list(csv.reader(io.StringIO(tail, newline="")))[-1] != [_SENTINEL]:
            problem = FileProblem(
                code=UNREADABLE_QUOTING,
                message=f"{source}: line {starts[-1]}: a quoted field in the record starting here is never "
                f"closed, so it would swallow the rest of the file (to line {len(lines)})",
                line_number=starts[-1],
            )
            return _ignored(source, encoding, problem, warnings)
    if not records:
        return _ignored(source, encoding, _no_header(source), warnings)
    raw_header = records[0]
    header = _header(raw_header, source)
    if isinstance(header, FileProblem):
        return _ignored(source, encoding, header, warnings)
    columns, header_warnings = header
    data, data_lines = records[1:], np.asarray(starts[1:], dtype=np.int64)
    if not data:
        return _ignored(source, encoding, _no_data(source), warnings)
    counts = np.fromiter((len(row) for row in data), dtype=np.int64, count=len(data))
    good = counts == len(columns)
    good_rows = [row for row, ok in zip(data, good, strict=True) if ok]
    wanted = _wanted(columns, keep)
    table = pa.table(
        [pa.array([row[i] for row in good_rows], type=pa.string()) for i in wanted],
        names=[f"c{i}" for i in wanted],
    )
    bad_idx = np.flatnonzero(~good)
    return ParsedFile(
        source=source,
        encoding=encoding,
        raw_header=raw_header,
        columns=columns,
        frame=_arrow_to_frame(table, columns, wanted, data_lines[good]),
        bad_rows=_bad_rows_frame(data_lines[bad_idx], counts[bad_idx], [data[i] for i in bad_idx]),
        rows_total=len(data),
        warnings=warnings + header_warnings,
        unterminated_line=_unterminated_line(body, "".join(lines[starts[-1] - 1 :]), starts[-1]),
        multiline_values=any(("\n" in value or "\r" in value) for row in good_rows for value in row),
    )
