"""Mapped file + the warehouse's current rows for one client -> what a sync will change (PRODUCT.md §6).

Pure: no SQL, no clock, no Dagster. The plan is a value that can be shown (the `deprovision_set` asset, run
metadata, `--dry-run`) before the warehouse applies it, and the warehouse applies exactly this value.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile.result import MappedFile

#: Profile columns the file sets; a sync compares them and writes only rows where one changed.
PROFILE_COLUMNS: tuple[str, ...] = (
    "email",
    "first_name",
    "last_name",
    "user_login",
    "graduation_year",
    "user_type",
    "email_opt_out",
)
_TEXT_COLUMNS = ("subscriber_key", "email", "first_name", "last_name", "user_login", "user_type")

#: Columns of `current` (what `Warehouse.current_subscribers` returns).
CURRENT_COLUMNS: tuple[str, ...] = ("subscriber_key", *PROFILE_COLUMNS, "status", "missing_count")
#: Columns of every frame of rows a plan writes (inserts, updates, reactivations, deletes).
WRITE_COLUMNS: tuple[str, ...] = (
    "subscriber_key",
    *PROFILE_COLUMNS,
    "status",
    "missing_count",
    "changed_fields",
)
#: Columns of `missing` and `deprovisions`: users absent from the file.
ABSENT_COLUMNS: tuple[str, ...] = ("subscriber_key", "missing_count")
MEMBERSHIP_COLUMNS: tuple[str, ...] = ("subscriber_key", "community_group", "community")

ACTIVE, DEPROVISIONED, DELETED = "active", "deprovisioned", "deleted"
_TRUE_WORDS = ("1", "yes", "true")


@dataclass(frozen=True)
class GuardVerdict:
    """The mass-change guard's decision and the numbers behind it."""

    blocked: bool  # tripped and not overridden: nothing may be applied
    active_before: int
    deprovisions: int
    deletes: int
    reason: str  # empty when the guard did not trip
    max_fraction: float
    max_count: int | None
    min_active: int
    tripped: bool = False  # the limits were exceeded (whether or not an override let it through)
    overridden: bool = False  # tripped, and applied anyway because of an explicit override


@dataclass
class SyncPlan:
    """Everything one sync of one client will change. Frames are keyed by `subscriber_key`.

    `inserts`, `updates`, `reactivations` and `deletes` hold the rows as they will be stored (WRITE_COLUMNS):
    the file's values, the resulting status and `missing_count`, and `changed_fields` (comma-separated names
    of the columns that differ from the warehouse; empty for inserts). The four sets are disjoint: a user
    reactivated or deleted by this file is counted there even if other fields changed too.
    """

    client_id: str
    inserts: pd.DataFrame
    updates: pd.DataFrame
    unchanged: int
    reactivations: pd.DataFrame
    deletes: pd.DataFrame
    missing: pd.DataFrame  # absent active users who stay active, with their raised missing_count
    deprovisions: pd.DataFrame  # absent active users whose missing_count reached the threshold
    guard: GuardVerdict
    memberships_add: pd.DataFrame = field(default_factory=lambda: _empty(MEMBERSHIP_COLUMNS))
    memberships_remove: pd.DataFrame = field(default_factory=lambda: _empty(MEMBERSHIP_COLUMNS))
    skipped_deletes: int = 0  # delete-flagged users the warehouse never had: nothing to delete
    missing_counted: bool = (
        True  # False when this file already counted towards missing_count (forced re-apply)
    )
    basis: int | None = (
        None  # the client's last applied sync_id when the plan was read (set by the warehouse)
    )
    override_guard: bool = False  # whether the plan was built with the guard overridden

    def __repr__(self) -> str:
        return f"SyncPlan(client_id={self.client_id!r}, {self.summary()}, guard_blocked={self.guard.blocked})"

    def counts(self) -> dict[str, int]:
        """The numbers the sync log records (keys are its column names)."""
        return {
            "inserted": len(self.inserts),
            "updated": len(self.updates),
            "unchanged_rows": int(self.unchanged),
            "reactivated": len(self.reactivations),
            "deprovisioned": len(self.deprovisions),
            "deleted": len(self.deletes),
            "missing": len(self.missing),
        }

    def membership_counts(self) -> dict[str, int]:
        return {
            "communities_added": len(self.memberships_add),
            "communities_removed": len(self.memberships_remove),
        }

    @property
    def changes_anything(self) -> bool:
        """Whether applying the plan writes any subscriber or membership row."""
        counts = self.counts()
        counts.pop("unchanged_rows")
        return any(counts.values()) or any(self.membership_counts().values())

    def upsert_frame(self) -> pd.DataFrame:
        """Rows of users present in the file that must be written (WRITE_COLUMNS), inserts first."""
        frames = [f for f in (self.inserts, self.updates, self.reactivations, self.deletes) if len(f)]
        if not frames:
            return _empty(WRITE_COLUMNS)
        return pd.concat(frames, ignore_index=True)

    def absent_frame(self) -> pd.DataFrame:
        """Absent users whose missing_count rises: `subscriber_key`, `missing_count`, new `status`."""
        missing = self.missing.assign(status=ACTIVE)
        deprovisions = self.deprovisions.assign(status=DEPROVISIONED)
        frames = [f for f in (missing, deprovisions) if len(f)]
        if not frames:
            return _empty((*ABSENT_COLUMNS, "status"))
        return pd.concat(frames, ignore_index=True)

    def summary(self) -> str:
        """One line without personal data, for logs and the sync log message."""
        parts = [f"{name} {value}" for name, value in self.counts().items()]
        parts += [f"{name} {value}" for name, value in self.membership_counts().items()]
        return ", ".join(parts)


