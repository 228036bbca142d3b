"""A user's communities as one string: the `communities_signature` the warehouse stores per subscriber.

Each (community_group, community) pair is written `group\\x1fcommunity`; a user's pairs are sorted and
joined by `\\x1e`; a user without memberships has "". Equal signatures mean equal sets, so a sync compares
one string per user instead of reading and diffing every stored membership. Built here from integer
ranks (two sorts of integers, one take of strings), once by `map_file` from the pairs it derives anyway,
and by `sync_plan.communities_signature` from any memberships frame: both give the same bytes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

UNIT, RECORD = "\x1f", "\x1e"


def pair_texts(group: str, communities: list[str]) -> list[str]:
    """The written form of each (group, community) pair."""
    return [f"{group}{UNIT}{community}" for community in communities]


def ranked(texts: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """`texts` sorted (code point order, as Python sorts), and each text's position in that order."""
    order = np.argsort(np.asarray(texts.to_pylist(), dtype=object), kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return texts.take(pa.array(order)), rank


def join_by_owner(owner: np.ndarray, rank: np.ndarray, sorted_texts: pa.Array, owners: int) -> pa.Array:
    """Per owner 0..owners-1, the texts of its entries in rank order joined by RECORD ("" for none).

    Entry i belongs to `owner[i]` (-1: to nobody) and is `sorted_texts[rank[i]]`. One integer sort orders
    the entries by (owner, rank); the owners' counts become list offsets (Arrow's hash group_by is ~4x
    slower).
    """
    kept = np.flatnonzero(owner >= 0)
    order = kept[np.argsort(owner[kept] * max(len(sorted_texts), 1) + rank[kept])]
    offsets = np.zeros(owners + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[kept], minlength=owners), out=offsets[1:])
    values = sorted_texts.cast(pa.large_string()).take(pa.array(rank[order]))
    lists = pa.LargeListArray.from_arrays(pa.array(offsets), values)
    joined = pc.binary_join(lists, pa.scalar(RECORD, type=pa.large_string()))
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined
