"""Deterministic generator of realistic SIS roster files ("this week" and "next week").

Every attribute of a user is a pure function of (seed, user id, attribute), computed with a counter-based
hash over numpy arrays and assembled into CSV lines with pyarrow compute kernels, so the same seed gives
the same bytes whatever the chunking, 1M rows take a few seconds, and week 2 repeats week 1's users exactly
except for the ones deliberately gone, new or changed.

What a file holds (proportions are per user unless said otherwise):
- headers as schools write them ("First Name", "Student ID", ...), normalised by the pipeline;
- unicode names, names with commas ("Smith, Jr.") and quotes (`Robert "Bob"`), so fields are quoted;
- ~1% invalid or blank emails (`INVALID_EMAIL_FRACTION`), a few mixed-case domains;
- ~0.25% of users appear twice, the second row with the email upper-cased, so ~0.5% of rows share an
  identity with another row (`duplicate_rows`);
- `User Type` (Student/Faculty/Staff/Alumni, some with stray case and spaces), graduation years with some
  ISO, `M/D/YYYY` and date-time dates and a few unusable values;
- `;`-separated extra fields `Program` and `Affinity`; an unmapped `Address` column with commas and, rarely,
  a line break inside the quoted field;
- next week (`week=2`): 1% of users gone, 1% new (appended), 0.5% with a changed user type and program.
"""

from __future__ import annotations

import argparse
import json
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from sis_pipeline.registry import ClientConfig

DEFAULT_SEED = 20240601
CHUNK_ROWS = 1 << 18  # users per chunk; bounds memory, does not change the bytes

INVALID_EMAIL_FRACTION = 0.01
DUPLICATE_USER_FRACTION = 0.0025  # each such user has two rows, so ~0.5% of rows are duplicates
GONE_FRACTION = 0.01
NEW_FRACTION = 0.01
CHANGED_FRACTION = 0.005
MULTILINE_FRACTION = 0.0005

HEADER = (
    "First Name",
    "Last Name",
    "Email",
    "Student ID",
    "User Login",
    "User Type",
    "Graduation Year",
    "Email Opt Out",
    "Program",
    "Affinity",
    "Address",
)

# (as written in the SIS, ASCII fold used in emails and logins)
FIRST_NAMES = (
    ("Emily", "emily"), ("Liam", "liam"), ("Olivia", "olivia"), ("Noah", "noah"), ("Ava", "ava"),
    ("José", "jose"), ("Zoë", "zoe"), ("Søren", "soren"), ("François", "francois"), ("Chloé", "chloe"),
    ("Łukasz", "lukasz"), ("Sofía", "sofia"), ("Yūki", "yuki"), ("Anaïs", "anais"), ("Björn", "bjorn"),
    ("Ngozi", "ngozi"), ("Aarav", "aarav"), ("Mei", "mei"), ("Fatima", "fatima"), ("Mohammed", "mohammed"),
    ("Ji-woo", "jiwoo"), ("Siobhán", "siobhan"), ("Dmitrii", "dmitrii"), ("娜", "na"), ("Robert \"Bob\"", "robert"),
    ("Mary Ann", "maryann"), ("Ólafur", "olafur"), ("Priya", "priya"), ("Kwame", "kwame"), ("Hannah", "hannah"),
)  # fmt: skip
LAST_NAMES = (
    ("Smith", "smith"), ("Johnson", "johnson"), ("Williams", "williams"), ("Brown", "brown"), ("Jones", "jones"),
    ("García", "garcia"), ("Müller", "muller"), ("O'Brien", "obrien"), ("Nguyễn", "nguyen"), ("Kowalski", "kowalski"),
    ("van der Berg", "vanderberg"), ("Østergaard", "ostergaard"), ("Dubois", "dubois"), ("Patel", "patel"),
    ("Kim", "kim"), ("Smith, Jr.", "smith"), ("Johnson, III", "johnson"), ("Álvarez", "alvarez"),
    ("Şahin", "sahin"), ("王", "wang"), ("Иванов", "ivanov"), ("Brown-Smith", "brownsmith"), ("Okafor", "okafor"),
    ("Tanaka", "tanaka"), ("Lefèvre", "lefevre"), ("Ødegård", "odegard"), ("Rossi", "rossi"), ("Cohen", "cohen"),
)  # fmt: skip
DOMAINS = ("school.edu", "students.school.edu", "gmail.com", "Alumni.School.EDU")
DOMAIN_WEIGHTS = (0.80, 0.12, 0.05, 0.03)
USER_TYPES = ("Student", "Faculty", "Staff", "Alumni", "student ", "STAFF")
USER_TYPE_WEIGHTS = (0.70, 0.10, 0.09, 0.08, 0.02, 0.01)
PROGRAMS = (
    "Biology", "Chemistry", "Computer Science", "Economics", "History", "Mathematics", "Music", "Nursing",
    "Physics", "Psychology", "Undeclared", "Exchange",
)  # fmt: skip
AFFINITIES = ("Athletics", "Alumni Association", "Greek Life", "Honors", "International", "Veterans")
STREETS = ("Main St", "Oak Ave", "Maple Rd", "Cedar Ln", "Elm St", "Washington Blvd", "Rue de l'Église")
OPT_OUT_VALUES = ("", "no", "yes", "TRUE", "1")
OPT_OUT_WEIGHTS = (0.95, 0.02, 0.01, 0.01, 0.01)

