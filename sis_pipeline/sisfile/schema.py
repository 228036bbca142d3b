"""Row-level rules (PRODUCT.md §3) as a pandera schema built per client, and `validate_file`.

Validation is lazy: every failing (row, column, rule) becomes one rejected row carrying the physical line
number, the column, a reason code and a message that never repeats the value (values are personal data).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc

from sis_pipeline.columns import (
    CORE_COLUMNS,
    EMAIL,
    GRADUATION,
    INVISIBLE_CHARACTERS,
    USER_ID,
    USER_LOGIN,
    USER_TYPE,
    normalise_header,
)
from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile.mapping import (
    MAX_WARNED_VALUES,
    arrow_strings,
    duplicated,
    graduation_years,
    has_multiple_values,
    identity_key,
    is_email,
    string_series,
    value_warnings,
)
from sis_pipeline.sisfile.parse import STRING_DTYPE, TRUNCATED, UNNAMED_PREFIX, ParsedFile, parse_csv
from sis_pipeline.sisfile.result import REJECTED_COLUMNS, FileProblem, FileWarning, ValidatedFile

log = logging.getLogger(__name__)

# Reason codes of rejected rows (docs/FILE_CONTRACT.md lists them for school IT).
FIELD_COUNT = "field_count"
LINE_BREAK = "line_break"
BLANK_EMAIL = "blank_email"
INVALID_EMAIL = "invalid_email"
BLANK_IDENTIFIER = "blank_identifier"
MULTIPLE_USER_TYPES = "multiple_user_types"
DUPLICATE = "duplicate"
REASON_CODES = (
    FIELD_COUNT,
    LINE_BREAK,
    BLANK_EMAIL,
    INVALID_EMAIL,
    BLANK_IDENTIFIER,
    MULTIPLE_USER_TYPES,
    DUPLICATE,
)
#: Rejections of an unterminated last line that mean the file was cut off there (see validate_file).
TRUNCATION_EVIDENCE = (FIELD_COUNT, BLANK_EMAIL, INVALID_EMAIL, BLANK_IDENTIFIER)

MISSING_COLUMN = "missing_column"
WRONG_DELIMITER = "wrong_delimiter"
_DELIMITERS = ((";", "semicolon"), ("\t", "tab"))
#: A line break anywhere in a value: `\r\n`, `\n` or a lone `\r`.
_LINE_BREAKS = r"\r\n|\r|\n"
#: Removed from a rejected row's identity values before they are protected a second time.
_INVISIBLE_OR_SPACE = f"[\\s{INVISIBLE_CHARACTERS}]"
#: `column_name` of a rejection that concerns the whole line rather than one column.
WHOLE_ROW = None

_IDENTITY_COLUMNS = (EMAIL, USER_ID, USER_LOGIN)
#: From this many rows, the duplicate checks run on a thread pool (`row_failures`).
PARALLEL_ROWS = 50_000


def _blank(values: pd.Series) -> np.ndarray:
    return (values.fillna("") == "").to_numpy(dtype=bool)


def _identity_values(values: pd.Series, column: str, client_id: str) -> pa_arrow.ChunkedArray:
    """What makes two rows the same person in `column`: emails case-insensitively, logins exactly as
    stored; blanks are nobody."""
    values = arrow_strings(values)
    values = pc.if_else(pc.equal(values, ""), pa_arrow.scalar(None, pa_arrow.large_string()), values)
    if column == EMAIL:
        return pc.utf8_lower(values)
    # `u1` is stored `22_u1`, which a row may also hold in email format (`22_.a@x.org` is `.a@x.org`'s
    # stored form): two rows, one subscriber. Only possible when some value starts with the prefix, so
    # the (slower) stored form is only computed then.
    if not pc.any(pc.starts_with(values, f"{client_id}_")).as_py():
        return values
    return identity_key(values, column, client_id)


def _check(rule):
    """A pandera check from a vectorised rule returning a numpy mask of the rows that pass."""
    return lambda values: pd.Series(rule(values), index=values.index)


def _unique_identity(column: str, client_id: str, ahead: Callable[[], np.ndarray] | None = None):
    """No two rows are one person in `column`; `ahead` returns the mask when it was computed in advance."""

    def rule(values: pd.Series) -> np.ndarray:
        if ahead is not None:
            computed = ahead()
            if len(computed) == len(values):
                return computed
        return _unique_mask(values, column, client_id)

    return _check(rule)


def _unique_mask(values: pd.Series, column: str, client_id: str) -> np.ndarray:
    return ~duplicated(_identity_values(values, column, client_id))


def _no_line_break(values: pd.Series) -> np.ndarray:
    """True where the value holds no line break. `values` is indexed by physical line number: only a row
    whose next row starts more than one line later (or the last row) can hold one, so only those values are
    searched — a few hundred in a million-row file with a handful of multi-line addresses."""
    passed = np.ones(len(values), dtype=bool)
    if not len(values):
        return passed
    lines = values.index.to_numpy()
    if values.index.is_monotonic_increasing:
        candidates = np.flatnonzero(np.append(np.diff(lines) > 1, True))
    else:
        candidates = np.arange(len(values))
    subset = arrow_strings(values).take(pa_arrow.array(candidates))
    found = pc.fill_null(pc.match_substring_regex(subset, _LINE_BREAKS), False)
    passed[candidates[found.to_numpy(zero_copy_only=False).astype(bool)]] = False
    return passed


def build_schema(
    client: ClientConfig,
    *,
    multiline: bool = False,
    duplicates: Mapping[str, Callable[[], np.ndarray]] | None = None,
) -> pa.DataFrameSchema:
    """The row rules for one client. Columns the file lacks are skipped (missing required ones were caught
    at file level); values are trimmed strings, so blank means ``""``.

    With `multiline` (some quoted value of the file holds a line break), a line break in any core column
    rejects the row: no name, email, id, type, year or flag spans lines, and such a value is what a quote
    opened by mistake and closed lines later looks like — the rows in between were swallowed into it.

    `duplicates` gives, per identity column, the duplicate check's mask computed in advance (see
    `row_failures`); a column without one is checked when pandera reaches it.
    """
    duplicates = duplicates or {}
    columns = {
        EMAIL: pa.Column(
            checks=[
                pa.Check(_check(lambda s: ~_blank(s)), name=BLANK_EMAIL),
                pa.Check(_check(lambda s: _blank(s) | is_email(s)), name=INVALID_EMAIL),
                pa.Check(_unique_identity(EMAIL, client.id, duplicates.get(EMAIL)), name=DUPLICATE),
            ],
            nullable=True,
        ),
        USER_TYPE: pa.Column(
            checks=[pa.Check(_check(lambda s: ~has_multiple_values(s)), name=MULTIPLE_USER_TYPES)],
            nullable=True,
            required=False,
        ),
    }
    for column in (USER_ID, USER_LOGIN):
        checks = [pa.Check(_unique_identity(column, client.id, duplicates.get(column)), name=DUPLICATE)]
        if client.identifier == column:
            checks.insert(0, pa.Check(_check(lambda s: ~_blank(s)), name=BLANK_IDENTIFIER))
        columns[column] = pa.Column(checks=checks, nullable=True, required=client.identifier == column)
    if multiline:
        for column in CORE_COLUMNS:
            spec = columns.setdefault(column, pa.Column(nullable=True, required=False))
            check = pa.Check(_check(_no_line_break), name=LINE_BREAK)
            columns[column] = spec.set_checks([check, *spec.checks])
    return pa.DataFrameSchema(columns, strict=False, name=f"sis_file[{client.id}]")


def _messages(failures: pd.DataFrame, frame: pd.DataFrame, client: ClientConfig) -> pd.Series:
    """A message per failure naming the rule, never the value."""
    fixed = {
        BLANK_EMAIL: "email is blank",
        INVALID_EMAIL: "email is not a valid address",
        BLANK_IDENTIFIER: f"{client.identifier} is blank; it is this client's identifier",
        MULTIPLE_USER_TYPES: "user_type holds more than one value; only one user type per user",
    }
    messages = failures["reason_code"].map(fixed).astype(object)
    spans = (failures["reason_code"] == LINE_BREAK).to_numpy()
    if spans.any():
        messages[spans] = _line_break_messages(failures[spans], frame)
    for column in _IDENTITY_COLUMNS:
        is_dup = ((failures["reason_code"] == DUPLICATE) & (failures["column_name"] == column)).to_numpy()
        if not is_dup.any():
            continue
        # The rows pandera flagged are exactly the duplicates: reuse them rather than sorting again.
        dup_rows = np.isin(frame["line_number"].to_numpy(), failures.loc[is_dup, "line_number"].to_numpy())
        identity = _identity_values(frame[column][dup_rows], column, client.id).to_pylist()
        lines = frame["line_number"].to_numpy()[dup_rows]
        groups = pd.Series(lines).groupby(identity)
        rows, first = groups.transform("size"), groups.transform("min")
        where = pd.Index(lines).get_indexer(failures.loc[is_dup, "line_number"])
        case = " (case-insensitively)" if column == EMAIL else ""
        messages[is_dup] = [
            f"{column} appears{case} on {n} rows (first on line {f}); every copy is rejected"
            for n, f in zip(rows.to_numpy()[where], first.to_numpy()[where], strict=True)
        ]
    return messages


def _line_break_messages(failures: pd.DataFrame, frame: pd.DataFrame) -> list[str]:
    """Where each value with a line break ends, so the school can find the quote that went wrong."""
    indexed = frame.set_index("line_number")
    messages = []
    for line, column in zip(failures["line_number"], failures["column_name"], strict=True):
        value = arrow_strings(pd.Series([indexed.at[line, column]], dtype=STRING_DTYPE))
        breaks = int(pc.count_substring_regex(value, _LINE_BREAKS)[0].as_py())
        messages.append(
            f"{column} holds a line break (its value runs from line {line} to line {line + breaks}): "
            "usually a quote opened and closed in the wrong place, which pulls the lines in between into one "
            "value; those lines are not imported"
        )
    return messages


def row_failures(frame: pd.DataFrame, client: ClientConfig, *, multiline: bool = False) -> pd.DataFrame:
    """REJECTED_COLUMNS for every (row, column, rule) the schema fails on, from pandera's lazy validation.

    In a large file the duplicate checks (hashing every identity of up to three columns) dominate; they are
    started on a thread pool first and run on every core — Arrow releases the GIL — while pandera walks the
    other checks, which then wait for their results. A small file is checked in line: threads would cost
    more than they save.
    """
    indexed = frame.set_index("line_number", drop=False)
    identity_columns = [c for c in _IDENTITY_COLUMNS if c in indexed]
    workers = min(len(identity_columns), os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="sis-validate") as pool:
        ahead = {}
        if len(indexed) >= PARALLEL_ROWS and workers > 1:
            ahead = {
                column: pool.submit(_unique_mask, indexed[column], column, client.id).result
                for column in identity_columns
            }
        schema = build_schema(client, multiline=multiline, duplicates=ahead)
        try:
            schema.validate(indexed, lazy=True)
            return _empty_rejected()
        except pa.errors.SchemaErrors as exc:
            cases = exc.failure_cases
    cases = cases[cases["check"].isin(REASON_CODES)]
    crashed = cases[cases["index"].isna()]  # a check that raised instead of returning a mask
    if len(crashed):
        first = crashed.iloc[0]
        error = str(first["failure_case"]).split("(", 1)[0]  # the exception's type, never its text
        raise RuntimeError(f"validation rule {first['check']} of column {first['column']} raised {error}")
    failures = pd.DataFrame(
        {
            "line_number": cases["index"].astype(np.int64).to_numpy(),
            "column_name": cases["column"].astype(str).to_numpy(),
            "reason_code": cases["check"].astype(str).to_numpy(),
        }
    )
    failures["message"] = _messages(failures, frame, client).to_numpy()
    return failures


def _field_count_failures(parsed: ParsedFile) -> pd.DataFrame:
    bad = parsed.bad_rows
    if not len(bad):
        return _empty_rejected()
    expected = len(parsed.columns)
    return pd.DataFrame(
        {
            "line_number": bad["line_number"].to_numpy(),
            "column_name": WHOLE_ROW,
            "reason_code": FIELD_COUNT,
            "message": [
                f"the line has {n} fields but the header has {expected}; values are never shifted"
                for n in bad["field_count"].to_numpy()
            ],
        }
    )


def _empty_rejected() -> pd.DataFrame:
    return pd.DataFrame(
        {c: pd.Series([], dtype=np.int64 if c == "line_number" else object) for c in REJECTED_COLUMNS}
    )


def _finish_rejected(parts: list[pd.DataFrame]) -> pd.DataFrame:
    rejected = pd.concat([p for p in parts if len(p)] or [_empty_rejected()], ignore_index=True)
    order = {code: i for i, code in enumerate(REASON_CODES)}
    rejected = rejected.assign(_order=rejected["reason_code"].map(order))
    rejected = rejected.sort_values(
        ["line_number", "_order", "column_name"], kind="stable", na_position="first"
    )
    rejected = rejected.drop(columns="_order").reset_index(drop=True)
    return rejected.astype(
        {
            "line_number": np.int64,
            "column_name": STRING_DTYPE,
            "reason_code": STRING_DTYPE,
            "message": STRING_DTYPE,
        }
    )


def _column_warnings(parsed: ParsedFile, client: ClientConfig) -> list[FileWarning]:
    """File-level warnings: columns the client does not map, and mapped columns the file lacks."""
    warnings = []
    unmapped = [
        name for name in parsed.columns if not (name.startswith(UNNAMED_PREFIX) or _keep(client)(name))
    ]
    for name in unmapped[:MAX_WARNED_VALUES]:
        warnings.append(
            FileWarning(
                code="unmapped_column",
                message=f"{parsed.source}: column {name!r} is not mapped for this client and is ignored",
                column_name=name,
            )
        )
    if len(unmapped) > MAX_WARNED_VALUES:
        rest = len(unmapped) - MAX_WARNED_VALUES
        warnings.append(
            FileWarning(
                code="unmapped_column",
                message=f"{parsed.source}: {rest} more columns are not mapped for this client and are "
                "ignored (not listed)",
                count=rest,
            )
        )
    for name, config in client.extra_fields.items():
        if name not in parsed.columns:
            warnings.append(
                FileWarning(
                    code="mapped_column_missing",
                    message=f"{parsed.source}: column {name!r} (community group {config.group!r}) is mapped but "
                    "not in the file; its memberships will be emptied",
                    column_name=name,
                )
            )
    if client.user_types and USER_TYPE not in parsed.columns:
        warnings.append(
            FileWarning(
                code="mapped_column_missing",
                message=f"{parsed.source}: user types are mapped but the file has no user_type column",
                column_name=USER_TYPE,
            )
        )
    return warnings


def _protected_keys(
    frame: pd.DataFrame,
    rejected_mask: np.ndarray,
    valid_keys: pa_arrow.ChunkedArray,
    bad_rows: pd.DataFrame,
    spanning_lines: np.ndarray,
    client_id: str,
) -> pd.Series:
    """Every identity present in the file. A rejected row protects each identity it could stand for (its
    email lower-cased, its user_id and user_login as stored, and each of these without invisible characters
    or spaces); a row with the wrong field count, or whose value spans lines, protects every piece of every
    field read both ways, since which piece is whose identifier cannot be known."""
    candidates = []
    rejected = frame[rejected_mask]
    for column in _IDENTITY_COLUMNS:
        if column in rejected:
            values = arrow_strings(rejected[column])
            candidates += [
                identity_key(values, column, client_id),
                identity_key(pc.replace_substring_regex(values, _INVISIBLE_OR_SPACE, ""), column, client_id),
            ]
    pieces = []
    if len(bad_rows):
        pieces += bad_rows["fields"].explode().dropna().tolist()
    if len(spanning_lines):
        spanning = frame.loc[np.isin(frame["line_number"].to_numpy(), spanning_lines)]
        for column in spanning.columns.intersection(list(CORE_COLUMNS)):
            pieces += spanning[column].dropna().tolist()
    if pieces:
        # the pieces of a value that swallowed lines are that line's fields: split it back up
        values = pc.list_flatten(
            pc.split_pattern_regex(pa_arrow.array(pieces, pa_arrow.large_string()), r'[\r\n,"]+')
        )
        values = pa_arrow.chunked_array([pc.utf8_trim_whitespace(values)])
        candidates += [identity_key(values, EMAIL, client_id), identity_key(values, USER_ID, client_id)]
    valid_keys = valid_keys.filter(pc.is_valid(valid_keys))
    if not candidates:
        return string_series(valid_keys)  # valid keys are unique: duplicates were rejected
    extra = pa_arrow.chunked_array([chunk for c in candidates for chunk in c.chunks], pa_arrow.large_string())
    extra = pc.unique(extra.filter(pc.is_valid(extra)))
    # hash the few rejected candidates, never the million valid keys
    present = valid_keys.filter(pc.is_in(valid_keys, value_set=extra))
    extra = extra.filter(pc.invert(pc.is_in(extra, value_set=present.combine_chunks())))
    return string_series(pa_arrow.chunked_array([*valid_keys.chunks, extra], pa_arrow.large_string()))


#: The core columns `value_warnings` reads (besides the client's mapped extra fields).
_WARNED_COLUMNS = (GRADUATION, USER_TYPE)


def _keep(client: ClientConfig):
    """Which columns validation needs: the core ones and the client's mapped extra fields."""
    return lambda name: name in CORE_COLUMNS or name in client.extra_fields


