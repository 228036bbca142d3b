"""The floor: the minimal hand-written path from a roster CSV to the subscribers table.

What the pipeline must beat (within 1.5x), measured in the same run: pyarrow reads the file, vectorised
kernels check emails and duplicate identities and map the columns the table stores, the raw driver stages
every identity in the file in a temporary table (sqlite3 `executemany`; psycopg 3 `COPY`), one
`INSERT ... SELECT ... ON CONFLICT DO UPDATE ... WHERE <something differs>` merges the valid rows (unchanged
rows are not written), and one anti-join `UPDATE` deprovisions active users absent from the file — all in
one transaction. It deliberately leaves out what a product needs but a floor does not: community
memberships, the sync log, rejected-row records, the mass-change guard, archiving the upload.

The table is our own `subscribers`-shaped table in a scratch SQLite file or PostgreSQL schema, so the
comparison with the warehouse is like for like without depending on the warehouse module.
"""

from __future__ import annotations

import csv
import sqlite3
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from sis_pipeline.columns import normalise_header

#: Columns the floor stages and stores, in order (PRODUCT.md §5 `subscribers`, less status bookkeeping).
STAGED = (
    "subscriber_key",
    "email",
    "first_name",
    "last_name",
    "user_login",
    "graduation_year",
    "user_type",
    "email_opt_out",
    "valid",
)
_COMPARED = ("email", "first_name", "last_name", "user_login", "graduation_year", "user_type")
_EMAIL = r"^(?P<local>[^@\s]+)@(?P<domain>[^@\s]+\.[^@\s.]+)$"

SUBSCRIBERS_DDL = """
CREATE TABLE IF NOT EXISTS subscribers (
    client_id TEXT NOT NULL,
    subscriber_key TEXT NOT NULL,
    email TEXT NOT NULL,
    first_name TEXT,
    last_name TEXT,
    user_login TEXT,
    graduation_year INTEGER,
    user_type TEXT,
    email_opt_out BOOLEAN NOT NULL DEFAULT FALSE,
    status TEXT NOT NULL DEFAULT 'active',
    missing_count INTEGER NOT NULL DEFAULT 0,
    first_seen_at {ts},
    last_seen_at {ts},
    status_changed_at {ts},
    last_sync_id BIGINT,
    PRIMARY KEY (client_id, subscriber_key)
)
"""


@dataclass(frozen=True)
class Roster:
    """A file read and checked: the valid rows as the table stores them, and every identity present."""

    rows_total: int
    rows_rejected: int
    staged: pa.Table  # STAGED columns, by key; `valid` false for duplicate rows (present, not applied)