def _empty(columns: tuple[str, ...]) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series([], dtype="object") for c in columns})


def _as_bool(series: pd.Series) -> pd.Series:
    """Booleans as given; strings by §4's yes-words; missing means no."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return series.fillna(False).astype(bool)
    if pd.api.types.is_numeric_dtype(series.dtype):
        return series.fillna(0).astype(bool)
    words = series.astype("string").str.strip().str.lower()
    return pd.Series(_isin(words, pd.Series(_TRUE_WORDS)), index=series.index)


def normalise_subscribers(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """The frame's `columns` with the warehouse's types: nullable strings, Int64 years, bool opt-out.

    A column the frame lacks is all-missing (no opt-out, no delete flag).
    """
    index = pd.RangeIndex(len(frame))
    out = pd.DataFrame(index=index)
    for name in columns:
        if name not in frame:
            if name in ("email_opt_out", "delete"):
                out[name] = np.zeros(len(frame), dtype=bool)
            elif name == "missing_count":
                out[name] = np.zeros(len(frame), dtype="int64")
            else:
                out[name] = pd.Series(
                    pd.NA, index=index, dtype="Int64" if name == "graduation_year" else "string"
                )
            continue
        values = frame[name].reset_index(drop=True)
        if name in _TEXT_COLUMNS or name == "status":
            out[name] = values.astype("string")
        elif name == "graduation_year":
            out[name] = (
                values if values.dtype == "Int64" else pd.to_numeric(values, errors="coerce").astype("Int64")
            )
        elif name == "missing_count":
            out[name] = pd.to_numeric(values, errors="coerce").fillna(0).astype("int64")
        elif name in ("email_opt_out", "delete"):
            out[name] = _as_bool(values)
        else:
            out[name] = values
    return out


def _keys(values: pd.Series | list) -> pa.Array:
    return pa.array(pd.Series(values, dtype="string"), type=pa.large_string())


def _isin_arrow(values: pa.Array, allowed: pa.Array) -> np.ndarray:
    if not len(values):
        return np.zeros(0, dtype=bool)
    return pc.is_in(values, value_set=allowed).fill_null(False).to_numpy(zero_copy_only=False)


def _isin(values: pd.Series, allowed: pd.Series) -> np.ndarray:
    """`values.isin(allowed)` through Arrow's hash set (pandas' path for Arrow strings loops in Python)."""
    return _isin_arrow(_keys(values), _keys(allowed))


def _same(new: pd.Series, old: pd.Series) -> np.ndarray:
    """Null-safe equality, element-wise."""
    equal = (new == old).fillna(False).to_numpy(dtype=bool)
    return equal | (new.isna().to_numpy() & old.isna().to_numpy())


def _changed_fields(changed: dict[str, np.ndarray], rows: np.ndarray) -> pd.Series:
    """Comma-separated names of the changed columns for the selected rows."""
    joined = pd.Series([""] * int(rows.sum()), dtype="object")
    for name, mask in changed.items():
        joined = joined + np.where(mask[rows], name + ",", "")
    return joined.str.rstrip(",").astype("string")


def _evaluate_guard(
    client: ClientConfig, active_before: int, deprovisions: int, deletes: int, override: bool
) -> GuardVerdict:
    guard = client.guard
    changes = deprovisions + deletes
    reasons = []
    if guard.max_count is not None and changes > guard.max_count:
        reasons.append(f"{changes} deprovisions+deletes exceed max_count {guard.max_count}")
    if active_before >= guard.min_active and changes > guard.max_fraction * active_before:
        reasons.append(
            f"{changes} deprovisions+deletes exceed max_fraction {guard.max_fraction:g} of "
            f"{active_before} active users ({guard.max_fraction * active_before:g})"
        )
    tripped = bool(reasons)
    return GuardVerdict(
        blocked=tripped and not override,
        active_before=active_before,
        deprovisions=deprovisions,
        deletes=deletes,
        reason="; ".join(reasons),
        max_fraction=guard.max_fraction,
        max_count=guard.max_count,
        min_active=guard.min_active,
        tripped=tripped,
        overridden=tripped and override,
    )


def _string_index(values: pa.Array | pd.Series) -> pd.Index:
    """A pandas Index on Arrow strings: its hash table is built once and probed many times."""
    if isinstance(values, pd.Series):
        return pd.Index(values.astype("string"))
    return pd.Index(values.to_pandas(types_mapper=lambda _: pd.StringDtype()))


def _combined(frame: pd.DataFrame) -> pa.Array:
    """One hashable key per membership; \x1f (unit separator) never occurs in a value we keep."""
    separator = pa.scalar("\x1f", type=pa.large_string())
    return pc.binary_join_element_wise(*(_keys(frame[c]) for c in MEMBERSHIP_COLUMNS), separator)


def _membership_diff(desired: pd.DataFrame, current: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(to add, to remove) so that `current` (unique rows: a primary key) becomes `desired`."""
    if not len(current):
        return desired.reset_index(drop=True), current.reset_index(drop=True)
    stored = _string_index(_combined(current))
    position = stored.get_indexer(_string_index(_combined(desired)))
    kept = np.zeros(len(current), dtype=bool)
    kept[position[position >= 0]] = True
    add = desired.loc[position < 0].reset_index(drop=True)
    remove = current.loc[~kept].reset_index(drop=True)
    return add, remove


