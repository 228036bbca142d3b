"""Dialect-specific bulk reads and writes inside one SQLAlchemy transaction (no row-by-row ORM).

PostgreSQL: frames travel as CSV through COPY (psycopg 3) into ON COMMIT DROP temporary tables and are merged
with one set-based statement each. SQLite: `executemany` on the raw DBAPI connection of the same
transaction. Both upserts carry a WHERE that skips rows whose stored values already match, so a row the file
did not change is never rewritten, even if a caller hands it over.
"""

from __future__ import annotations

import ctypes
import io
from datetime import datetime
from itertools import repeat

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from psycopg import sql as pg_sql

from sis_pipeline.sync_plan import CURRENT_COLUMNS, MEMBERSHIP_COLUMNS, PROFILE_COLUMNS, SIGNATURE

_UPSERT_COLUMNS = ("subscriber_key", *PROFILE_COLUMNS, "status", "missing_count", SIGNATURE)
_REJECTED_COLUMNS = ("line_number", "column_name", "reason_code", "message")

_ARROW_TYPES: dict[str, pa.DataType] = {
    "graduation_year": pa.int64(),
    "email_opt_out": pa.bool_(),
    "missing_count": pa.int64(),
    "line_number": pa.int64(),
    "sync_id": pa.int64(),
}
_PG_TYPES: dict[str, str] = {
    "graduation_year": "integer",
    "email_opt_out": "boolean",
    "missing_count": "integer",
}


def _values(series: pd.Series) -> list:
    """Python values with None for missing, ready for a DBAPI driver."""
    return series.to_numpy(dtype=object, na_value=None).tolist()


def _rows(frame: pd.DataFrame, columns: tuple[str, ...], *constants: object) -> list[tuple]:
    """Tuples of the constants followed by `columns`, for executemany."""
    return list(
        zip(*(repeat(c, len(frame)) for c in constants), *(_values(frame[c]) for c in columns), strict=False)
    )


def _profile_changed(target: str, source: str, distinct: str) -> str:
    """SQL that is true when the incoming row would change the stored one (opt-out only ever turns on)."""
    checks = [
        f"{target}.{c} {distinct} {source}.{c}"
        for c in (*PROFILE_COLUMNS, "status", "missing_count", SIGNATURE)
        if c != "email_opt_out"
    ]
    checks.append(f"({source}.email_opt_out AND NOT {target}.email_opt_out)")
    return " OR ".join(checks)


def _upsert_set(target: str, source: str) -> str:
    assignments = [f"{c} = {source}.{c}" for c in PROFILE_COLUMNS if c != "email_opt_out"]
    assignments += [
        # One-way: a user's own opt-out (or an earlier file's) is never cleared.
        f"email_opt_out = ({target}.email_opt_out OR {source}.email_opt_out)",
        f"status = {source}.status",
        f"missing_count = {source}.missing_count",
        f"{SIGNATURE} = {source}.{SIGNATURE}",
        f"status_changed_at = CASE WHEN {target}.status = {source}.status THEN {target}.status_changed_at "
        f"ELSE {source}.status_changed_at END",
        f"last_seen_at = {source}.last_seen_at",
        f"last_sync_id = {source}.last_sync_id",
    ]
    return ", ".join(assignments)


_SUBSCRIBER_INSERT_COLUMNS = (
    "client_id",
    "first_seen_at",
    "last_seen_at",
    "status_changed_at",
    "last_sync_id",
    *_UPSERT_COLUMNS,
)


