"""The naive implementation, for comparison: pandas end to end and `DataFrame.to_sql` row inserts.

What a first version typically does: `pd.read_csv`, a Python regex per email, the client's current rows read
back with `read_sql`, the merge worked out in pandas, then the client's rows deleted and all of them written
again with `to_sql` (one INSERT per row, pandas' default `method=None`). At 1M rows this takes minutes, so
it runs on a capped sample (`BenchContext.naive_sample_rows`) and the time is extrapolated linearly to the
full size; the table says so.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

from benchmarks import floor
from benchmarks.cases import BenchContext, require_postgres
from benchmarks.generate import file_stats, generate_pair
from sis_pipeline.columns import normalise_header

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def _sample(ctx: BenchContext) -> int:
    return min(ctx.rows, ctx.naive_sample_rows)


def _files(ctx: BenchContext):
    return generate_pair(Path(ctx.out_dir) / "files", _sample(ctx), ctx.seed)


def _engine(ctx: BenchContext):
    import sqlalchemy as sa

    if ctx.database == "sqlite":
        return sa.create_engine(f"sqlite:///{Path(ctx.work_dir) / 'naive.sqlite'}")
    url = require_postgres(ctx).replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(url, connect_args={"options": f"-c search_path={ctx.schema}"})


def prepare(ctx: BenchContext) -> None:
    """Last week's sample rows in the floor's table layout (loaded by the floor: same rows, faster)."""
    week1, _ = _files(ctx)
    if ctx.database == "sqlite":
        path = Path(ctx.work_dir) / "naive.sqlite"
        path.unlink(missing_ok=True)
        floor.create_sqlite_table(path)
        floor.apply_sqlite(path, week1.path, sync_id=1)
    else:
        url = require_postgres(ctx)
        floor.drop_postgres_schema(url, ctx.schema)
        floor.create_postgres_table(url, ctx.schema)
        floor.apply_postgres(url, ctx.schema, week1.path, sync_id=1)


def apply_naive(ctx: BenchContext, csv_path: str, client_id: str = "bench") -> int:
    """The naive apply of one file; returns the number of rows written."""
    import pandas as pd
    import sqlalchemy as sa

    frame = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    frame.columns = [normalise_header(c) for c in frame.columns]
    frame = frame.apply(lambda column: column.str.strip())
    frame = frame[frame["email"].apply(lambda e: bool(_EMAIL.match(e)))]
    local_domain = frame["email"].str.rsplit("@", n=1, expand=True)
    frame["email"] = local_domain[0] + "@" + local_domain[1].str.lower()
    frame["subscriber_key"] = frame["email"].str.lower()
    present = set(frame["subscriber_key"])
    frame = frame[~frame["subscriber_key"].duplicated(keep=False)]
    now = pd.Timestamp(datetime.now(UTC))
    engine = _engine(ctx)
    with engine.begin() as conn:
        existing = pd.read_sql(
            sa.text("SELECT * FROM subscribers WHERE client_id = :c"), conn, params={"c": client_id}
        ).set_index("subscriber_key")
        for column in ("first_seen_at", "last_seen_at", "status_changed_at"):  # SQLite hands back text
            existing[column] = pd.to_datetime(existing[column], utc=True, format="ISO8601")
        incoming = pd.DataFrame(
            {
                "client_id": client_id,
                "subscriber_key": frame["subscriber_key"],
                "email": frame["email"],
                "first_name": frame["first_name"],
                "last_name": frame["last_name"],
                "user_login": frame["user_login"].where(
                    frame["user_login"].str.contains("@"), client_id + "_" + frame["user_login"]
                ),
                "graduation_year": pd.to_numeric(frame["graduation"].str[:4], errors="coerce"),
                "user_type": frame["user_type"],
                "email_opt_out": frame["email_opt_out"].str.lower().isin(["1", "yes", "true"]),
                "status": "active",
                "missing_count": 0,
                "first_seen_at": now,
                "last_seen_at": now,
                "status_changed_at": now,
                "last_sync_id": 2,
            }
        ).set_index("subscriber_key")
        keep = existing.index.intersection(incoming.index)
        incoming.loc[keep, "first_seen_at"] = existing.loc[keep, "first_seen_at"]
        gone = existing[~existing.index.isin(list(present)) & (existing["status"] == "active")].copy()
        gone["status"] = "deprovisioned"
        gone["missing_count"] += 1
        others = existing[~existing.index.isin(incoming.index) & ~existing.index.isin(gone.index)]
        full = pd.concat([incoming, gone, others]).reset_index()
        conn.execute(sa.text("DELETE FROM subscribers WHERE client_id = :c"), {"c": client_id})
        full.to_sql("subscribers", conn, if_exists="append", index=False)
    engine.dispose()
    return len(full)


def run(ctx: BenchContext) -> dict:
    _, week2 = _files(ctx)
    written = apply_naive(ctx, week2.path)
    full_rows = file_stats(ctx.rows, 2, ctx.seed).rows  # counts only; the full file is not needed
    scale = full_rows / week2.rows
    note = f"extrapolated ×{scale:.1f} from a {week2.rows:,}-row sample" if scale > 1 else ""
    return {"rows": full_rows, "scale": scale, "note": note, "detail": {"rows_written": written}}


def cleanup(ctx: BenchContext) -> None:
    if ctx.database == "sqlite":
        (Path(ctx.work_dir) / "naive.sqlite").unlink(missing_ok=True)
    elif ctx.postgres_url:
        floor.drop_postgres_schema(ctx.postgres_url, ctx.schema)