def build_sync_plan(
    mapped: MappedFile,
    current: pd.DataFrame,
    client: ClientConfig,
    *,
    override_guard: bool = False,
    current_memberships: pd.DataFrame | None = None,
    count_missing: bool = True,
) -> SyncPlan:
    """Work out every change one sync of `client` makes.

    `current` is the client's rows in the warehouse (CURRENT_COLUMNS, one per key),
    `current_memberships` their communities (None: assume none, so memberships are only added).
    `mapped.subscribers` holds one row per key (the file contract rejects duplicates).
    `count_missing=False` is for re-applying the file that was last applied: it has already counted
    towards `missing_count` once.
    """
    file = normalise_subscribers(mapped.subscribers, ("subscriber_key", *PROFILE_COLUMNS, "delete"))
    cur = normalise_subscribers(current, CURRENT_COLUMNS)
    # One hash table on the stored keys, probed by the file, the protected keys and the memberships.
    cur_index = _string_index(cur["subscriber_key"])

    # Align the warehouse's row (if any) to each file row.
    position = cur_index.get_indexer(file["subscriber_key"]) if len(cur) else np.full(len(file), -1)
    exists = position >= 0
    if len(cur):
        old = cur.iloc[np.where(exists, position, 0)].reset_index(drop=True)
    else:
        old = normalise_subscribers(pd.DataFrame(index=pd.RangeIndex(len(file))), CURRENT_COLUMNS)
    in_file = np.zeros(len(cur), dtype=bool)
    in_file[position[exists]] = True
    delete_flag = file["delete"].to_numpy(dtype=bool)
    old_status = np.where(exists, old["status"].fillna("").to_numpy(dtype=object), "")
    old_missing = np.where(exists, old["missing_count"].fillna(0).to_numpy(), 0)
    old_opt_out = exists & old["email_opt_out"].fillna(False).to_numpy(dtype=bool)

    new = file[["subscriber_key", *PROFILE_COLUMNS]].copy()
    # Opt-out is one-way: the file can set it, never clear it (a user's own choice stays).
    new["email_opt_out"] = new["email_opt_out"].to_numpy(dtype=bool) | old_opt_out
    new["status"] = pd.Series(np.where(delete_flag, DELETED, ACTIVE), dtype="string")
    new["missing_count"] = np.zeros(len(new), dtype="int64")

    changed = {name: exists & ~_same(new[name], old[name]) for name in PROFILE_COLUMNS}
    changed["missing_count"] = exists & (old_missing > 0)  # seen again: the count restarts
    any_changed = np.logical_or.reduce(list(changed.values())) if len(new) else np.zeros(0, dtype=bool)

    is_delete = exists & delete_flag & (old_status != DELETED)
    is_reactivation = exists & ~delete_flag & (old_status != ACTIVE)
    is_update = exists & ~is_delete & ~is_reactivation & any_changed
    is_insert = ~exists & ~delete_flag
    unchanged = int((exists & ~is_delete & ~is_reactivation & ~any_changed).sum())

    def rows(mask: np.ndarray, with_changes: bool) -> pd.DataFrame:
        frame = new.loc[mask].reset_index(drop=True)
        frame["changed_fields"] = (
            _changed_fields(changed, mask) if with_changes else pd.Series([""] * len(frame), dtype="string")
        )
        return frame

    inserts = rows(is_insert, with_changes=False)
    updates = rows(is_update, with_changes=True)
    reactivations = rows(is_reactivation, with_changes=True)
    deletes = rows(is_delete, with_changes=True)

    # Absent users: only active ones count, and never an identity present in the file (even rejected).
    missing = _empty(ABSENT_COLUMNS)
    deprovisions = _empty(ABSENT_COLUMNS)
    if client.auto_deprovision and count_missing and len(cur):
        present = in_file.copy()
        protected = cur_index.get_indexer(pd.Series(mapped.protected_keys, dtype="string"))
        present[protected[protected >= 0]] = True
        if client.identifier != "email":
            # A row rejected for a blank user_id/user_login still names its user by email: protect them.
            emails = cur["email"].str.lower()
            present |= emails.isin(pd.Index(mapped.protected_keys)).fillna(False).to_numpy(bool)
        absent = cur.loc[(cur["status"] == ACTIVE).fillna(False).to_numpy(bool) & ~present]
        absent = absent[["subscriber_key", "missing_count"]].assign(missing_count=absent["missing_count"] + 1)
        reached = absent["missing_count"] >= client.deprovision_after_missing_files
        missing = absent.loc[~reached].reset_index(drop=True)
        deprovisions = absent.loc[reached].reset_index(drop=True)

    # Communities of users present in the file are replaced by the file's; deleted users lose theirs.
    desired = mapped.memberships[list(MEMBERSHIP_COLUMNS)].astype("string").reset_index(drop=True)
    if delete_flag.any():
        desired = desired.loc[~_isin(desired["subscriber_key"], file.loc[delete_flag, "subscriber_key"])]
    if current_memberships is None or not len(current_memberships) or not len(cur):
        current_m = _empty(MEMBERSHIP_COLUMNS).astype("string")
    else:
        current_m = current_memberships[list(MEMBERSHIP_COLUMNS)].astype("string").reset_index(drop=True)
        owner = cur_index.get_indexer(current_m["subscriber_key"])
        current_m = current_m.loc[(owner >= 0) & in_file[np.maximum(owner, 0)]]
    memberships_add, memberships_remove = _membership_diff(desired, current_m)

    active_before = int((cur["status"] == ACTIVE).fillna(False).sum())
    guard = _evaluate_guard(client, active_before, len(deprovisions), len(deletes), override_guard)
    return SyncPlan(
        client_id=client.id,
        inserts=inserts,
        updates=updates,
        unchanged=unchanged,
        reactivations=reactivations,
        deletes=deletes,
        missing=missing,
        deprovisions=deprovisions,
        guard=guard,
        memberships_add=memberships_add,
        memberships_remove=memberships_remove,
        skipped_deletes=int((~exists & delete_flag).sum()),
        missing_counted=count_missing,
    )
