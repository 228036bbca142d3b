"""Benchmark cases: each module has `prepare(ctx)` (not measured) and `run(ctx) -> dict` (measured).

Optional hooks: `check_available(ctx)` (cheap, in the runner, before any process starts), `before_run(ctx)`
(in the measured process, before the clock starts: imports, environment) and `cleanup(ctx)`. `run` returns
`rows`, and may return `scale` (the time is multiplied by it: extrapolation), `note` and `detail`.

The runner executes `prepare` and `run` in separate fresh processes, so a case's peak memory is its own
and one case's caches never help another. A case that cannot run here (a module of the pipeline not written
yet, no PostgreSQL URL) raises `CaseUnavailable` with the reason; the table shows it as not available.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from benchmarks.generate import DEFAULT_SEED, FileStats, generate_pair


class CaseUnavailable(Exception):
    """The case cannot run in this checkout or environment; the message says what it needs."""


@dataclass(frozen=True)
class CaseSpec:
    """A case as the table shows it. `target_ratio` is against the floor of the same database."""

    name: str
    module: str
    databases: tuple[str, ...]  # "sqlite", "postgresql", or ("-",) when no warehouse is involved
    target: str  # as printed
    target_ratio: float | None = None
    target_seconds: float | None = None
    target_peak_mib: float | None = None
    needs_s3: bool = False


CASES: dict[str, CaseSpec] = {
    spec.name: spec
    for spec in (
        CaseSpec("floor_sqlite", "benchmarks.cases.floor_case", ("sqlite",), "the floor"),
        CaseSpec("floor_postgres", "benchmarks.cases.floor_case", ("postgresql",), "the floor"),
        CaseSpec("naive_to_sql", "benchmarks.cases.naive_to_sql", ("sqlite", "postgresql"), "comparison"),
        CaseSpec(
            "dagster_full_run",
            "benchmarks.cases.dagster_runs",
            ("sqlite", "postgresql"),
            "≤ 1.5× floor, ≤ 2 GiB",
            target_ratio=1.5,
            target_peak_mib=2048,
            needs_s3=True,
        ),
        CaseSpec(
            "unchanged_rerun",
            "benchmarks.cases.dagster_runs",
            ("sqlite", "postgresql"),
            "≤ 2 s",
            target_seconds=2.0,
            needs_s3=True,
        ),
        CaseSpec(
            "forced_reapply",
            "benchmarks.cases.dagster_runs",
            ("sqlite", "postgresql"),
            "≤ 1.2× floor",
            target_ratio=1.2,
            needs_s3=True,
        ),
        CaseSpec("validate_cli", "benchmarks.cases.validate_cli", ("-",), "≤ 3 s", target_seconds=3.0),
        CaseSpec(
            "weekly_1000_clients",
            "benchmarks.cases.many_clients",
            ("sqlite", "postgresql"),
            "≤ 600 s",
            target_seconds=600.0,
            needs_s3=True,
        ),
        CaseSpec(
            "sensor_poll_1000",
            "benchmarks.cases.many_clients",
            ("-",),
            "≤ 10 s",
            target_seconds=10.0,
            needs_s3=True,
        ),
        CaseSpec(
            "sensor_sqs_1000",
            "benchmarks.cases.many_clients",
            ("-",),
            "≤ 2 s",
            target_seconds=2.0,
            needs_s3=True,
        ),
    )
}


@dataclass
class BenchContext:
    """Everything a case needs, passed to its processes as JSON."""

    case: str
    database: str  # "sqlite", "postgresql" or "-"
    rows: int
    clients: int
    rows_per_client: int
    out_dir: str
    work_dir: str  # this case's own scratch folder
    seed: int = DEFAULT_SEED
    postgres_url: str | None = None
    s3_endpoint: str | None = None
    naive_sample_rows: int = 100_000
    timeout: float = 1800.0  # seconds each phase may take before it is reported as timed out
    profile: bool = False  # record a pyinstrument profile of the measured phase (profiles/<case>_<db>.*)
    memory: bool = False  # sample the measured phase's memory (profiles/<case>_<db>_memory.txt)
    env: dict[str, str] = field(default_factory=dict)

    def files(self) -> tuple[FileStats, FileStats]:
        """This week's and next week's files at `rows` users (generated once per out dir)."""
        return generate_pair(Path(self.out_dir) / "files", self.rows, self.seed)

    @property
    def schema(self) -> str:
        """The scratch PostgreSQL schema of this case."""
        return f"sis_bench_{Path(self.work_dir).name}".lower()

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> BenchContext:
        return cls(**json.loads(text))


def require_postgres(ctx: BenchContext) -> str:
    """The PostgreSQL URL, or CaseUnavailable when the run was not given one."""
    if not ctx.postgres_url:
        raise CaseUnavailable("needs --postgres URL")
    return ctx.postgres_url
