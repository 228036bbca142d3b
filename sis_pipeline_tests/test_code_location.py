"""The code location as users load it: `dagster definitions validate`, and the webserver's GraphQL API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(tmp_path: Path, registry_text: str | None = None) -> dict[str, str]:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
        "SIS_DATA_DIR": str(tmp_path / "data"),
    }
    (tmp_path / "dagster_home").mkdir(exist_ok=True)
    (tmp_path / "dagster_home" / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    if registry_text is not None:
        (tmp_path / "clients.yaml").write_text(registry_text, encoding="utf-8")
        env["SIS_CLIENTS_FILE"] = str(tmp_path / "clients.yaml")
    env.pop("SIS_S3_ENDPOINT_URL", None)  # an unset endpoint must not break loading
    return env


def test_dagster_definitions_validate_passes_with_the_shipped_registry(tmp_path):
    env = _env(tmp_path)
    env.pop("SIS_CLIENTS_FILE", None)
    result = subprocess.run(
        [str(BIN / "dagster"), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Dagster's notice that this command is superseded by `dg check defs` is about the CLI, not our code.
    lines = (result.stdout + result.stderr).lower().splitlines()
    warnings = [line for line in lines if "warn" in line and "supersessionwarning" not in line]
    assert warnings == []


def test_root_dagster_yaml_is_the_packaged_instance_config():
    packaged = ROOT / "sis_pipeline" / "instance" / "dagster.yaml"
    assert (ROOT / "dagster.yaml").read_text() == packaged.read_text()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


REPOSITORY_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    name
    assetNodes { assetKey { path } assetChecksOrError { ... on AssetChecks { checks { name } } } }
    sensors { name }
    schedules { name cronSchedule }
    partitionSets { name }
} } } }
"""


@pytest.mark.slow
def test_webserver_serves_assets_checks_sensor_and_schedules(tmp_path):
    registry = 'clients:\n  "22": {name: Springfield, bucket: sis-smoke-22}\n  "41": {name: Shelbyville, bucket: sis-smoke-41}\n'
    port = _free_port()
    server = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=_env(tmp_path, registry),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            try:
                data = _graphql(port, REPOSITORY_QUERY)
                nodes = data["data"]["repositoriesOrError"]["nodes"]
                if nodes and nodes[0]["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1)
        assert server.poll() is None, server.stderr.read()
        repository = data["data"]["repositoriesOrError"]["nodes"][0]
        assets = {"/".join(n["assetKey"]["path"]): n for n in repository["assetNodes"]}
        assert set(assets) == {
            "raw_sis_file",
            "validated_sis_frame",
            "mapped_subscribers",
            "deprovision_set",
            "subscribers_table",
        }
        checks = {c["name"] for n in assets.values() for c in n["assetChecksOrError"]["checks"]}
        assert checks == {"file_accepted", "rejected_row_rate", "mass_change_guard", "warehouse_matches_file"}
        assert {s["name"] for s in repository["sensors"]} == {"sis_upload_sensor"}
        assert {s["name"] for s in repository["schedules"]} == {"sis_weekly_schedule", "sis_daily_schedule"}
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_instance_config_allows_one_run_per_client_at_a_time(tmp_path):
    from dagster import DagsterInstance

    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text((ROOT / "dagster.yaml").read_text())
    with DagsterInstance.from_config(str(home)) as instance:
        limits = instance.run_coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": "dagster/partition", "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
        assert instance.telemetry_enabled is False
