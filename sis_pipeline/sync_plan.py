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
from sis_pipeline.sisfile import signature as signatures
from sis_pipeline.sisfile.result import SUBSCRIBER_COLUMNS, MappedFile

#: Profile columns the file sets; a sync compares them and writes only rows where one changed.
PROFILE_COLUMNS: tuple[str, ...] = tuple(
    c for c in SUBSCRIBER_COLUMNS if c not in ("subscriber_key", "delete", "line_number")
)
#: The stored summary of a user's communities (see `communities_signature`).
SIGNATURE = "communities_signature"
_TEXT_COLUMNS = ("subscriber_key", "email", "first_name", "last_name", "user_login", "user_type", SIGNATURE)

#: Columns of `current` (what `Warehouse.current_subscribers` returns).
CURRENT_COLUMNS: tuple[str, ...] = ("subscriber_key", *PROFILE_COLUMNS, "status", "missing_count", SIGNATURE)
#: Columns of every frame of rows a plan writes (inserts, updates, reactivations, deletes, community changes).
WRITE_COLUMNS: tuple[str, ...] = (
    "subscriber_key",
    *PROFILE_COLUMNS,
    "status",
    "missing_count",
    SIGNATURE,
    "changed_fields",
)
#: Columns of `missing` and `deprovisions`: users absent from the file.
ABSENT_COLUMNS: tuple[str, ...] = ("subscriber_key", "missing_count")
MEMBERSHIP_COLUMNS: tuple[str, ...] = ("subscriber_key", "community_group", "community")