def _missing_columns(parsed: ParsedFile, client: ClientConfig, source: str) -> FileProblem | None:
    """The missing-column problem, explaining the usual causes: another separator, or no header row."""
    missing = [c for c in client.required_columns if c not in parsed.columns]
    if not missing:
        return None
    listed = ", ".join(missing)
    found = [c for c in client.required_columns if c in parsed.columns]
    hint = ""
    for delimiter, name in _DELIMITERS:
        if not any(delimiter in cell for cell in parsed.raw_header):
            continue
        parts = {normalise_header(part) for cell in parsed.raw_header for part in cell.split(delimiter)}
        if not found and set(missing) <= parts:
            return FileProblem(
                code=WRONG_DELIMITER,
                message=f"{source}: line 1: the file is {name}-separated (its header names the columns with "
                f"{name}s between them), but it must be comma-separated: export it as 'CSV UTF-8 (Comma "
                f"delimited)'. Read with commas, the required column(s) {listed} are missing",
                line_number=1,
                column_name=missing[0],
            )
        hint = f"; the header holds {name}s: if the file is {name}-separated, export it comma-separated"
        break
    if not hint and is_email(pd.Series(parsed.raw_header, dtype=STRING_DTYPE).str.strip()).any():
        hint = (
            "; line 1 looks like a student's row, not a header (it holds an email address): the file must "
            "start with a header row naming the columns"
        )
    return FileProblem(
        code=MISSING_COLUMN,
        message=f"{source}: line 1: required column(s) missing: {listed}{hint}",
        line_number=1,
        column_name=missing[0],
    )


