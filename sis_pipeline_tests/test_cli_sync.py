"""`sis-pipeline sync`, `log` and `demo` through the installed console script (PRODUCT.md §8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sis_pipeline_tests.orchestration_support import roster_csv

SCRIPT = str(Path(sys.executable).with_name("sis-pipeline"))


def _cli(args, env, cwd=None, timeout=300):
    return subprocess.run([SCRIPT, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cli_env(harness, tmp_path):
    env = {
        **os.environ,
        "SIS_CLIENTS_FILE": str(harness.registry_path),
        "SIS_DATA_DIR": str(tmp_path / "data"),
        "SIS_S3_ENDPOINT_URL": harness.endpoint,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    return env


def test_sync_runs_are_recorded_in_the_instance_and_exit_0(harness, cli_env):
    harness.add_client("22")
    harness.add_client("57", auto_sync_enabled=False)
    harness.upload("22", roster_csv(8))
    harness.upload("57", roster_csv(4))
    result = _cli(["sync", "--all"], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "applied" in result.stdout and "preview" in result.stdout
    from dagster import DagsterInstance

    os.environ["DAGSTER_HOME"] = cli_env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            runs = instance.get_runs()
    finally:
        os.environ.pop("DAGSTER_HOME")
    assert sorted(r.tags["dagster/partition"] for r in runs) == ["22", "57"]


def test_sync_process_closes_the_warehouse_so_no_write_ahead_log_is_left_behind(harness, cli_env, tmp_path):
    harness.add_client("22")
    harness.upload("22", roster_csv(300))
    result = _cli(["sync", "--client", "22"], cli_env)
    assert result.returncode == 0, result.stdout + result.stderr
    databases = list((tmp_path / "data").rglob("*.sqlite"))
    assert [p.name for p in databases] == ["warehouse.sqlite"]
    # The last connection closed: SQLite checkpointed the log into the database and deleted it, so the next
    # process does not have to scan it before its first read.
    assert not databases[0].with_name("warehouse.sqlite-wal").exists()


def test_sync_exits_1_when_a_client_is_ignored(harness, cli_env):
    harness.add_client("22")
    harness.upload("22", b"first_name,last_name\r\nAna,Lopez\r\n")
    result = _cli(["sync", "--client", "22"], cli_env)
    assert result.returncode == 1
    assert "ignored" in result.stdout


def test_sync_exits_2_for_an_unknown_client(harness, cli_env):
    harness.add_client("22", create_bucket=False)
    result = _cli(["sync", "--client", "nope"], cli_env)
    assert result.returncode == 2
    assert "unknown client" in result.stderr


def test_sync_force_and_log(harness, cli_env):
    harness.add_client("22")
    harness.upload("22", roster_csv(8))
    assert _cli(["sync", "--client", "22"], cli_env).returncode == 0
    again = _cli(["sync", "--client", "22"], cli_env)
    assert again.returncode == 0 and "unchanged" in again.stdout
    forced = _cli(["sync", "--client", "22", "--force"], cli_env)
    assert forced.returncode == 0
    log = _cli(["log", "--client", "22"], cli_env)
    assert log.returncode == 0
    statuses = [
        line.split()[2] for line in log.stdout.splitlines() if line.split() and line.split()[0].isdigit()
    ]
    assert statuses == ["applied", "unchanged", "applied"]


@pytest.mark.slow
def test_demo_runs_green_on_a_fresh_folder(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIS_", "DAGSTER_HOME"))}
    result = _cli(["demo", "--dir", str(tmp_path / "demo")], env, cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "dagster dev" in result.stdout
    for status in ("applied", "preview"):
        assert status in result.stdout
    assert (tmp_path / "demo" / "data" / "warehouse.sqlite").exists()
