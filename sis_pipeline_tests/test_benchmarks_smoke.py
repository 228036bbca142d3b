"""The benchmark at a tiny size: the generator keeps its promises, the floor leaves the right table, the
runner prints its table, and the production instance config in deploy/ loads. No timing is asserted."""

from __future__ import annotations

import csv
import io
import os
import re
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from benchmarks import floor, generate
from sis_pipeline.columns import normalise_header
from sis_pipeline.registry import parse_registry
from sis_pipeline_tests.conftest import postgres_url_or_skip

ROOT = Path(__file__).resolve().parent.parent
USERS = 4000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")


def _records(path: str) -> list[dict[str, str]]:
    """The file read by Python's own csv module: an independent check of the generator's quoting."""
    with open(path, encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        header = [normalise_header(h) for h in next(reader)]
        return [dict(zip(header, row, strict=True)) for row in reader]


def _identities(records: list[dict[str, str]]) -> tuple[set[str], set[str]]:
    """(identities a correct import applies, every identity present in the file)."""
    counts = Counter(r["email"].strip().lower() for r in records if _EMAIL.match(r["email"].strip()))
    return {k for k, n in counts.items() if n == 1}, set(counts)


@pytest.fixture(scope="module")
def week_files(tmp_path_factory) -> tuple[generate.FileStats, generate.FileStats]:
    return generate.generate_pair(tmp_path_factory.mktemp("files"), USERS)


def test_generator_same_seed_gives_same_bytes(tmp_path):
    first = generate.write_sis_file(tmp_path / "a.csv", 3000, week=2, seed=7)
    second = generate.write_sis_file(tmp_path / "b.csv", 3000, week=2, seed=7)
    other = generate.write_sis_file(tmp_path / "c.csv", 3000, week=2, seed=8)
    assert Path(first.path).read_bytes() == Path(second.path).read_bytes()
    assert Path(first.path).read_bytes() != Path(other.path).read_bytes()


def test_generator_bytes_do_not_depend_on_chunk_size(tmp_path, monkeypatch):
    whole = Path(generate.write_sis_file(tmp_path / "whole.csv", 3000, week=2).path).read_bytes()
    monkeypatch.setattr(generate, "CHUNK_ROWS", 1000)
    chunked = Path(generate.write_sis_file(tmp_path / "chunked.csv", 3000, week=2).path).read_bytes()
    # chunks change where duplicate rows are placed, never which rows exist or what they say
    assert sorted(whole.splitlines()) == sorted(chunked.splitlines())


def test_generated_file_has_promised_proportions_and_shapes(week_files):
    week1, _ = week_files
    records = _records(week1.path)
    assert len(records) == week1.rows
    invalid = sum(1 for r in records if not _EMAIL.match(r["email"].strip()))
    assert invalid == week1.invalid_email_rows
    assert 0.006 <= invalid / len(records) <= 0.014  # ~1%
    counts = Counter(r["email"].strip().lower() for r in records if _EMAIL.match(r["email"].strip()))
    duplicated_rows = sum(n for n in counts.values() if n > 1)
    assert duplicated_rows == week1.duplicate_rows
    assert 0.003 <= duplicated_rows / len(records) <= 0.008  # ~0.5%
    assert {"user_type", "graduation", "program", "affinity", "email_opt_out", "user_id"} <= set(records[0])
    assert any(";" in r["program"] for r in records)
    assert any("," in r["last_name"] for r in records)  # quoted fields with commas
    assert any('"' in r["first_name"] for r in records)  # quotes escaped inside quoted fields
    assert any(not r["first_name"].isascii() for r in records)
    assert any(re.fullmatch(r"\d{4}-\d\d-\d\d", r["graduation"]) for r in records)
    raw = Path(week1.path).read_bytes()
    assert raw.count(b"\r\n") == len(records) + 1  # RFC 4180 line ends: one per record and the header


def test_a_few_quoted_fields_hold_a_line_break():
    text = b"".join(bytes(c) for c in generate.iter_file_chunks(20_000)).decode("utf-8")
    addresses = [r["Address"] for r in csv.DictReader(io.StringIO(text, newline=""))]
    multi_line = sum("\n" in a for a in addresses)
    assert 1 <= multi_line <= 0.002 * len(addresses)  # rare: 0.05% of users


def test_next_week_has_one_percent_gone_and_one_percent_new(week_files):
    week1, week2 = week_files
    ids1 = {r["user_id"] for r in _records(week1.path)}
    ids2 = {r["user_id"] for r in _records(week2.path)}
    gone, new = ids1 - ids2, ids2 - ids1
    assert len(gone) == week2.gone and len(new) == week2.new
    assert 0.006 <= len(gone) / len(ids1) <= 0.014
    assert len(new) == round(USERS * generate.NEW_FRACTION)


def test_benchmark_client_is_a_valid_registry_entry():
    registry = parse_registry(YAML(typ="safe", pure=True).load(generate.clients_yaml(["a", "b"])))
    assert list(registry) == ["a", "b"]
    assert registry["a"].extra_fields["program"].group == "Programs"
    assert generate.benchmark_client_config().identifier == "email"


def _expected_after_two_weeks(week1, week2) -> dict[str, int]:
    applied1, _ = _identities(_records(week1.path))
    applied2, present2 = _identities(_records(week2.path))
    deprovisioned = applied1 - present2
    return {"active": len(applied2), "deprovisioned": len(deprovisioned)}


def test_floor_sqlite_table_after_second_file_holds_the_right_rows(week_files, tmp_path):
    week1, week2 = week_files
    db = tmp_path / "floor.sqlite"
    floor.create_sqlite_table(db)
    first = floor.apply_sqlite(db, week1.path, sync_id=1)
    assert first.inserted == first.rows_valid == week1.valid_rows
    second = floor.apply_sqlite(db, week2.path, sync_id=2)
    assert floor.status_counts_sqlite(db) == _expected_after_two_weeks(week1, week2)
    assert second.inserted == len(_identities(_records(week2.path))[0] - _identities(_records(week1.path))[0])
    again = floor.apply_sqlite(db, week2.path, sync_id=3)
    assert (again.inserted, again.updated, again.deprovisioned) == (0, 0, 0)
    assert again.unchanged == again.rows_valid


def test_floor_postgres_table_after_second_file_holds_the_right_rows(week_files):
    url = postgres_url_or_skip()
    week1, week2 = week_files
    schema = f"sis_test_floor_{uuid.uuid4().hex[:8]}"
    floor.create_postgres_table(url, schema)
    try:
        floor.apply_postgres(url, schema, week1.path, sync_id=1)
        floor.apply_postgres(url, schema, week2.path, sync_id=2)
        assert floor.status_counts_postgres(url, schema) == _expected_after_two_weeks(week1, week2)
        again = floor.apply_postgres(url, schema, week2.path, sync_id=3)
        assert (again.inserted, again.updated, again.deprovisioned) == (0, 0, 0)
    finally:
        floor.drop_postgres_schema(url, schema)


def test_runner_prints_a_table_with_the_floor_and_names_what_is_unavailable(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "SIS_BENCH_POSTGRES_URL"}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--rows", "2000", "--naive-sample", "1000", "--out",
         str(tmp_path), "--cases", "floor_sqlite,floor_postgres,naive_to_sql", "--repeat", "2"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {tuple(c.strip() for c in line.split("|")[1:3]): line for line in proc.stdout.splitlines()}
    assert "| 1.00 | the floor |" in rows[("floor_sqlite", "sqlite")]
    assert "not available: needs --postgres URL" in rows[("floor_postgres", "postgresql")]
    assert "faster" in rows[("naive_to_sql", "sqlite")]
    assert re.search(r"floor_sqlite \(sqlite\): median of 2 runs \([\d.]+–[\d.]+ s\)", proc.stdout)
    assert (tmp_path / "results.json").exists()


def test_repeated_runs_report_the_median_time_and_the_largest_peak():
    from benchmarks.run import CaseResult, _median

    runs = [CaseResult("c", "sqlite", seconds=s, peak_mib=p) for s, p in [(3.0, 10), (1.0, 30), (2.0, 20)]]
    chosen = _median(runs)
    assert (chosen.seconds, chosen.peak_mib) == (2.0, 30)
    assert chosen.note == "median of 3 runs (1.00–3.00 s)"
    assert chosen.detail == {"runs_seconds": [3.0, 1.0, 2.0]}
    failed = CaseResult("c", "sqlite", note="run failed (exit 1)")
    assert _median([runs[0], failed]) is failed


# ---------------------------------------------------------------------------------------------------------
# deploy/: the production instance and workspace


@pytest.fixture
def scratch_dagster_database():
    """A PostgreSQL database for Dagster's own storage, created and dropped around one test."""
    import psycopg

    url = postgres_url_or_skip()
    name = f"sis_dagster_scratch_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield url, name
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_production_instance_stores_runs_in_postgres_and_limits_one_run_per_client(
    scratch_dagster_database, tmp_path, monkeypatch
):
    from urllib.parse import urlsplit

    from dagster import DagsterInstance

    url, database = scratch_dagster_database
    parts = urlsplit(url)
    (tmp_path / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    for name, value in {
        "DAGSTER_HOME": str(tmp_path),
        "DAGSTER_PG_HOST": parts.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USERNAME": parts.username or "postgres",
        "DAGSTER_PG_PASSWORD": parts.password or "",
        "SIS_PIPELINE_IMAGE": "sis-pipeline:test",
        "SIS_DOCKER_NETWORK": "sis",
        "DAGSTER_COMPUTE_LOG_BUCKET": "sis-dagster-logs",
    }.items():
        monkeypatch.setenv(name, value)
    instance = DagsterInstance.get()
    try:
        storages = {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage)}
        assert storages == {"PostgresRunStorage", "PostgresEventLogStorage"}
        assert type(instance.schedule_storage).__name__ == "PostgresScheduleStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        concurrency = instance.get_concurrency_config()
        assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
            concurrency.run_queue_config.tag_concurrency_limits
        )
        assert concurrency.pool_config.default_pool_limit >= 1
        launcher = instance.get_ref().run_launcher_data
        assert (launcher.module_name, launcher.class_name) == ("dagster_docker", "DockerRunLauncher")
        assert not instance.telemetry_enabled
        assert instance.get_runs_count() == 0  # the tables exist in the scratch database
    finally:
        instance.dispose()