def _truncated(parsed: ParsedFile, rejected: pd.DataFrame, source: str) -> FileProblem | None:
    """A last line without a line break whose row is incomplete: the file was cut off there, and every row
    after the cut is missing, so nothing may be applied (the guard alone would let a small loss through)."""
    line = parsed.unterminated_line
    if line is None:
        return None
    reasons = rejected.loc[rejected["line_number"] == line, "reason_code"]
    evidence = sorted(set(reasons.dropna()) & set(TRUNCATION_EVIDENCE))
    if not evidence:
        return None
    return FileProblem(
        code=TRUNCATED,
        message=f"{source}: line {line}: the last line does not end with a line break and its row is "
        f"incomplete ({', '.join(evidence)}): the file looks cut off, so it is ignored rather than deprovision the "
        f"students after the cut. Upload the complete file; if it is complete, fix line {line}",
        line_number=line,
    )


def _ignored(parsed: ParsedFile, client: ClientConfig, problem: FileProblem) -> ValidatedFile:
    log.warning("file %s ignored for client %s: %s", parsed.source, client.id, problem.code)
    return ValidatedFile(
        client_id=client.id,
        source=parsed.source,
        encoding=parsed.encoding,
        rows_total=parsed.rows_total,
        valid=pd.DataFrame({"line_number": pd.Series([], dtype=np.int64)}),
        rejected=_empty_rejected().astype({c: STRING_DTYPE for c in REJECTED_COLUMNS[1:]}),
        warnings=parsed.warnings,
        problem=problem,
    )


