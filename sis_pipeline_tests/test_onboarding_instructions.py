"""`clients instructions`: what a school's IT needs, from the registry alone (PRODUCT.md §9, seed article)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sis_pipeline.cli import main
from sis_pipeline.onboarding.instructions import render_instructions, upload_time
from sis_pipeline.registry import ClientConfig

REGISTRY = """\
clients:
  "22":
    name: Lincoln High
    bucket: sis-22-abcdef12
"""


def _client(**fields) -> ClientConfig:
    base = {"id": "22", "name": "Lincoln High", "bucket": "sis-22-abcdef12"}
    return ClientConfig(**{**base, **fields})


def _line(text: str, starts: str) -> str:
    return next(line.strip() for line in text.splitlines() if line.strip().startswith(starts))


def test_instructions_name_the_bucket_region_and_file_name():
    text = render_instructions(_client(region="eu-west-1", key="exports/roster.csv"))
    assert "Bucket:    sis-22-abcdef12" in text
    assert "Region:    eu-west-1" in text
    assert "File name: exports/roster.csv" in text


def test_upload_command_overwrites_the_same_object_key_with_the_clients_profile_and_region():
    text = render_instructions(_client(key="exports/roster.csv", region="eu-west-1"))
    upload = shlex.split(_line(text, "Linux/macOS:  aws s3 cp").split(":", 1)[1])
    assert upload == [
        "aws", "s3", "cp", "/path/to/roster.csv", "s3://sis-22-abcdef12/exports/roster.csv",
        "--region", "eu-west-1", "--profile", "sis-22",
    ]  # fmt: skip
    assert "aws configure --profile sis-22" in text


def test_verify_command_lists_the_uploaded_object():
    verify = shlex.split(_line(render_instructions(_client()), "aws s3 ls"))
    assert verify[:4] == ["aws", "s3", "ls", "s3://sis-22-abcdef12/student_feed.csv"]


def test_a_key_with_spaces_is_quoted_for_the_shell():
    text = render_instructions(_client(key="Roster Export.csv"))
    upload = shlex.split(_line(text, "Linux/macOS:  aws s3 cp").split(":", 1)[1])
    assert upload[3:5] == ["/path/to/Roster Export.csv", "s3://sis-22-abcdef12/Roster Export.csv"]


def test_weekly_saturday_sync_gets_a_saturday_evening_cron_and_task_before_it():
    text = render_instructions(_client())  # weekly default: Saturday 23:00
    assert upload_time(_client()) == (5, 20, "6")
    assert _line(text, "5 20 * * 6 aws s3 cp /path/to/student_feed.csv s3://sis-22-abcdef12/student_feed.csv")
    schtasks = _line(text, "schtasks /Create")
    assert "/SC WEEKLY /D SAT /ST 20:05" in schtasks
    assert '/TR "aws s3 cp C:\\Data\\student_feed.csv s3://sis-22-abcdef12/student_feed.csv' in schtasks


def test_daily_sync_at_2am_gets_an_upload_the_evening_before():
    client = _client(sync="daily")  # default 02:00
    assert upload_time(client) == (5, 23, "*")
    assert "/SC DAILY /ST 23:05" in _line(render_instructions(client), "schtasks /Create")


def test_early_weekly_sync_moves_the_upload_to_the_previous_day():
    client = _client(cron="30 1 * * MON")
    assert upload_time(client) == (35, 22, "0")
    assert "/SC WEEKLY /D SUN /ST 22:35" in render_instructions(client)


@pytest.mark.parametrize(
    "fields",
    [{"sync": "on_upload"}, {"sync": "manual"}, {"cron": "0 */6 * * *"}, {"cron": "0 23 1 * *"}],
)
def test_clients_without_a_simple_schedule_get_the_articles_saturday_morning_example(fields):
    assert upload_time(_client(**fields)) == (5, 8, "6")


def test_file_requirements_cover_header_one_row_per_user_full_file_and_rfc4180():
    text = render_instructions(_client())
    assert "RFC 4180" in text and "wrapped in double quotes" in text
    assert "A header row, then one row per user" in text
    assert "full list of users, never only the changes" in text
    assert "Required columns: first_name, last_name, email." in text


def test_required_columns_follow_the_clients_identifier_and_class_year_tags():
    text = render_instructions(_client(identifier="user_id", class_year_tags=True))
    assert "Required columns: first_name, last_name, email, user_id, graduation." in text


def test_instructions_explain_how_to_precheck_with_validate():
    text = render_instructions(_client())
    assert "sis-pipeline validate /path/to/student_feed.csv" in text
    assert "sis-pipeline validate /path/to/student_feed.csv --client 22" in text


def test_instructions_command_prints_them_for_a_registered_client(tmp_path, monkeypatch, capsys):
    (tmp_path / "clients.yaml").write_text(REGISTRY, encoding="utf-8")
    monkeypatch.setenv("SIS_CLIENTS_FILE", str(tmp_path / "clients.yaml"))
    assert main(["clients", "instructions", "22"]) == 0
    assert capsys.readouterr().out == render_instructions(_client()) + "\n"


def test_instructions_for_an_unknown_client_is_a_usage_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "clients.yaml").write_text(REGISTRY, encoding="utf-8")
    monkeypatch.setenv("SIS_CLIENTS_FILE", str(tmp_path / "clients.yaml"))
    assert main(["clients", "instructions", "99"]) == 2
    assert "unknown client '99'" in capsys.readouterr().err


def test_instructions_through_the_installed_console_script(tmp_path):
    (tmp_path / "clients.yaml").write_text(REGISTRY, encoding="utf-8")
    env = {**os.environ, "SIS_CLIENTS_FILE": str(tmp_path / "clients.yaml")}
    script = Path(sys.executable).parent / "sis-pipeline"
    done = subprocess.run(
        [str(script), "clients", "instructions", "22"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s+Bucket:\s+sis-22-abcdef12$", done.stdout, re.MULTILINE)