@dataclass(frozen=True)
class FloorResult:
    """What one floor apply did, and where its time went."""

    rows_total: int
    rows_valid: int
    rows_rejected: int
    inserted: int
    updated: int
    unchanged: int
    deprovisioned: int
    read_seconds: float
    write_seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def read_roster(path: str | Path, client_id: str) -> Roster:
    """Read a roster CSV with pyarrow and apply the vectorised checks and mapping (identifier `email`)."""
    with open(path, encoding="utf-8-sig", newline="") as handle:
        header = next(csv.reader(handle))
    table = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        # every column as text, as the file contract requires; no type inference
        convert_options=pacsv.ConvertOptions(
            column_types=dict.fromkeys(header, pa.string()), strings_can_be_null=False
        ),
        read_options=pacsv.ReadOptions(block_size=1 << 24),
    )
    table = table.rename_columns([normalise_header(n) for n in table.column_names])
    n = table.num_rows

    def column(name: str) -> pa.Array:
        # only the columns the table stores are trimmed; the rest of the file is not looked at
        if name not in table.column_names:
            return pa.nulls(n, pa.string())
        return pc.utf8_trim_whitespace(table[name].combine_chunks())

    raw_email = column("email")
    email_ok = pc.match_substring_regex(raw_email, _EMAIL)
    # lower-case the domain; only the few rows with an upper-case letter after the '@' need the regex
    upper_domain = pc.and_(email_ok, pc.match_substring_regex(raw_email, "@.*[[:upper:]]"))
    email = raw_email
    if pc.any(upper_domain).as_py():
        parts = pc.extract_regex(raw_email.filter(upper_domain), _EMAIL)
        fixed = pc.binary_join_element_wise(
            pc.struct_field(parts, "local"), pc.utf8_lower(pc.struct_field(parts, "domain")), "@"
        )
        email = pc.replace_with_mask(raw_email, upper_domain, fixed)
    key = pc.utf8_lower(email)

    # duplicate identity: every row of a key seen more than once is rejected but stays present
    codes = pc.dictionary_encode(pc.if_else(email_ok, key, pa.scalar(""))).indices.to_numpy(
        zero_copy_only=False
    )
    duplicated = np.bincount(codes)[codes] > 1
    email_ok_np = email_ok.to_numpy(zero_copy_only=False)
    valid = email_ok_np & ~duplicated
    col = {name: column(name) for name in ("first_name", "last_name", "user_type", "email_opt_out")}
    col["graduation"] = column("graduation")

    login = column("user_login")
    login = pc.if_else(
        pc.or_(pc.equal(login, ""), pc.match_substring(login, "@")),
        login,
        pc.binary_join_element_wise(pa.scalar(client_id), login, "_"),
    )
    staged = pa.table(
        {
            "subscriber_key": key,
            "email": email,
            "first_name": col["first_name"],
            "last_name": col["last_name"],
            "user_login": pc.if_else(pc.equal(login, ""), pa.scalar(None, pa.string()), login),
            "graduation_year": _class_year(col["graduation"]),
            "user_type": col["user_type"],
            "email_opt_out": pc.is_in(pc.utf8_lower(col["email_opt_out"]), pa.array(["1", "yes", "true"])),
            "valid": pa.array(valid),
        }
    ).filter(email_ok)
    # in key order, the merge probes the subscribers index sequentially instead of at random
    staged = staged.take(pc.sort_indices(staged["subscriber_key"]))
    return Roster(rows_total=n, rows_rejected=int(n - valid.sum()), staged=staged)


def _class_year(text: pa.Array) -> pa.Array:
    """4-digit year as is; ISO, M/D/YYYY or date-time dates to a class year with 31 August as cutoff."""
    is_year = pc.and_(pc.equal(pc.utf8_length(text), 4), pc.utf8_is_digit(text))
    year = pc.cast(pc.if_else(is_year, text, pa.scalar(None, pa.string())), pa.int32())
    maybe_date = pc.and_(pc.invert(is_year), pc.greater(pc.utf8_length(text), 4))
    if not pc.any(maybe_date).as_py():
        return year
    dates = text.filter(maybe_date)  # a few percent of rows: the regexes only see these
    iso = pc.extract_regex(dates, r"^(?P<y>\d{4})-(?P<m>\d{1,2})-(?P<d>\d{1,2})(?:[ T].*)?$")
    us = pc.extract_regex(dates, r"^(?P<m>\d{1,2})/(?P<d>\d{1,2})/(?P<y>\d{4})(?:[ T].*)?$")

    def from_date(parts: pa.Array) -> pa.Array:
        year = pc.cast(pc.struct_field(parts, "y"), pa.int32())
        after_cutoff = pc.greater(pc.cast(pc.struct_field(parts, "m"), pa.int32()), 8)
        return pc.add(year, pc.cast(after_cutoff, pa.int32()))

    return pc.replace_with_mask(year, maybe_date, pc.coalesce(from_date(iso), from_date(us)))


def _now() -> str:
    return datetime.now(UTC).isoformat()


# ---------------------------------------------------------------------------------------------------------
# SQLite: sqlite3 executemany into a temporary staging table, then set-based SQL


def create_sqlite_table(db_path: str | Path) -> None:
    """Create the floor's subscribers table in a SQLite file."""
    with sqlite3.connect(db_path) as conn:
        conn.execute(SUBSCRIBERS_DDL.format(ts="TEXT"))


