"""The values the file contract hands downstream. Frames hold strings as read, plus `line_number`."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

#: Columns of every rejected-rows frame (and of the `sis_rejected_rows` table, less sync/client ids).
REJECTED_COLUMNS = ("line_number", "column_name", "reason_code", "message")

#: Columns of `MappedFile.subscribers`.
SUBSCRIBER_COLUMNS = (
    "subscriber_key",
    "email",
    "first_name",
    "last_name",
    "user_login",
    "graduation_year",
    "user_type",
    "email_opt_out",
    "delete",
    "line_number",
)

#: Columns of `MappedFile.memberships`.
MEMBERSHIP_COLUMNS = ("subscriber_key", "community_group", "community")


@dataclass(frozen=True)
class FileProblem:
    """Why a whole file is ignored (nothing applied, everyone protected)."""

    code: str  # e.g. not_decodable, no_header, no_data, missing_column, duplicate_column, unreadable_quoting
    message: str  # names the file and, where known, line / column / byte offset
    line_number: int | None = None
    column_name: str | None = None
    byte_offset: int | None = None


@dataclass(frozen=True)
class FileWarning:
    """Something imported with a value dropped or a file-level oddity; `count` rows share it."""

    code: str  # e.g. windows_1252, unmapped_column, graduation_invalid, user_type_unmapped, extra_value_unmapped
    message: str
    column_name: str | None = None
    value: str | None = None  # the offending value (never personal data: types, groups, graduation text)
    count: int = 1


@dataclass
class ValidatedFile:
    """A parsed and validated file. When `problem` is set the file is ignored and the frames are empty."""

    client_id: str
    source: str
    encoding: str
    rows_total: int  # data records read (header excluded)
    valid: pd.DataFrame  # canonical columns present in the file, as trimmed strings, plus int `line_number`
    rejected: pd.DataFrame  # REJECTED_COLUMNS, one row per (line, column, reason)
    warnings: list[FileWarning] = field(default_factory=list)
    protected_keys: pd.Series = field(default_factory=lambda: pd.Series([], dtype="string"))
    rows_warned: int = 0  # rows imported with at least one value dropped
    # The graduation column as class years (nullable Int64), row for row with `valid`; None without it.
    # Parsed once here for the warnings and reused by the mapping (about a second at 1M rows).
    class_years: pd.Series | None = None
    # Per mapped column (user_type, each extra field), what the warnings looked up for the valid rows:
    # (rows, values, community codes, distinct communities); the mapping reuses it (~1 s at 1M rows).
    looked_up: dict[str, tuple] | None = None
    # The identifier of each valid row as stored (`mapping.identity_key`), row for row with `valid`: the
    # protected keys are built from it and the mapping reuses it as the subscribers' keys. None: not built.
    valid_keys: pa.ChunkedArray | None = None
    problem: FileProblem | None = None
    # Set by `release_rows`: how many valid rows there were once `valid` was emptied.
    released_rows: int | None = None

    @property
    def ignored(self) -> bool:
        return self.problem is not None

    @property
    def rows_valid(self) -> int:
        return len(self.valid) if self.released_rows is None else self.released_rows

    def release_rows(self) -> None:
        """Drop the valid rows once they are mapped — at 1M rows the largest frame still held — keeping
        their count: what follows the mapping (plan, apply, sync log, metadata) needs only the counts, the
        rejected rows and the warnings."""
        if self.released_rows is None:
            self.released_rows = len(self.valid)
        self.valid = self.valid.iloc[0:0]
        self.class_years = None
        self.looked_up = None
        self.valid_keys = None

    @property
    def rows_rejected(self) -> int:
        return int(self.rejected["line_number"].nunique()) if len(self.rejected) else 0

    def rejected_by_reason(self) -> dict[str, int]:
        """Rejected lines per reason code."""
        if not len(self.rejected):
            return {}
        counts = self.rejected.drop_duplicates(["line_number", "reason_code"])["reason_code"].value_counts()
        return {str(k): int(v) for k, v in counts.sort_index().items()}


@dataclass
class MappedFile:
    """Subscribers and memberships as the warehouse stores them (§4)."""

    client_id: str
    subscribers: pd.DataFrame  # SUBSCRIBER_COLUMNS, one row per subscriber_key
    # MEMBERSHIP_COLUMNS; from `map_file` dictionary-encoded (each key an index into the subscribers'
    # keys, groups and communities into their few distinct texts): read them as text with astype("string")
    memberships: pd.DataFrame
    protected_keys: pd.Series  # every identity present in the file, valid or rejected (never deprovisioned)
    # per subscribers row, its memberships' communities_signature (sisfile/signature.py); None: not known,
    # the plan computes it from `memberships`
    signatures: pa.Array | None = None
    # per membership, the position of its subscriber in `subscribers`; None: not known, the plan matches
    # memberships to subscribers by key
    membership_rows: np.ndarray | None = None
