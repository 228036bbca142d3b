"""Builders for warehouse tests: MappedFile / ValidatedFile / FileVersion values made in code.

The parser is not involved: these are the values the file contract hands the warehouse.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pandas as pd
import sqlalchemy as sa

from sis_pipeline.file_version import FileVersion
from sis_pipeline.registry import ClientConfig
from sis_pipeline.sisfile.result import (
    MEMBERSHIP_COLUMNS,
    REJECTED_COLUMNS,
    SUBSCRIBER_COLUMNS,
    MappedFile,
    ValidatedFile,
)
from sis_pipeline.warehouse import SyncOutcome, Warehouse
from sis_pipeline.warehouse.tables import metadata


def client(client_id: str = "22", **settings: Any) -> ClientConfig:
    return ClientConfig(
        id=client_id, name=f"School {client_id}", bucket=f"sis-test-{client_id.lower()}", **settings
    )


def person(n: int, **overrides: Any) -> dict[str, Any]:
    """Subscriber n of a roster: email `student{n}@school.edu`, keyed by the lower-cased email."""
    row: dict[str, Any] = {
        "email": f"student{n}@school.edu",
        "first_name": f"First{n}",
        "last_name": f"Last{n}",
        "user_login": None,
        "graduation_year": 2030,
        "user_type": "Student",
        "email_opt_out": False,
        "delete": False,
    }
    row.update(overrides)
    row.setdefault("subscriber_key", row["email"].lower())
    return row


def roster(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=[c for c in SUBSCRIBER_COLUMNS if c != "line_number"])
    frame["line_number"] = range(2, len(frame) + 2)
    frame["graduation_year"] = frame["graduation_year"].astype("Int64")
    return frame[list(SUBSCRIBER_COLUMNS)]


def memberships(pairs: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=list(MEMBERSHIP_COLUMNS), dtype="string")


def rejected(rows: list[tuple[int, str | None, str, str]]) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=list(REJECTED_COLUMNS))
    frame["line_number"] = frame["line_number"].astype("int64")
    return frame


class SyncFile:
    """One file's worth of values for a client: validated, mapped and its version."""

    def __init__(
        self,
        cfg: ClientConfig,
        rows: list[dict[str, Any]],
        communities: list[tuple[str, str, str]] | None = None,
        rejected_rows: list[tuple[int, str | None, str, str]] | None = None,
        protected: list[str] | None = None,
        sha256: str | None = None,
    ):
        subscribers = roster(rows)
        rejected_frame = rejected(rejected_rows or [])
        keys = [*subscribers["subscriber_key"].tolist(), *(protected or [])]
        self.mapped = MappedFile(
            client_id=cfg.id,
            subscribers=subscribers,
            memberships=memberships(communities or []),
            protected_keys=pd.Series(keys, dtype="string"),
        )
        self.validated = ValidatedFile(
            client_id=cfg.id,
            source=f"s3://{cfg.bucket}/{cfg.key}",
            encoding="utf-8",
            rows_total=len(subscribers) + int(rejected_frame["line_number"].nunique()),
            valid=subscribers.drop(columns=["subscriber_key"]),
            rejected=rejected_frame,
            protected_keys=pd.Series(keys, dtype="string"),
        )
        digest = (
            sha256 or hashlib.sha256(repr((rows, communities, rejected_rows, protected)).encode()).hexdigest()
        )
        self.version = FileVersion(
            bucket=cfg.bucket,
            key=cfg.key,
            etag=f'"{digest[:32]}"',
            version_id=digest[:12],
            sha256=digest,
            size=1,
        )
        self.client = cfg

    def apply(self, warehouse: Warehouse, **options: Any) -> SyncOutcome:
        return warehouse.apply(
            client=self.client,
            validated=self.validated,
            mapped=self.mapped,
            file=self.version,
            run_id="test-run",
            **options,
        )


def stored(warehouse: Warehouse, client_id: str = "22") -> pd.DataFrame:
    """The client's subscribers, indexed by key, with every column."""
    t = metadata.tables["subscribers"]
    with warehouse.engine.connect() as conn:
        result = conn.execute(sa.select(t).where(t.c.client_id == client_id))
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    return frame.set_index("subscriber_key").sort_index()


def communities_of(warehouse: Warehouse, client_id: str = "22") -> set[tuple[str, str, str]]:
    t = metadata.tables["subscriber_communities"]
    with warehouse.engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.c.subscriber_key, t.c.community_group, t.c.community).where(
                t.c.client_id == client_id
            )
        ).fetchall()
    return {tuple(r) for r in rows}


def dump(warehouse: Warehouse) -> dict[str, list[tuple]]:
    """Every row of every warehouse table, in primary-key order: a byte-for-byte comparable snapshot."""
    snapshot: dict[str, list[tuple]] = {}
    with warehouse.engine.connect() as conn:
        for table in metadata.sorted_tables:
            order = list(table.primary_key.columns)
            snapshot[table.name] = [tuple(r) for r in conn.execute(sa.select(table).order_by(*order))]
    return snapshot
