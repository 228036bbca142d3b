"""Row-level rules (PRODUCT.md §3) as a pandera schema built per client, and `validate_file`.

Validation is lazy: every failing (row, column, rule) becomes one rejected row carrying the physical line
number, the column, a reason code and a message that never repeats the value (values are personal data).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_arrow
import pyarrow.compute as pc

from sis_pipeline.columns import CORE_COLUMNS, EMAIL, USER_ID, USER_LOGIN, USER_TYPE
from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile.mapping import (
    arrow_strings,
    duplicated,
    has_multiple_values,
    identity_key,
    is_email,
    string_series,
    value_warnings,
)
from sis_pipeline.sisfile.parse import STRING_DTYPE, UNNAMED_PREFIX, ParsedFile, parse_csv
from sis_pipeline.sisfile.result import REJECTED_COLUMNS, FileProblem, FileWarning, ValidatedFile

log = logging.getLogger(__name__)

# Reason codes of rejected rows (docs/FILE_CONTRACT.md lists them for school IT).
FIELD_COUNT = "field_count"
BLANK_EMAIL = "blank_email"
INVALID_EMAIL = "invalid_email"
BLANK_IDENTIFIER = "blank_identifier"
MULTIPLE_USER_TYPES = "multiple_user_types"
DUPLICATE = "duplicate"
REASON_CODES = (FIELD_COUNT, BLANK_EMAIL, INVALID_EMAIL, BLANK_IDENTIFIER, MULTIPLE_USER_TYPES, DUPLICATE)

MISSING_COLUMN = "missing_column"
#: `column_name` of a rejection that concerns the whole line rather than one column.
WHOLE_ROW = None

_IDENTITY_COLUMNS = (EMAIL, USER_ID, USER_LOGIN)


def _blank(values: pd.Series) -> np.ndarray:
    return (values.fillna("") == "").to_numpy(dtype=bool)


def _identity_values(values: pd.Series, column: str) -> pa_arrow.ChunkedArray:
    """What makes two rows the same person in `column`: emails case-insensitively, logins exactly; blanks
    are nobody."""
    values = arrow_strings(values)
    values = pc.if_else(pc.equal(values, ""), pa_arrow.scalar(None, pa_arrow.large_string()), values)
    return pc.utf8_lower(values) if column == EMAIL else values


def _check(rule):
    """A pandera check from a vectorised rule returning a numpy mask of the rows that pass."""
    return lambda values: pd.Series(rule(values), index=values.index)


def _unique_identity(column: str):
    return _check(lambda values: ~duplicated(_identity_values(values, column)))


def build_schema(client: ClientConfig) -> pa.DataFrameSchema:
    """The row rules for one client. Columns the file lacks are skipped (missing required ones were caught
    at file level); values are trimmed strings, so blank means ``""``."""
    columns = {
        EMAIL: pa.Column(
            checks=[
                pa.Check(_check(lambda s: ~_blank(s)), name=BLANK_EMAIL),
                pa.Check(_check(lambda s: _blank(s) | is_email(s)), name=INVALID_EMAIL),
                pa.Check(_unique_identity(EMAIL), name=DUPLICATE),
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
        checks = [pa.Check(_unique_identity(column), name=DUPLICATE)]
        if client.identifier == column:
            checks.insert(0, pa.Check(_check(lambda s: ~_blank(s)), name=BLANK_IDENTIFIER))
        columns[column] = pa.Column(checks=checks, nullable=True, required=client.identifier == column)
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
    for column in _IDENTITY_COLUMNS:
        is_dup = ((failures["reason_code"] == DUPLICATE) & (failures["column_name"] == column)).to_numpy()
        if not is_dup.any():
            continue
        # The rows pandera flagged are exactly the duplicates: reuse them rather than sorting again.
        dup_rows = np.isin(frame["line_number"].to_numpy(), failures.loc[is_dup, "line_number"].to_numpy())
        identity = _identity_values(frame[column][dup_rows], column).to_pylist()
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


def row_failures(frame: pd.DataFrame, client: ClientConfig) -> pd.DataFrame:
    """REJECTED_COLUMNS for every (row, column, rule) the schema fails on, from pandera's lazy validation."""
    indexed = frame.set_index("line_number", drop=False)
    try:
        build_schema(client).validate(indexed, lazy=True)
        return _empty_rejected()
    except pa.errors.SchemaErrors as exc:
        cases = exc.failure_cases
    cases = cases[cases["check"].isin(REASON_CODES)]
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
    for name in parsed.columns:
        if name.startswith(UNNAMED_PREFIX) or name in CORE_COLUMNS or name in client.extra_fields:
            continue
        warnings.append(
            FileWarning(
                code="unmapped_column",
                message=f"{parsed.source}: column {name!r} is not mapped for this client and is ignored",
                column_name=name,
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
    valid_keys: pd.Series,
    bad_rows: pd.DataFrame,
    client_id: str,
) -> pd.Series:
    """Every identity present in the file. A rejected row protects each identity it could stand for (its
    email lower-cased, its user_id and user_login as stored); a row with the wrong field count protects every
    one of its values read both ways, since which field is the identifier cannot be known."""
    candidates = []
    rejected = frame[rejected_mask]
    for column in _IDENTITY_COLUMNS:
        if column in rejected:
            candidates.append(identity_key(rejected[column], column, client_id))
    if len(bad_rows):
        values = pa_arrow.array(bad_rows["fields"].explode().dropna().tolist(), pa_arrow.large_string())
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


def validate_file(data: bytes, client: ClientConfig, source: str) -> ValidatedFile:
    """Parse and validate one uploaded file under a client's rules. Never raises for bad input: an ignored
    file has `problem` set and empty frames; rejected rows are listed with line, column and reason."""
    parsed = parse_csv(data, source)
    if not parsed.ignored:
        missing = [c for c in client.required_columns if c not in parsed.columns]
        if missing:
            parsed.problem = FileProblem(
                code=MISSING_COLUMN,
                message=f"{source}: line 1: required column(s) missing: {', '.join(missing)}",
                line_number=1,
                column_name=missing[0],
            )
    if parsed.ignored:
        log.warning("file %s ignored for client %s: %s", source, client.id, parsed.problem.code)
        return ValidatedFile(
            client_id=client.id,
            source=source,
            encoding=parsed.encoding,
            rows_total=parsed.rows_total,
            valid=pd.DataFrame({"line_number": pd.Series([], dtype=np.int64)}),
            rejected=_empty_rejected().astype({c: STRING_DTYPE for c in REJECTED_COLUMNS[1:]}),
            warnings=parsed.warnings,
            problem=parsed.problem,
        )
    frame = parsed.frame
    rejected = _finish_rejected([_field_count_failures(parsed), row_failures(frame, client)])
    rejected_mask = frame["line_number"].isin(rejected["line_number"]).to_numpy()
    kept = [c for c in frame.columns if c in CORE_COLUMNS or c in client.extra_fields] + ["line_number"]
    valid = frame[kept] if not rejected_mask.any() else frame.loc[~rejected_mask, kept].reset_index(drop=True)
    warnings, warned = value_warnings(valid, client)
    valid_keys = identity_key(valid[client.identifier], client.identifier, client.id)
    result = ValidatedFile(
        client_id=client.id,
        source=source,
        encoding=parsed.encoding,
        rows_total=parsed.rows_total,
        valid=valid,
        rejected=rejected,
        warnings=parsed.warnings + _column_warnings(parsed, client) + warnings,
        protected_keys=_protected_keys(frame, rejected_mask, valid_keys, parsed.bad_rows, client.id),
        rows_warned=int(warned.sum()),
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