class BulkWriter:
    """Reads and writes one client's rows on a connection that is inside a transaction."""

    def __init__(self, conn: sa.Connection):
        self.conn = conn

    # Reads ---------------------------------------------------------------------------------------------
    def read_subscribers(
        self, client_id: str, columns: tuple[str, ...] = CURRENT_COLUMNS, *, inactive_only: bool = False
    ) -> pd.DataFrame:
        """The client's stored subscribers (only those not `active` with `inactive_only`), `columns` only
        (CURRENT_COLUMNS by default)."""
        raise NotImplementedError

    def read_memberships(self, client_id: str) -> pd.DataFrame:
        raise NotImplementedError

    def read_snapshot_rows(self, client_id: str) -> pd.DataFrame:
        """The client's CURRENT_COLUMNS in this transaction's snapshot, as `read_subscribers` returns
        them: what a sync plans against, read while the file is validated."""
        return self.read_subscribers(client_id)

    # Writes --------------------------------------------------------------------------------------------
    def upsert_subscribers(self, client_id: str, frame: pd.DataFrame, sync_id: int, now: datetime) -> None:
        raise NotImplementedError

    def update_absent(self, client_id: str, frame: pd.DataFrame, sync_id: int, now: datetime) -> None:
        raise NotImplementedError

    def remove_memberships(self, client_id: str, keys: pd.Series) -> None:
        """Delete every stored membership of the subscribers `keys`."""
        raise NotImplementedError

    def add_memberships(self, client_id: str, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def insert_rejected(self, client_id: str, sync_id: int, frame: pd.DataFrame) -> None:
        raise NotImplementedError

    def refresh_statistics(self, inserted: int) -> bool:
        """Bring the planner's statistics up to date after a bulk load of `inserted` rows, if the database
        keeps any; return whether it did. The base: nothing to do."""
        return False


#: Rows fetched and converted to Arrow at a time: a million rows as Python tuples would be ~0.5 GiB at once.
FETCH_ROWS = 50_000


def _row_struct(columns: tuple[str, ...]) -> pa.DataType:
    types = [pa.int64() if name in _ARROW_TYPES else pa.large_string() for name in columns]
    return pa.struct([pa.field(n, t) for n, t in zip(columns, types, strict=True)])


def _frame_from_cursor(cursor, columns: tuple[str, ...]) -> pd.DataFrame:
    """A query's rows as typed columns, fetched in batches so only one batch is ever Python objects."""
    struct = _row_struct(columns)
    chunks = []
    while rows := cursor.fetchmany(FETCH_ROWS):
        chunks.append(pa.array(rows, type=struct))
    return _frame_from_struct(pa.chunked_array(chunks, type=struct).combine_chunks(), columns)


def _frame_from_rows(rows: list[tuple], columns: tuple[str, ...]) -> pd.DataFrame:
    """Fetched rows as typed columns (Arrow strings, nullable ints, bools), converted in C by pyarrow."""
    # Tuples -> one struct array -> its fields: no Python-level transposition of a million rows.
    return _frame_from_struct(pa.array(rows, type=_row_struct(columns)), columns)


def _frame_from_struct(struct: pa.StructArray, columns: tuple[str, ...]) -> pd.DataFrame:
    data = {}
    for name, array in zip(columns, struct.flatten(), strict=True):
        if _ARROW_TYPES.get(name) == pa.bool_():
            data[name] = pd.Series(array, dtype="Int64").fillna(0).astype(bool)
        elif name in _ARROW_TYPES:
            data[name] = pd.Series(array, dtype="Int64")
        else:
            data[name] = pd.Series(pd.arrays.ArrowStringArray(array))
    return pd.DataFrame(data)


class SqliteBulkWriter(BulkWriter):
    """executemany on the raw sqlite3 connection that SQLAlchemy's transaction already holds."""

    @property
    def _raw(self):
        return self.conn.connection.dbapi_connection

    @staticmethod
    def _time(now: datetime) -> str:
        # SQLAlchemy's storage format for DateTime on SQLite, so ORM/Core reads parse it back.
        return now.strftime("%Y-%m-%d %H:%M:%S.%f")

    def read_subscribers(
        self, client_id: str, columns: tuple[str, ...] = CURRENT_COLUMNS, *, inactive_only: bool = False
    ) -> pd.DataFrame:
        where = "client_id = ? AND status <> 'active'" if inactive_only else "client_id = ?"
        cursor = self._raw.execute(
            f"SELECT {', '.join(columns)} FROM subscribers WHERE {where}", (client_id,)
        )
        return _frame_from_cursor(cursor, columns)

    def read_memberships(self, client_id: str) -> pd.DataFrame:
        cursor = self._raw.execute(
            f"SELECT {', '.join(MEMBERSHIP_COLUMNS)} FROM subscriber_communities WHERE client_id = ?",
            (client_id,),
        )
        return _frame_from_cursor(cursor, MEMBERSHIP_COLUMNS)

    def upsert_subscribers(self, client_id: str, frame: pd.DataFrame, sync_id: int, now: datetime) -> None:
        if not len(frame):
            return
        names = ", ".join(_SUBSCRIBER_INSERT_COLUMNS)
        marks = ", ".join("?" * len(_SUBSCRIBER_INSERT_COLUMNS))
        sql = (
            f"INSERT INTO subscribers ({names}) VALUES ({marks}) "
            f"ON CONFLICT (client_id, subscriber_key) DO UPDATE SET {_upsert_set('subscribers', 'excluded')} "
            f"WHERE {_profile_changed('subscribers', 'excluded', 'IS NOT')}"
        )
        stamp = self._time(now)
        self._raw.executemany(sql, _rows(frame, _UPSERT_COLUMNS, client_id, stamp, stamp, stamp, sync_id))

    def update_absent(self, client_id: str, frame: pd.DataFrame, sync_id: int, now: datetime) -> None:
        if not len(frame):
            return
        sql = (
            "UPDATE subscribers SET missing_count = ?, "
            "status_changed_at = CASE WHEN status = ? THEN status_changed_at ELSE ? END, status = ?, "
            "last_sync_id = ? WHERE client_id = ? AND subscriber_key = ?"
        )
        status = _values(frame["status"])
        rows = zip(
            _values(frame["missing_count"]),
            status,
            repeat(self._time(now)),
            status,
            repeat(sync_id),
            repeat(client_id),
            _values(frame["subscriber_key"]),
            strict=False,
        )
        self._raw.executemany(sql, rows)

    def remove_memberships(self, client_id: str, keys: pd.Series) -> None:
        if not len(keys):
            return
        # A primary-key prefix: each key deletes one range of the WITHOUT ROWID b-tree.
        sql = "DELETE FROM subscriber_communities WHERE client_id = ? AND subscriber_key = ?"
        self._raw.executemany(sql, zip(repeat(client_id), _values(keys), strict=False))

    def add_memberships(self, client_id: str, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        sql = (
            "INSERT INTO subscriber_communities (client_id, subscriber_key, community_group, community) "
            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING"
        )
        self._raw.executemany(sql, _rows(frame, MEMBERSHIP_COLUMNS, client_id))

    def insert_rejected(self, client_id: str, sync_id: int, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        sql = (
            "INSERT INTO sis_rejected_rows (sync_id, client_id, line_number, column_name, reason_code, message) "
            "VALUES (?, ?, ?, ?, ?, ?)"
        )
        self._raw.executemany(sql, _rows(frame, _REJECTED_COLUMNS, sync_id, client_id))


class PostgresBulkWriter(BulkWriter):
    """COPY (psycopg 3) into temporary tables, then one set-based merge per change."""

    @property
    def _raw(self):
        return self.conn.connection.driver_connection

    @staticmethod
    def _csv(frame: pd.DataFrame, columns: tuple[str, ...]) -> bytes:
        """CSV in COPY's dialect: strings always quoted, so an unquoted empty field is NULL."""
        arrays = []
        for name in columns:
            values = frame[name]
            arrow_type = _ARROW_TYPES.get(name, pa.string())
            try:  # zero-copy for Arrow-backed and nullable columns
                array = pa.array(values, from_pandas=True)
                array = array if array.type == arrow_type else array.cast(arrow_type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                array = pa.array(values.astype(object).where(values.notna(), None), type=arrow_type)
            arrays.append(array)
        table = pa.Table.from_arrays(arrays, names=list(columns))
        sink = io.BytesIO()
        pa_csv.write_csv(table, sink, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))
        return sink.getvalue()

    def _stage(self, name: str, frame: pd.DataFrame, columns: tuple[str, ...]) -> None:
        """A temporary table `name` holding `frame[columns]`, dropped at commit or rollback."""
        definition = ", ".join(f"{c} {_PG_TYPES.get(c, 'text')}" for c in columns)
        with self._raw.cursor() as cursor:
            cursor.execute(f"CREATE TEMPORARY TABLE {name} ({definition}) ON COMMIT DROP")
            with cursor.copy(f"COPY {name} ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy:
                copy.write(self._csv(frame, columns))
            # Autovacuum never sees temporary tables: without statistics the planner guesses their size and
            # may hash-join a 1% change set against every membership row instead of probing the index.
            cursor.execute(f"ANALYZE {name}")

    def _execute(self, sql: str, params: dict) -> None:
        with self._raw.cursor() as cursor:
            cursor.execute(sql, params)

    def _copy_out(self, select: str, client_id: str, columns: tuple[str, ...], types: dict) -> pd.DataFrame:
        buffer = io.BytesIO()
        with self._raw.cursor() as cursor:
            # COPY takes no bind parameters; the client id goes in as a properly quoted literal.
            query = select.replace("%(client)s", pg_sql.Literal(client_id).as_string(self._raw))
            with cursor.copy(f"COPY ({query}) TO STDOUT (FORMAT csv)") as copy:
                for chunk in copy:
                    buffer.write(chunk)
        if not buffer.tell():
            return _frame_from_rows([], columns)
        buffer.seek(0)
        table = pa_csv.read_csv(
            buffer,
            read_options=pa_csv.ReadOptions(column_names=list(columns)),
            convert_options=pa_csv.ConvertOptions(
                column_types={c: types.get(c, pa.string()) for c in columns},
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
        return _typed_frame(table)

    def read_snapshot_rows(self, client_id: str) -> pd.DataFrame:
        """Through ADBC's PostgreSQL driver, in this transaction's snapshot (exported to the driver's own
        connection). psycopg's COPY hands Python one message per row: a million rows is a million turns
        of the interpreter lock, taken from the validation running beside it on the other core (it
        slowed validation by ~2 s). ADBC reads COPY's binary format into Arrow in C++, without the lock:
        ~25% quicker alone and half the cost to the thread beside it (docs/BENCHMARKS.md, run H)."""
        snapshot_id = self.conn.execute(sa.text("SELECT pg_export_snapshot()")).scalar_one()
        uri = self.conn.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        select = f"SELECT {', '.join(CURRENT_COLUMNS)} FROM subscribers WHERE client_id = $1"
        with adbc_connect(uri) as connection, connection.cursor() as cursor:
            cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            try:
                cursor.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")  # an id PostgreSQL made
                cursor.execute(select, (client_id,))
                table = cursor.fetch_arrow_table()
            finally:
                cursor.execute("ROLLBACK")
        if not table.num_rows:
            return _frame_from_rows([], CURRENT_COLUMNS)
        target = pa.schema([(c, _ARROW_TYPES.get(c, pa.string())) for c in CURRENT_COLUMNS])
        frame = _typed_frame(table.cast(target))
        del table
        # The driver grows its buffers by reallocation as rows arrive; glibc keeps what it freed (~2x the
        # rows' size at 1M rows) in this thread's arena for the rest of the run unless asked to let go.
        release_malloc_free_memory()
        return frame

    def read_subscribers(
        self, client_id: str, columns: tuple[str, ...] = CURRENT_COLUMNS, *, inactive_only: bool = False
    ) -> pd.DataFrame:
        select = f"SELECT {', '.join(columns)} FROM subscribers WHERE client_id = %(client)s"
        if inactive_only:
            select += " AND status <> 'active'"
        return self._copy_out(select, client_id, columns, _ARROW_TYPES)

    def read_memberships(self, client_id: str) -> pd.DataFrame:
        select = (
            f"SELECT {', '.join(MEMBERSHIP_COLUMNS)} FROM subscriber_communities WHERE client_id = %(client)s"
        )
        return self._copy_out(select, client_id, MEMBERSHIP_COLUMNS, {})

    def upsert_subscribers(self, client_id: str, frame: pd.DataFrame, sync_id: int, now: datetime) -> None:
        if not len(frame):
            return
        self._stage("sis_stage_subscribers", frame, _UPSERT_COLUMNS)
        # Room to sort a large batch in memory; LOCAL ends with this transaction.
        self._execute("SET LOCAL work_mem = '256MB'", {})
        names = ", ".join(_SUBSCRIBER_INSERT_COLUMNS)
        staged = ", ".join(f"s.{c}" for c in _UPSERT_COLUMNS)
        sql = (
            f"INSERT INTO subscribers AS t ({names}) "
            f"SELECT %(client)s, %(now)s, %(now)s, %(now)s, %(sync)s, {staged} FROM sis_stage_subscribers s "
            # Key order turns random b-tree descents into a sweep (about 40% faster on 1M inserts).
            "ORDER BY s.subscriber_key "
            f"ON CONFLICT (client_id, subscriber_key) DO UPDATE SET {_upsert_set('t', 'excluded')} "
            f"WHERE {_profile_changed('t', 'excluded', 'IS DISTINCT FROM')}"
        )
        self._execute(sql, {"client": client_id, "now": now, "sync": sync_id})

    def update_absent(self, client_id: str, frame: pd.DataFrame, sync_id: int, now: datetime) -> None:
        if not len(frame):
            return
        self._stage("sis_stage_absent", frame, ("subscriber_key", "missing_count", "status"))
        sql = (
            "UPDATE subscribers AS t SET missing_count = s.missing_count, "
            "status_changed_at = CASE WHEN t.status = s.status THEN t.status_changed_at ELSE %(now)s END, "
            "status = s.status, last_sync_id = %(sync)s "
            "FROM sis_stage_absent s WHERE t.client_id = %(client)s AND t.subscriber_key = s.subscriber_key"
        )
        few = self._few_of_subscribers(len(frame))
        if few:
            # A few keys of many: probe the primary key once per key. PostgreSQL's default cost model
            # (random_page_cost 4, for spinning disks) prefers a hash join that reads every stored row:
            # 1.4 s to update 10k absent users of 1M, against ~0.3 s of probes.
            self._settings("SET LOCAL enable_hashjoin = off", "SET LOCAL enable_mergejoin = off")
        self._execute(sql, {"client": client_id, "now": now, "sync": sync_id})
        if few:  # back to the server's settings for the rest of the transaction (a failure rolls them back)
            self._settings("RESET enable_hashjoin", "RESET enable_mergejoin")

    def _settings(self, *statements: str) -> None:
        with self._raw.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)

    def _few_of_subscribers(self, rows: int) -> bool:
        """Whether `rows` keys are under a tenth of the subscribers table's estimated rows."""
        return rows < FEW_FRACTION * self._estimated_subscribers()

    def _estimated_subscribers(self) -> float:
        """The planner's estimate of the subscribers table's rows (all clients); -1 if never analysed."""
        with self._raw.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE oid = 'subscribers'::regclass")
            return float(cursor.fetchone()[0])

    def remove_memberships(self, client_id: str, keys: pd.Series) -> None:
        if not len(keys):
            return
        self._stage("sis_stage_remove", pd.DataFrame({"subscriber_key": keys}), ("subscriber_key",))
        sql = (
            "DELETE FROM subscriber_communities AS t USING sis_stage_remove s WHERE t.client_id = %(client)s "
            "AND t.subscriber_key = s.subscriber_key"
        )
        self._execute(sql, {"client": client_id})

    def add_memberships(self, client_id: str, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        self._stage("sis_stage_add", frame, MEMBERSHIP_COLUMNS)
        sql = (
            "INSERT INTO subscriber_communities (client_id, subscriber_key, community_group, community) "
            "SELECT %(client)s, subscriber_key, community_group, community FROM sis_stage_add "
            "ORDER BY subscriber_key, community_group, community ON CONFLICT DO NOTHING"
        )
        self._execute(sql, {"client": client_id})

    def insert_rejected(self, client_id: str, sync_id: int, frame: pd.DataFrame) -> None:
        if not len(frame):
            return
        data = frame.assign(sync_id=sync_id, client_id=client_id)
        columns = ("sync_id", "client_id", *_REJECTED_COLUMNS)
        with (
            self._raw.cursor() as cursor,
            cursor.copy(f"COPY sis_rejected_rows ({', '.join(columns)}) FROM STDIN (FORMAT csv)") as copy,
        ):
            copy.write(self._csv(data, columns))

    def refresh_statistics(self, inserted: int) -> bool:
        """ANALYZE the subscriber tables in this transaction when a sync grew them past autovacuum's
        analyze threshold, instead of within autovacuum's next minute: a school's first 1M-row import
        followed soon by its next sync would otherwise have that sync's joins planned without statistics
        (a sequential scan of every membership for a 1% change set). Visible to others at commit."""
        estimate = self._estimated_subscribers()
        if estimate >= 0 and inserted <= ANALYZE_FRACTION * estimate + ANALYZE_BASE_ROWS:
            return False
        with self._raw.cursor() as cursor:
            cursor.execute("ANALYZE subscribers")
            cursor.execute("ANALYZE subscriber_communities")
        return True


#: Autovacuum's analyze threshold (PostgreSQL's defaults): 10% of the table's rows plus 50.
ANALYZE_FRACTION, ANALYZE_BASE_ROWS = 0.1, 50
#: A change set is "few" rows when it is under this fraction of the table (see `update_absent`).
FEW_FRACTION = 0.1

_WRITERS: dict[str, type[BulkWriter]] = {"sqlite": SqliteBulkWriter, "postgresql": PostgresBulkWriter}


def writer_class_for(dialect_name: str) -> type[BulkWriter]:
    """The bulk writer class for a SQLAlchemy dialect name."""
    try:
        return _WRITERS[dialect_name]
    except KeyError:
        raise NotImplementedError(
            f"no bulk path for {dialect_name!r}; the warehouse supports SQLite and PostgreSQL"
        ) from None


def release_malloc_free_memory() -> None:
    """Hand the C allocator's freed memory back to the system (glibc's malloc_trim; a no-op where the C
    library has none)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


def adbc_connect(uri: str):
    """A connection of ADBC's PostgreSQL driver (libpq URI), in autocommit: the caller says BEGIN."""
    import adbc_driver_postgresql.dbapi as adbc  # only the PostgreSQL warehouse needs it

    return adbc.connect(uri, autocommit=True)


def _typed_frame(table: pa.Table) -> pd.DataFrame:
    """A typed Arrow table as the frame the readers return (pandas strings, nullable ints)."""
    return table.to_pandas(types_mapper={pa.string(): pd.StringDtype(), pa.int64(): pd.Int64Dtype()}.get)


def writer_for(conn: sa.Connection) -> BulkWriter:
    """The bulk writer for the connection's database."""
    return writer_class_for(conn.dialect.name)(conn)