def apply_sqlite(
    db_path: str | Path, csv_path: str | Path, client_id: str = "bench", sync_id: int = 1
) -> FloorResult:
    """Apply one roster file to the SQLite table in one transaction."""
    started = time.perf_counter()
    roster = read_roster(csv_path, client_id)
    read_done = time.perf_counter()
    now = _now()
    staged = roster.staged
    rows = zip(*(staged[c].to_pylist() for c in STAGED), strict=True)
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA temp_store=MEMORY")
        conn.execute("PRAGMA cache_size=-262144")  # 256 MiB page cache: the merge touches the whole index
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(
            "CREATE TEMP TABLE staging (subscriber_key TEXT, email TEXT, first_name TEXT, last_name TEXT,"
            " user_login TEXT, graduation_year INTEGER, user_type TEXT, email_opt_out BOOLEAN, valid BOOLEAN)"
        )
        conn.executemany(f"INSERT INTO staging VALUES ({','.join('?' * len(STAGED))})", rows)
        conn.execute("CREATE INDEX temp.staging_key ON staging (subscriber_key)")
        before = conn.execute(
            "SELECT count(*) FROM subscribers WHERE client_id = ?", (client_id,)
        ).fetchone()[0]
        deprovisioned = conn.execute(
            "UPDATE subscribers SET status = 'deprovisioned', missing_count = missing_count + 1,"
            " status_changed_at = ?, last_sync_id = ?"
            " WHERE client_id = ? AND status = 'active'"
            " AND NOT EXISTS (SELECT 1 FROM staging k WHERE k.subscriber_key = subscribers.subscriber_key)",
            (now, sync_id, client_id),
        ).rowcount
        differs = " OR ".join(f"subscribers.{c} IS NOT excluded.{c}" for c in _COMPARED)
        changed = conn.execute(
            f"INSERT INTO subscribers ({','.join(STAGED[:-1])}, client_id, status, missing_count,"
            " first_seen_at, last_seen_at, status_changed_at, last_sync_id)"
            f" SELECT {','.join(STAGED[:-1])}, ?, 'active', 0, ?, ?, ?, ? FROM staging WHERE valid"
            " ON CONFLICT (client_id, subscriber_key) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _COMPARED)
            + ", email_opt_out = subscribers.email_opt_out OR excluded.email_opt_out,"
            " status_changed_at = CASE WHEN subscribers.status <> 'active' THEN excluded.status_changed_at"
            " ELSE subscribers.status_changed_at END,"
            " status = 'active', missing_count = 0, last_seen_at = excluded.last_seen_at,"
            " last_sync_id = excluded.last_sync_id"
            f" WHERE {differs} OR (excluded.email_opt_out AND NOT subscribers.email_opt_out)"
            " OR subscribers.status <> 'active' OR subscribers.missing_count <> 0",
            (client_id, now, now, now, sync_id),
        ).rowcount
        after = conn.execute("SELECT count(*) FROM subscribers WHERE client_id = ?", (client_id,)).fetchone()[
            0
        ]
        conn.execute("DROP TABLE temp.staging")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    finally:
        conn.close()
    return _result(roster, before, after, changed, deprovisioned, started, read_done)


def _result(roster: Roster, before: int, after: int, changed: int, deprovisioned: int, t0: float, t1: float):
    rows_valid = roster.rows_total - roster.rows_rejected
    inserted = after - before
    return FloorResult(
        rows_total=roster.rows_total,
        rows_valid=rows_valid,
        rows_rejected=roster.rows_rejected,
        inserted=inserted,
        updated=changed - inserted,
        unchanged=rows_valid - changed,
        deprovisioned=deprovisioned,
        read_seconds=round(t1 - t0, 3),
        write_seconds=round(time.perf_counter() - t1, 3),
    )


def status_counts_sqlite(db_path: str | Path, client_id: str = "bench") -> dict[str, int]:
    """Rows per status for one client."""
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM subscribers WHERE client_id = ? GROUP BY status", (client_id,)
        ).fetchall()
    return {status: count for status, count in rows}


# ---------------------------------------------------------------------------------------------------------
# PostgreSQL: psycopg 3 COPY into a temporary staging table, then set-based SQL


def _pg_connect(url: str, schema: str):
    import psycopg

    url = url.replace("postgresql+psycopg://", "postgresql://", 1)
    return psycopg.connect(url, options=f"-c search_path={schema}")


def create_postgres_table(url: str, schema: str) -> None:
    """Create a scratch schema holding the floor's subscribers table."""
    with _pg_connect(url, schema) as conn:
        conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        conn.execute(SUBSCRIBERS_DDL.format(ts="TIMESTAMPTZ"))