def validate_file(
    data: bytes, client: ClientConfig, source: str, *, report_only: bool = False
) -> ValidatedFile:
    """Parse and validate one uploaded file under a client's rules. Never raises for bad input: an ignored
    file has `problem` set and empty frames; rejected rows are listed with line, column and reason.

    `report_only` (the `validate` command) leaves `protected_keys` empty: only an import deprovisions, and
    the identities of a million valid rows cost a hash pass the report never shows; its `valid` frame holds
    only the columns the value warnings read (graduation, user type, mapped extra fields) and line numbers."""
    keep = _keep(client)
    parsed = parse_csv(data, source, keep=keep)
    problem = parsed.problem or _missing_columns(parsed, client, source)
    if problem is not None:
        return _ignored(parsed, client, problem)
    frame = parsed.frame
    rejected = _finish_rejected(
        [_field_count_failures(parsed), row_failures(frame, client, multiline=parsed.multiline_values)]
    )
    problem = _truncated(parsed, rejected, source)
    if problem is not None:
        return _ignored(parsed, client, problem)
    rejected_mask = frame["line_number"].isin(rejected["line_number"]).to_numpy()
    # A report (the `validate` command) keeps of its valid rows only what the value warnings read: the
    # copy of the other columns is ~0.2 s at 1M rows that no report shows.
    needed = (lambda c: c in _WARNED_COLUMNS or c in client.extra_fields) if report_only else keep
    kept = [c for c in frame.columns if needed(c)] + ["line_number"]
    valid = frame[kept] if not rejected_mask.any() else frame.loc[~rejected_mask, kept].reset_index(drop=True)
    years = graduation_years(valid[GRADUATION]) if GRADUATION in valid else None
    looked_up: dict[str, tuple] = {}
    warnings, warned = value_warnings(valid, client, years, looked_up)
    spanning = rejected.loc[rejected["reason_code"] == LINE_BREAK, "line_number"].unique()
    valid_keys = None if report_only else identity_key(valid[client.identifier], client.identifier, client.id)
    protected = (
        pd.Series([], dtype="string")
        if report_only
        else _protected_keys(
            frame, rejected_mask, valid_keys, parsed.bad_rows, np.asarray(spanning), client.id
        )
    )
    result = ValidatedFile(
        client_id=client.id,
        source=source,
        encoding=parsed.encoding,
        rows_total=parsed.rows_total,
        valid=valid,
        rejected=rejected,
        warnings=parsed.warnings + _column_warnings(parsed, client) + warnings,
        protected_keys=protected,
        rows_warned=int(warned.sum()),
        class_years=years[0] if years is not None else None,
        looked_up=looked_up,
        valid_keys=valid_keys,
    )
    log.info(
        "validated %s for client %s: %d rows, %d valid, %d rejected, %d warned",
        source,
        client.id,
        result.rows_total,
        result.rows_valid,
        result.rows_rejected,
        result.rows_warned,
    )
    return result