def test_production_workspace_reaches_the_code_server_named_by_the_environment(monkeypatch):
    from dagster._core.workspace.load import location_origins_from_yaml_paths

    monkeypatch.setenv("SIS_CODE_SERVER_HOST", "sis-code-server")
    monkeypatch.setenv("SIS_CODE_SERVER_PORT", "4266")
    [origin] = location_origins_from_yaml_paths([str(ROOT / "deploy" / "workspace.yaml")])
    assert (origin.host, origin.port, origin.location_name) == ("sis-code-server", 4266, "sis_pipeline")


def _production_env(home: Path, url: str, database: str) -> dict[str, str]:
    """The variables deploy/dagster.yaml reads, pointed at a scratch database; `home` gets the file."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text((ROOT / "deploy" / "dagster.yaml").read_text())
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": parts.hostname or "127.0.0.1",
        "DAGSTER_PG_PORT": str(parts.port or 5432),
        "DAGSTER_PG_DB": database,
        "DAGSTER_PG_USERNAME": parts.username or "postgres",
        "DAGSTER_PG_PASSWORD": parts.password or "",
        "SIS_PIPELINE_IMAGE": "sis-pipeline:test",
        "SIS_DOCKER_NETWORK": "sis",
        "DAGSTER_COMPUTE_LOG_BUCKET": "sis-dagster-logs",
    }


def test_sync_on_the_production_instance_records_runs_and_sync_log_in_postgres(
    scratch_dagster_database, postgres_schema_url, s3_client, s3_endpoint, unique_bucket, tmp_path
):
    import psycopg
    import sqlalchemy as sa

    url, database = scratch_dagster_database
    registry = tmp_path / "clients.yaml"
    entry = generate.benchmark_client_entry(bucket=unique_bucket)
    registry.write_text(_yaml_text({"clients": {"22": entry}}))
    s3_client.create_bucket(Bucket=unique_bucket)
    s3_client.put_bucket_versioning(Bucket=unique_bucket, VersioningConfiguration={"Status": "Enabled"})
    roster = generate.write_sis_file(tmp_path / "roster.csv", 300)
    s3_client.upload_file(roster.path, unique_bucket, "student_feed.csv")
    s3_client.create_bucket(Bucket="sis-dagster-logs")  # step logs go to S3 in production
    env = {
        **os.environ,
        **_production_env(tmp_path / "dagster_home", url, database),
        "AWS_ENDPOINT_URL_S3": s3_endpoint,  # boto3 reads it: the compute-log manager talks to moto
        "SIS_CLIENTS_FILE": str(registry),
        "SIS_WAREHOUSE_URL": postgres_schema_url,
    }
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("sis-pipeline")), "sync", "--client", "22"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with psycopg.connect(url, dbname=database) as conn:
        runs = conn.execute("SELECT status FROM runs").fetchall()
    assert runs == [("SUCCESS",)]
    engine = sa.create_engine(postgres_schema_url)
    with engine.connect() as conn:
        log = conn.execute(
            sa.text("SELECT status, rows_valid FROM sis_sync_log WHERE client_id = '22'")
        ).all()
    engine.dispose()
    assert log == [("applied", roster.valid_rows)]


def _yaml_text(document: dict) -> str:
    buffer = io.StringIO()
    YAML(typ="safe", pure=True).dump(document, buffer)
    return buffer.getvalue()


def _result(case, database, seconds, rows=1_002_232):
    """A measured case as the runner records it, for judging."""
    from benchmarks import run

    return run.CaseResult(
        case=case,
        database=database,
        target=run.CASES[case].target,
        rows=rows,
        seconds=seconds,
        peak_mib=900.0,
    )


def test_seconds_targets_are_also_shown_at_the_issue_machine_s_speed():
    from benchmarks import run

    results = [
        _result("floor_sqlite", "sqlite", 15.0),
        _result("validate_cli", "-", 5.0),  # 2.5 s at twice the speed
        _result("sensor_sqs_1000", "-", 1.5, rows=1000),
        _result("dagster_full_run", "sqlite", 21.0),  # a ratio target: never scaled
        _result("weekly_1000_clients", "sqlite", 900.0, rows=1_000_000),  # other files: no ratio
    ]
    run._judge(results)
    run._judge(results)  # the runner judges the table again after every case: nothing is said twice
    validate, sqs, full = results[1], results[2], results[3]
    table = run.markdown_table(results)
    assert validate.met == "**no** (yes at that speed)"
    assert table.count("≈ 2.50 s at the issue machine's speed") == 1
    assert sqs.met == "yes" and "≈ 0.75 s" in table
    assert full.met == "yes" and "dagster_full_run (sqlite): ≈" not in table
    assert full.ratio == 21.0 / 15.0 and results[4].ratio is None
    small = [
        _result("floor_sqlite", "sqlite", 1.5, rows=10_000),
        _result("validate_cli", "-", 5.0, rows=10_000),
    ]
    run._judge(small)
    assert small[1].met == "**no**" and "issue machine" not in run.markdown_table(small)


def test_a_ratio_target_without_its_floor_in_the_run_is_not_judged():
    from benchmarks import run

    results = [
        _result("floor_sqlite", "sqlite", 10.0),
        _result("dagster_full_run", "sqlite", 16.0),
        _result("dagster_full_run", "postgresql", 12.0),
    ]
    run._judge(results)
    assert results[1].met == "**no**"  # 1.6x its floor
    assert results[2].ratio is None and results[2].met == "n/a (no floor in this run)"