def drop_postgres_schema(url: str, schema: str) -> None:
    """Drop the scratch schema and everything in it."""
    with _pg_connect(url, "public") as conn:
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def apply_postgres(
    url: str, schema: str, csv_path: str | Path, client_id: str = "bench", sync_id: int = 1
) -> FloorResult:
    """Apply one roster file to the PostgreSQL table in one transaction."""
    started = time.perf_counter()
    roster = read_roster(csv_path, client_id)
    read_done = time.perf_counter()
    now = datetime.now(UTC)
    sink = pa.BufferOutputStream()
    pacsv.write_csv(roster.staged, sink, pacsv.WriteOptions(include_header=False))
    payload = memoryview(sink.getvalue())
    with _pg_connect(url, schema) as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TEMP TABLE staging (subscriber_key TEXT, email TEXT, first_name TEXT, last_name TEXT,"
            " user_login TEXT, graduation_year INTEGER, user_type TEXT, email_opt_out BOOLEAN, valid BOOLEAN)"
            " ON COMMIT DROP"
        )
        with cur.copy(f"COPY staging ({','.join(STAGED)}) FROM STDIN (FORMAT csv)") as copy:
            for offset in range(0, len(payload), 1 << 23):
                copy.write(payload[offset : offset + (1 << 23)])
        cur.execute("ANALYZE staging")
        cur.execute("SELECT count(*) FROM subscribers WHERE client_id = %s", (client_id,))
        before = cur.fetchone()[0]
        cur.execute(
            "UPDATE subscribers s SET status = 'deprovisioned', missing_count = s.missing_count + 1,"
            " status_changed_at = %s, last_sync_id = %s"
            " WHERE s.client_id = %s AND s.status = 'active'"
            " AND NOT EXISTS (SELECT 1 FROM staging k WHERE k.subscriber_key = s.subscriber_key)",
            (now, sync_id, client_id),
        )
        deprovisioned = cur.rowcount
        old = ", ".join(f"subscribers.{c}" for c in _COMPARED)
        new = ", ".join(f"excluded.{c}" for c in _COMPARED)
        # a hash join first keeps the 98% unchanged rows out of ON CONFLICT's row-at-a-time path (2x faster)
        changed_only = (
            " FROM staging k LEFT JOIN subscribers s ON s.client_id = %s AND s.subscriber_key = k.subscriber_key"
            " WHERE k.valid AND (s.subscriber_key IS NULL"
            f" OR ({', '.join(f's.{c}' for c in _COMPARED)}) IS DISTINCT FROM ({', '.join(f'k.{c}' for c in _COMPARED)})"
            " OR s.status <> 'active' OR s.missing_count <> 0 OR (k.email_opt_out AND NOT s.email_opt_out))"
        )
        cur.execute(
            f"INSERT INTO subscribers ({','.join(STAGED[:-1])}, client_id, status, missing_count,"
            " first_seen_at, last_seen_at, status_changed_at, last_sync_id)"
            f" SELECT {','.join('k.' + c for c in STAGED[:-1])}, %s, 'active', 0, %s, %s, %s, %s"
            + changed_only
            + " ON CONFLICT (client_id, subscriber_key) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _COMPARED)
            + ", email_opt_out = subscribers.email_opt_out OR excluded.email_opt_out,"
            " status_changed_at = CASE WHEN subscribers.status <> 'active' THEN excluded.status_changed_at"
            " ELSE subscribers.status_changed_at END,"
            " status = 'active', missing_count = 0, last_seen_at = excluded.last_seen_at,"
            " last_sync_id = excluded.last_sync_id"
            f" WHERE ({old}) IS DISTINCT FROM ({new})"
            " OR (excluded.email_opt_out AND NOT subscribers.email_opt_out)"
            " OR subscribers.status <> 'active' OR subscribers.missing_count <> 0",
            (client_id, now, now, now, sync_id, client_id),
        )
        changed = cur.rowcount
        cur.execute("SELECT count(*) FROM subscribers WHERE client_id = %s", (client_id,))
        after = cur.fetchone()[0]
        if after - before > before // 10:
            # a bulk load changes the table's shape; without statistics the next anti-join plans a nested loop
            cur.execute("ANALYZE subscribers")
    return _result(roster, before, after, changed, deprovisioned, started, read_done)


def status_counts_postgres(url: str, schema: str, client_id: str = "bench") -> dict[str, int]:
    """Rows per status for one client."""
    with _pg_connect(url, schema) as conn:
        rows = conn.execute(
            "SELECT status, count(*) FROM subscribers WHERE client_id = %s GROUP BY status", (client_id,)
        ).fetchall()
    return {status: count for status, count in rows}