_MULT = np.uint64(0x9E3779B97F4A7C15)


# ---------------------------------------------------------------------------------------------------------
# counter-based randomness: attribute = f(seed, user id, salt), independent of chunking and of other users


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser over a uint64 array (wrapping arithmetic is the point)."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _hash(seed: int, ids: np.ndarray, salt: str) -> np.ndarray:
    key = np.uint64((seed * 0x100000001B3 + zlib.crc32(salt.encode())) & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        return _mix(_mix(ids.astype(np.uint64) * _MULT ^ key) + key)


def _uniform(seed: int, ids: np.ndarray, salt: str) -> np.ndarray:
    """A float in [0, 1) per id."""
    return (_hash(seed, ids, salt) >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _pick(seed: int, ids: np.ndarray, salt: str, n: int) -> np.ndarray:
    return (_hash(seed, ids, salt) % np.uint64(n)).astype(np.int64)


def _weighted(seed: int, ids: np.ndarray, salt: str, weights: tuple[float, ...]) -> np.ndarray:
    cumulative = np.cumsum(weights)
    return np.minimum(np.searchsorted(cumulative / cumulative[-1], _uniform(seed, ids, salt), side="right"),
                      len(weights) - 1)  # fmt: skip


def _take(values: tuple[str, ...], index: np.ndarray) -> pa.Array:
    return pa.array(values, pa.string()).take(pa.array(index))


def _digits(values: np.ndarray, width: int = 0) -> pa.Array:
    text = pc.cast(pa.array(values), pa.string())
    return pc.utf8_lpad(text, width=width, padding="0") if width else text


def _join(*parts: pa.Array | str) -> pa.Array:
    return pc.binary_join_element_wise(*[pa.scalar(p) if isinstance(p, str) else p for p in parts], "")


# ---------------------------------------------------------------------------------------------------------
# who is in which file


def invalid_email_mask(ids: np.ndarray, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Users whose email is blank or malformed in every file."""
    return _uniform(seed, ids, "invalid_email") < INVALID_EMAIL_FRACTION


def duplicate_mask(ids: np.ndarray, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Users (with a valid email) written twice, the second time with the email upper-cased."""
    return (_uniform(seed, ids, "duplicate") < DUPLICATE_USER_FRACTION) & ~invalid_email_mask(ids, seed)


def gone_mask(ids: np.ndarray, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Week-1 users absent from week 2."""
    return _uniform(seed, ids, "gone") < GONE_FRACTION


def changed_mask(ids: np.ndarray, seed: int = DEFAULT_SEED) -> np.ndarray:
    """Users whose user type and program differ in week 2."""
    return _uniform(seed, ids, "changed") < CHANGED_FRACTION


def week_user_ids(users: int, week: int = 1, seed: int = DEFAULT_SEED) -> np.ndarray:
    """User ids in file order: week 1 is 0..users-1; week 2 drops the gone and appends 1% new ids."""
    ids = np.arange(users, dtype=np.int64)
    if week == 1:
        return ids
    if week != 2:
        raise ValueError("week must be 1 or 2")
    new = np.arange(users, users + round(users * NEW_FRACTION), dtype=np.int64)
    return np.concatenate([ids[~gone_mask(ids, seed)], new])


# ---------------------------------------------------------------------------------------------------------
# columns


def _quoted(column: pa.Array) -> pa.Array:
    """RFC 4180: quote a field holding a comma, quote or line break; double its quotes."""
    needs = pc.match_substring_regex(column, '[",\r\n]')
    escaped = _join('"', pc.replace_substring(column, '"', '""'), '"')
    return pc.if_else(needs, escaped, column)


def _email(seed: int, ids: np.ndarray, first_ascii: pa.Array, last_ascii: pa.Array) -> pa.Array:
    domain = _take(DOMAINS, _weighted(seed, ids, "domain", DOMAIN_WEIGHTS))
    local = _join(first_ascii, ".", last_ascii, _digits(ids))
    email = _join(local, "@", domain)
    invalid = invalid_email_mask(ids, seed)
    if invalid.any():
        kind = _pick(seed, ids[invalid], "invalid_kind", 5)
        bad_local, bad_domain = local.filter(pa.array(invalid)), domain.filter(pa.array(invalid))
        variants = [
            pa.array([""] * int(invalid.sum()), pa.string()),  # blank
            _join(bad_local, bad_domain),  # no @
            _join(bad_local, "@@", bad_domain),  # two @
            _join(bad_local, "@"),  # no domain
            _join(pc.replace_substring(bad_local, ".", " ", max_replacements=1), "@", bad_domain),  # a space
        ]
        bad = variants[0]
        for k, variant in enumerate(variants[1:], start=1):
            bad = pc.if_else(pa.array(kind == k), variant, bad)
        email = pc.replace_with_mask(email, pa.array(invalid), bad)
    return email


def _graduation(seed: int, ids: np.ndarray, user_type: np.ndarray) -> pa.Array:
    year = 2024 + _pick(seed, ids, "grad_year", 8)
    month = 1 + _pick(seed, ids, "grad_month", 12)
    day = 1 + _pick(seed, ids, "grad_day", 28)
    years, months, days = _digits(year), _digits(month, 2), _digits(day, 2)
    iso = _join(years, "-", months, "-", days)
    us = _join(_digits(month), "/", _digits(day), "/", years)
    kind = _weighted(seed, ids, "grad_kind", (0.90, 0.05, 0.04, 0.005, 0.005))
    text = pc.if_else(pa.array(kind == 1), iso, years)
    text = pc.if_else(pa.array(kind == 2), us, text)
    text = pc.if_else(pa.array(kind == 3), _join(iso, " 00:00:00"), text)
    text = pc.if_else(pa.array(kind == 4), pa.scalar("TBD"), text)
    has_year = np.isin(user_type, [0, 3, 4])  # students and alumni
    return pc.if_else(pa.array(has_year), text, pa.scalar(""))


def _multi_value(seed: int, ids: np.ndarray, salt: str, values: tuple[str, ...], counts: tuple[float, ...]):
    """0..len(counts)-1 distinct-ish values joined by ';' (some with spaces around the ';')."""
    how_many = _weighted(seed, ids, f"{salt}_n", counts)
    picks = [_take(values, _pick(seed, ids, f"{salt}_{i}", len(values))) for i in range(len(counts) - 1)]
    separator = pc.if_else(
        pa.array(_uniform(seed, ids, f"{salt}_sep") < 0.05), pa.scalar(" ; "), pa.scalar(";")
    )
    text = pa.array([""] * len(ids), pa.string())
    joined = picks[0]
    for n, pick in enumerate(picks, start=1):
        if n > 1:
            joined = _join(joined, separator, pick)
        text = pc.if_else(pa.array(how_many == n), joined, text)
    return text


def _address(seed: int, ids: np.ndarray) -> pa.Array:
    street = _join(
        _digits(1 + _pick(seed, ids, "house", 9999)), " ", _take(STREETS, _pick(seed, ids, "street", 7))
    )
    apartment = _digits(1 + _pick(seed, ids, "apt", 40))
    kind = _weighted(seed, ids, "address_kind", (1 - 0.30 - MULTILINE_FRACTION, 0.30, MULTILINE_FRACTION))
    text = pc.if_else(pa.array(kind == 1), _join(street, ", Apt ", apartment), street)
    return pc.if_else(pa.array(kind == 2), _join(street, "\nApt ", apartment), text)


def _columns(ids: np.ndarray, week: int, seed: int) -> list[pa.Array]:
    """The file's columns (HEADER order), unquoted, one entry per user id."""
    # a changed user draws its week-2 type and program from another stream
    epoch = (changed_mask(ids, seed) & (week == 2)).astype(np.int64) << 40
    first = _pick(seed, ids, "first", len(FIRST_NAMES))
    last = _pick(seed, ids, "last", len(LAST_NAMES))
    first_ascii = _take(tuple(a for _, a in FIRST_NAMES), first)
    last_ascii = _take(tuple(a for _, a in LAST_NAMES), last)
    user_type = _weighted(seed, ids + epoch, "user_type", USER_TYPE_WEIGHTS)
    return [
        _take(tuple(n for n, _ in FIRST_NAMES), first),
        _take(tuple(n for n, _ in LAST_NAMES), last),
        _email(seed, ids, first_ascii, last_ascii),
        _join("S", _digits(ids, 7)),
        _join(first_ascii, ".", last_ascii, _digits(ids)),
        _take(USER_TYPES, user_type),
        _graduation(seed, ids, user_type),
        _take(OPT_OUT_VALUES, _weighted(seed, ids, "opt_out", OPT_OUT_WEIGHTS)),
        _multi_value(seed, ids + epoch, "program", PROGRAMS, (0.05, 0.70, 0.20, 0.05)),
        _multi_value(seed, ids, "affinity", AFFINITIES, (0.40, 0.45, 0.15)),
        _address(seed, ids),
    ]


def _csv_body(columns: list[pa.Array], line_ending: str) -> pa.Buffer:
    """Join quoted columns into lines and return the bytes of all lines, without copying them again."""
    lines = _join(pc.binary_join_element_wise(*[_quoted(c) for c in columns], ","), line_ending)
    lines = pa.concat_arrays([lines]) if lines.offset else lines
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)
    return lines.buffers()[2].slice(int(offsets[0]), int(offsets[len(lines)] - offsets[0]))


def iter_file_chunks(
    users: int, week: int = 1, seed: int = DEFAULT_SEED, line_ending: str = "\r\n"
) -> Iterator[pa.Buffer]:
    """The file's bytes (header first) in chunks; each chunk's duplicate rows follow its own users."""
    yield pa.py_buffer((",".join(HEADER) + line_ending).encode())
    ids_all = week_user_ids(users, week, seed)
    for start in range(0, len(ids_all), CHUNK_ROWS):
        ids = ids_all[start : start + CHUNK_ROWS]
        columns = _columns(ids, week, seed)
        dup = duplicate_mask(ids, seed)
        if dup.any():
            dup_mask = pa.array(dup)
            extra = [c.filter(dup_mask) for c in columns]
            extra[2] = pc.utf8_upper(extra[2])  # same identity, compared case-insensitively
            columns = [pa.concat_arrays([c, e]) for c, e in zip(columns, extra, strict=True)]
        yield _csv_body(columns, line_ending)


@dataclass(frozen=True)
class FileStats:
    """What a generated file holds, for the benchmark table and the smoke test's expectations."""

    path: str
    week: int
    seed: int
    users: int  # distinct users (ids) in the file
    rows: int  # data records
    bytes: int
    invalid_email_rows: int
    duplicate_rows: int  # rows whose identity appears on another row too (all of them are rejected)
    valid_rows: int  # rows a correct import applies
    gone: int  # week-1 users absent (week 2 only)
    new: int  # users not in week 1 (week 2 only)
    changed: int  # continuing users with a changed user type / program (week 2 only)


def file_stats(
    users: int, week: int = 1, seed: int = DEFAULT_SEED, path: str = "", size: int = 0
) -> FileStats:
    """The counts of a file, computed from the same masks the generator uses (no file needed)."""
    ids = week_user_ids(users, week, seed)
    invalid, dup = invalid_email_mask(ids, seed), duplicate_mask(ids, seed)
    week1 = np.arange(users, dtype=np.int64)
    continuing = ids[ids < users]
    return FileStats(
        path=path,
        week=week,
        seed=seed,
        users=len(ids),
        rows=len(ids) + int(dup.sum()),
        bytes=size,
        invalid_email_rows=int(invalid.sum()),
        duplicate_rows=2 * int(dup.sum()),
        valid_rows=int((~invalid & ~dup).sum()),
        gone=0 if week == 1 else int(gone_mask(week1, seed).sum()),
        new=0 if week == 1 else int((ids >= users).sum()),
        changed=0 if week == 1 else int(changed_mask(continuing, seed).sum()),
    )


def write_sis_file(
    path: str | Path, users: int, week: int = 1, seed: int = DEFAULT_SEED, line_ending: str = "\r\n"
) -> FileStats:
    """Write one roster file of `users` users (plus their duplicate rows) and return what it holds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = 0
    with path.open("wb") as out:
        for chunk in iter_file_chunks(users, week, seed, line_ending):
            out.write(chunk)
            size += chunk.size
    return file_stats(users, week, seed, str(path), size)


def generate_pair(out_dir: str | Path, users: int, seed: int = DEFAULT_SEED) -> tuple[FileStats, FileStats]:
    """This week's and next week's files under `out_dir`, reused when already generated with the same args."""
    out_dir = Path(out_dir)
    result = []
    for week in (1, 2):
        path = out_dir / f"sis_{users}_seed{seed}_week{week}.csv"
        meta = path.with_suffix(".json")
        if path.exists() and meta.exists():
            result.append(FileStats(**json.loads(meta.read_text())))
            continue
        stats = write_sis_file(path, users, week, seed)
        meta.write_text(json.dumps(asdict(stats)))
        result.append(stats)
    return result[0], result[1]


# ---------------------------------------------------------------------------------------------------------
# the benchmark client


def benchmark_client_entry(bucket: str = "sis-bench", key: str = "student_feed.csv") -> dict:
    """The registry settings (clients.yaml mapping value) of a client receiving generated files."""
    return {
        "name": "Benchmark University",
        "bucket": bucket,
        "key": key,
        "sync": "weekly",
        "auto_sync_enabled": True,
        "identifier": "email",
        "auto_deprovision": True,
        "guard": {"max_fraction": 0.05},
        "user_types": {"Student": "Students", "Faculty": "Faculty", "Staff": "Staff", "Alumni": "Alumni"},
        "extra_fields": {
            "Program": {
                "group": "Programs",
                "values": {p: p for p in PROGRAMS if p != "Exchange"},  # "Exchange" stays unmapped: warnings
            },
            "Affinity": {"group": "Affinities", "values": {a: a for a in AFFINITIES}},
        },
    }


def benchmark_client_config(client_id: str = "bench", bucket: str = "sis-bench") -> ClientConfig:
    """The benchmark client as a validated ClientConfig."""
    return ClientConfig(id=client_id, **benchmark_client_entry(bucket))


def clients_yaml(client_ids: list[str], bucket_prefix: str = "sis-bench") -> str:
    """A clients.yaml document with one benchmark client per id, each in its own bucket."""
    from io import StringIO

    from ruamel.yaml import YAML

    document = {
        "clients": {cid: benchmark_client_entry(f"{bucket_prefix}-{cid}".lower()) for cid in client_ids}
    }
    buffer = StringIO()
    YAML(typ="safe", pure=True).dump(document, buffer)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", help="output CSV path")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--week", type=int, choices=(1, 2), default=1)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    print(json.dumps(asdict(write_sis_file(args.out, args.users, args.week, args.seed)), indent=2))


if __name__ == "__main__":
    main()