ACTIVE, DEPROVISIONED, DELETED = "active", "deprovisioned", "deleted"
# ASCII unit / record separators: never in a value we keep (the CSV reader strips control characters).
_UNIT, _RECORD, _OWNER = signatures.UNIT, signatures.RECORD, "\x1d"
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

    Communities are planned per user through `communities_signature`: `memberships_replace_keys` are the
    users in the file whose stored set differs from the file's (all their stored memberships are deleted),
    `memberships_add` every membership written afterwards (theirs and inserted users'), and
    `community_updates` the rows whose only change is their communities (counted in `unchanged`, written
    only to store the new signature). `communities_added` / `communities_removed` are the net difference.
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
    memberships_replace_keys: pd.Series = field(default_factory=lambda: pd.Series([], dtype="string"))
    community_updates: pd.DataFrame = field(default_factory=lambda: _empty(WRITE_COLUMNS))
    communities_added: int = 0  # memberships the file adds (net of ones re-written unchanged)
    communities_removed: int = 0  # stored memberships the file drops (as the stored signatures list them)
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
        """Net membership changes (the sync log's `communities_added` / `communities_removed`)."""
        return {"communities_added": self.communities_added, "communities_removed": self.communities_removed}

    @property
    def changes_anything(self) -> bool:
        """Whether applying the plan writes any subscriber or membership row."""
        counts = self.counts()
        counts.pop("unchanged_rows")
        return (
            any(counts.values())
            or any(self.membership_counts().values())
            or bool(len(self.community_updates) or len(self.memberships_replace_keys))
        )

    def upsert_frame(self) -> pd.DataFrame:
        """Rows of users present in the file that must be written (WRITE_COLUMNS), inserts first."""
        parts = (self.inserts, self.updates, self.reactivations, self.deletes, self.community_updates)
        frames = [f for f in parts if len(f)]
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


def _as_text(memberships: pd.DataFrame) -> pd.DataFrame:
    """Memberships as plain strings, a fresh index (`map_file` hands them over dictionary-encoded)."""
    return memberships.astype("string").reset_index(drop=True)


def _membership_owners(mapped: MappedFile, file_keys: pd.Series) -> np.ndarray:
    """Per membership, the position of its subscriber among the file's rows (-1: none): as `map_file`
    recorded it, else by key."""
    rows = mapped.membership_rows
    if rows is not None and len(rows) == len(mapped.memberships):
        return np.asarray(rows, dtype=np.int64)
    return KeyLookup(file_keys).get_indexer(pd.Series(mapped.memberships["subscriber_key"], dtype="string"))


def _named_by(names: list[pd.Series], identities: pa.Array) -> np.ndarray:
    """Per row, whether any of its `names` (columns of equal length, a few rows) is one of `identities`
    (up to a million): the identities are probed against the rows' names, so the hash table is the small
    side's."""
    arrays = [_keys(column) for column in names]
    if not len(arrays[0]) or not len(identities):
        return np.zeros(len(arrays[0]), dtype=bool)
    named = pa.chunked_array(arrays, pa.large_string())
    hits = identities.filter(
        pc.fill_null(pc.is_in(identities, value_set=pc.unique(named.drop_null())), False)
    )
    found = np.zeros(len(arrays[0]), dtype=bool)
    for array in arrays:
        found |= _isin_arrow(array, hits)
    return found


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


class KeyLookup:
    """Positions of keys among unique stored keys, through Arrow's C++ hash table: at 1M keys it probes
    several times faster than a pandas Index on strings (which hashes in Python objects)."""

    def __init__(self, keys: pd.Series):
        self._keys = _keys(keys)

    def get_indexer(self, probe: pd.Series | pa.Array) -> np.ndarray:
        """Like `pd.Index.get_indexer`: the position of each probed key, -1 where absent."""
        values = probe if isinstance(probe, pa.Array) else _keys(probe)
        if not len(values) or not len(self._keys):
            return np.full(len(values), -1, dtype=np.int64)
        found = pc.index_in(values, value_set=self._keys).fill_null(-1)
        return found.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


class _Aligned:
    """The stored row of each file row (row `i` of `cur` at `positions[i]`), one column at a time: a copy
    of every column of a million stored rows at once would be ~0.25 GiB more at the plan's peak."""

    def __init__(self, cur: pd.DataFrame, positions: np.ndarray):
        self._cur, self._positions = cur, positions

    def __getitem__(self, name: str) -> pd.Series:
        return self._cur[name].take(self._positions).reset_index(drop=True)


def _flat(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array (large inputs arrive from pandas as chunked arrays)."""
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _separator(text: str) -> pa.Scalar:
    return pa.scalar(text, type=pa.large_string())


def communities_signature(memberships: pd.DataFrame, keys: pd.Series) -> pa.Array:
    """Per key, its (community_group, community) pairs sorted and joined (`sisfile.signature`); "" for a
    key without memberships. `map_file` computes the same for a file's rows (`MappedFile.signatures`)."""
    out_keys = _keys(keys)
    if not len(memberships) or not len(out_keys):
        return pa.array([""] * len(out_keys), type=pa.large_string())
    combo = pc.binary_join_element_wise(
        _keys(memberships["community_group"]), _keys(memberships["community"]), _separator(_UNIT)
    )
    owner = pc.index_in(_keys(memberships["subscriber_key"]), value_set=out_keys)
    owner = owner.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    # Few distinct pairs: rank them through their sorted dictionary.
    encoded = _flat(combo).dictionary_encode()
    sorted_texts, rank = signatures.ranked(encoded.dictionary)
    pair_rank = rank[encoded.indices.to_numpy(zero_copy_only=False)]
    return signatures.join_by_owner(owner, pair_rank, sorted_texts, len(out_keys))


def _signature_pairs(keys: pa.Array, signatures: pa.Array) -> pa.Array:
    """One `key\\x1dgroup\\x1fcommunity` per membership a signature lists (null lists none)."""
    lists = pc.split_pattern(pc.fill_null(signatures, ""), _RECORD)
    pairs = pc.list_flatten(lists)
    owners = pc.take(keys, pc.list_parent_indices(lists))
    named = pc.binary_join_element_wise(owners, pairs, _separator(_OWNER))
    return pc.filter(named, pc.not_equal(pairs, ""))


def _signature_diff(keys: pa.Array, old: pa.Array, new: pa.Array) -> tuple[int, int]:
    """(added, removed) memberships between two signatures per key."""
    before, after = _signature_pairs(keys, old), _signature_pairs(keys, new)
    if not len(before) or not len(after):
        return len(after), len(before)
    kept = int(_isin_arrow(after, before).sum())
    return len(after) - kept, len(before) - kept


def build_sync_plan(
    mapped: MappedFile,
    current: pd.DataFrame,
    client: ClientConfig,
    *,
    override_guard: bool = False,
    count_missing: bool = True,
) -> SyncPlan:
    """Work out every change one sync of `client` makes.

    `current` is the client's rows in the warehouse (CURRENT_COLUMNS, one per key); a missing or null
    `communities_signature` means "unknown": that user's stored communities are replaced.
    `mapped.subscribers` holds one row per key (the file contract rejects duplicates).
    `count_missing=False` is for re-applying the file that was last applied: it has already counted
    towards `missing_count` once.
    """
    file = normalise_subscribers(mapped.subscribers, ("subscriber_key", *PROFILE_COLUMNS, "delete"))
    cur = normalise_subscribers(current, CURRENT_COLUMNS)
    # One hash table on the stored keys, probed by the file, the protected keys and the memberships.
    cur_index = KeyLookup(cur["subscriber_key"])

    # Align the warehouse's row (if any) to each file row.
    position = cur_index.get_indexer(file["subscriber_key"]) if len(cur) else np.full(len(file), -1)
    exists = position >= 0
    if len(cur):
        old = _Aligned(cur, np.where(exists, position, 0))
    else:
        old = normalise_subscribers(pd.DataFrame(index=pd.RangeIndex(len(file))), CURRENT_COLUMNS)
    in_file = np.zeros(len(cur), dtype=bool)
    in_file[position[exists]] = True
    delete_flag = file["delete"].to_numpy(dtype=bool)
    stored_status = old["status"]
    was_deleted = exists & (stored_status == DELETED).fillna(False).to_numpy(dtype=bool)
    was_active = exists & (stored_status == ACTIVE).fillna(False).to_numpy(dtype=bool)
    del stored_status
    old_missing = np.where(exists, old["missing_count"].fillna(0).to_numpy(), 0)
    old_opt_out = exists & old["email_opt_out"].fillna(False).to_numpy(dtype=bool)

    new = file[["subscriber_key", *PROFILE_COLUMNS]].copy()
    # Opt-out is one-way: the file can set it, never clear it (a user's own choice stays).
    new["email_opt_out"] = new["email_opt_out"].to_numpy(dtype=bool) | old_opt_out
    new["status"] = pd.Series(np.where(delete_flag, DELETED, ACTIVE), dtype="string")
    new["missing_count"] = np.zeros(len(new), dtype="int64")

    # Communities: the file's set per user (none for a deleted user), compared with the stored signature.
    desired = mapped.memberships[list(MEMBERSHIP_COLUMNS)].reset_index(drop=True)
    owner = _membership_owners(mapped, file["subscriber_key"])
    kept = owner >= 0  # a membership of a key the file has no subscriber row for is nobody's
    kept[kept] = ~delete_flag[owner[kept]]
    if mapped.signatures is not None and len(mapped.signatures) == len(file):
        # computed by map_file from the pairs it derived; a deleted user keeps no communities
        signature = pc.if_else(pa.array(delete_flag), _separator(""), mapped.signatures)
    else:
        signature = communities_signature(_as_text(desired.loc[kept]), file["subscriber_key"])
    old_signature = _keys(old[SIGNATURE])
    if len(signature):
        same_signature = pc.fill_null(pc.equal(signature, old_signature), False)
        same_signature = same_signature.to_numpy(zero_copy_only=False)
    else:
        same_signature = np.zeros(0, dtype=bool)
    new[SIGNATURE] = pd.Series(pd.arrays.ArrowStringArray(signature)) if len(signature) else old[SIGNATURE]
    replace = exists & ~same_signature

    changed = {name: exists & ~_same(new[name], old[name]) for name in PROFILE_COLUMNS}
    changed["missing_count"] = exists & (old_missing > 0)  # seen again: the count restarts
    any_changed = np.logical_or.reduce(list(changed.values())) if len(new) else np.zeros(0, dtype=bool)

    is_delete = exists & delete_flag & ~was_deleted
    is_reactivation = exists & ~delete_flag & ~was_active
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
    # Only the communities changed: written to store the signature, still counted as unchanged.
    community_updates = rows(exists & ~is_delete & ~is_reactivation & ~any_changed & replace, False)

    # Replaced users lose every stored membership, then they and inserted users get the file's.
    written = replace | (~exists & ~delete_flag)
    chosen = kept.copy()
    chosen[kept] = written[owner[kept]]
    memberships_add = _as_text(desired.loc[chosen] if not chosen.all() else desired)
    written_keys = _keys(file.loc[written, "subscriber_key"])
    old_written = pc.if_else(
        pa.array(exists[written]), _keys(old[SIGNATURE][written]), pa.scalar(None, pa.large_string())
    )
    communities_added, communities_removed = _signature_diff(
        written_keys, old_written, signature.filter(pa.array(written))
    )

    # Absent users: only active ones count, and never an identity present in the file (even rejected).
    missing = _empty(ABSENT_COLUMNS)
    deprovisions = _empty(ABSENT_COLUMNS)
    if client.auto_deprovision and count_missing and len(cur):
        # Only an active stored user the file has no row for can be absent; whether an identity present in
        # the file (even rejected) names them is asked of those few, not of every stored row.
        candidates = np.flatnonzero((cur["status"] == ACTIVE).fillna(False).to_numpy(bool) & ~in_file)
        # A rejected row names its person by whatever it still holds: a row rejected for its email by the
        # stored login, a row rejected for a blank user_id/user_login by the email. Either protects them.
        names = [cur["subscriber_key"].take(candidates), cur["user_login"].take(candidates)]
        if client.identifier != "email":
            names.append(cur["email"].take(candidates).str.lower())
        protected = _named_by(names, _keys(mapped.protected_keys))
        absent = cur.iloc[candidates[~protected]]
        absent = absent[["subscriber_key", "missing_count"]].assign(missing_count=absent["missing_count"] + 1)
        reached = absent["missing_count"] >= client.deprovision_after_missing_files
        missing = absent.loc[~reached].reset_index(drop=True)
        deprovisions = absent.loc[reached].reset_index(drop=True)

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
        memberships_replace_keys=file.loc[replace, "subscriber_key"].reset_index(drop=True),
        community_updates=community_updates,
        communities_added=communities_added,
        communities_removed=communities_removed,
        skipped_deletes=int((~exists & delete_flag).sum()),
        missing_counted=count_missing,
    )
