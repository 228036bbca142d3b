"""`sis-pipeline validate` through the installed console script: exit codes, output, --json, --errors-out."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SAMPLES = Path(__file__).resolve().parents[1] / "sis_pipeline" / "samples"


def _script() -> str:
    found = shutil.which("sis-pipeline") or str(Path(sys.executable).with_name("sis-pipeline"))
    if not Path(found).exists():
        pytest.fail("the sis-pipeline console script is not installed (pip install -e .)")
    return found


def _run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    environment = {**os.environ, **(env or {})}
    return subprocess.run(
        [_script(), "validate", *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
    )


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


CLEAN = "first_name,last_name,email\nAda,Lovelace,ada@example.org\nAlan,Turing,alan@example.org\n"
REJECTS = (
    "first_name,last_name,email\nAda,Lovelace,ada@example.org\nAlan,Turing,not-an-address\nGrace,Hopper,,x\n"
)


def test_clean_file_exits_0_with_a_summary(tmp_path):
    result = _run(str(_write(tmp_path / "roster.csv", CLEAN)), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rows read: 2  valid: 2  rejected: 0" in result.stdout
    assert "default rules" in result.stdout


def test_rejected_rows_exit_1_and_each_line_is_listed_with_its_reason(tmp_path):
    result = _run(str(_write(tmp_path / "roster.csv", REJECTS)), cwd=tmp_path)
    assert result.returncode == 1
    assert "rejected: 2" in result.stdout
    assert "invalid_email: 1" in result.stdout and "field_count: 1" in result.stdout
    assert "line 3: email: invalid_email" in result.stdout
    assert "line 4: (whole line): field_count" in result.stdout
    assert "not-an-address" not in result.stdout  # the value itself is never printed


def test_ignored_file_exits_2_and_says_why(tmp_path):
    result = _run(str(_write(tmp_path / "roster.csv", "first_name,last_name\nAda,Lovelace\n")), cwd=tmp_path)
    assert result.returncode == 2
    assert "FILE WOULD BE IGNORED (missing_column)" in result.stdout and "email" in result.stdout


def test_unreadable_path_exits_2(tmp_path):
    result = _run(str(tmp_path / "absent.csv"), cwd=tmp_path)
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_json_output_carries_counts_reasons_and_rejected_lines(tmp_path):
    result = _run(str(_write(tmp_path / "roster.csv", REJECTS)), "--json", cwd=tmp_path)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["status"] == "rejected"
    assert (data["rows_total"], data["rows_valid"], data["rows_rejected"]) == (3, 1, 2)
    assert data["rejected_by_reason"] == {"field_count": 1, "invalid_email": 1}
    assert data["rejected"][0] == {
        "line_number": 3,
        "column_name": "email",
        "reason_code": "invalid_email",
        "message": "email is not a valid address",
    }
    assert data["rejected"][1]["column_name"] is None


def test_json_for_an_ignored_file_has_the_problem(tmp_path):
    result = _run(
        str(_write(tmp_path / "roster.csv", "first_name,last_name,email\n")), "--json", cwd=tmp_path
    )
    assert result.returncode == 2
    assert json.loads(result.stdout)["problem"]["code"] == "no_data"


def test_errors_out_writes_the_rejected_rows(tmp_path):
    out = tmp_path / "errors.csv"
    result = _run(str(_write(tmp_path / "roster.csv", REJECTS)), "--errors-out", str(out), cwd=tmp_path)
    assert result.returncode == 1
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["line_number"], r["column_name"], r["reason_code"]) for r in rows] == [
        ("3", "email", "invalid_email"),
        ("4", "", "field_count"),
    ]


def test_errors_out_neutralises_cells_a_spreadsheet_would_run_as_formulas(tmp_path):
    out = tmp_path / "errors.csv"
    # an ignored file's message starts with the file name, which here looks like a formula
    _write(tmp_path / "=HYPERLINK.csv", "first_name\nAda\n")
    result = _run("=HYPERLINK.csv", "--errors-out", str(out), cwd=tmp_path)
    assert result.returncode == 2
    row = next(csv.DictReader(out.open(encoding="utf-8")))
    assert row["message"].startswith("'=HYPERLINK.csv")


@pytest.mark.parametrize("prefix", ["=", "+", "-", "@", "\t", "\r"])
def test_formula_prefixes_are_neutralised(prefix):
    from sis_pipeline.sisfile.validate_cmd import neutralise_cell

    assert neutralise_cell(f"{prefix}cmd") == f"'{prefix}cmd"
    assert neutralise_cell("plain") == "plain"


def test_client_rules_come_from_the_registry(tmp_path):
    registry = _write(
        tmp_path / "clients.yaml",
        "clients:\n  '41':\n    name: Lakeside\n    bucket: sis-demo-41\n    identifier: user_id\n",
    )
    roster = _write(tmp_path / "roster.csv", CLEAN)
    result = _run(str(roster), "--client", "41", cwd=tmp_path, env={"SIS_CLIENTS_FILE": str(registry)})
    assert result.returncode == 2
    assert "client 41" in result.stdout and "missing_column" in result.stdout


def test_registry_in_the_working_directory_is_used_by_default(tmp_path):
    _write(tmp_path / "clients.yaml", "clients:\n  '41':\n    name: Lakeside\n    bucket: sis-demo-41\n")
    result = _run(str(_write(tmp_path / "roster.csv", CLEAN)), "--client", "41", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_unknown_client_exits_2(tmp_path):
    _write(tmp_path / "clients.yaml", "clients:\n  '41':\n    name: Lakeside\n    bucket: sis-demo-41\n")
    result = _run(str(_write(tmp_path / "roster.csv", CLEAN)), "--client", "99", cwd=tmp_path)
    assert result.returncode == 2 and "99" in result.stderr


def test_bad_registry_exits_2_with_a_configuration_error(tmp_path):
    _write(
        tmp_path / "clients.yaml",
        "clients:\n  '41':\n    name: Lakeside\n    bucket: sis-demo-41\n    sync: hourly\n",
    )
    result = _run(str(_write(tmp_path / "roster.csv", CLEAN)), "--client", "41", cwd=tmp_path)
    assert result.returncode == 2 and "configuration error" in result.stderr and "sync" in result.stderr


def test_bundled_sample_roster_shows_rejections(tmp_path):
    result = _run(str(SAMPLES / "sample_roster.csv"), cwd=tmp_path)
    assert result.returncode == 1
    assert "rejected: 6" in result.stdout


def test_bundled_clean_roster_is_clean(tmp_path):
    assert _run(str(SAMPLES / "clean_roster.csv"), cwd=tmp_path).returncode == 0


def test_the_console_script_does_not_load_hypothesis(tmp_path):
    """pandera imports hypothesis when it is installed, for strategies no command uses (0.4 s a start-up);
    the console script hides it from its own process only."""
    probe = (
        "import sys\n"
        "from sis_pipeline.cli import console\n"
        f"sys.argv = ['sis-pipeline', 'validate', {str(_write(tmp_path / 'r.csv', CLEAN))!r}]\n"
        "code = console()\n"
        "import pandera.pandas\n"
        "print(code, sys.modules.get('hypothesis') is None, 'pandera' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[-3:] == ["0", "True", "True"]


def test_report_only_validation_matches_the_import_s_but_computes_no_protected_keys():
    from sis_pipeline.registry import ClientConfig
    from sis_pipeline.sisfile.schema import validate_file

    data = REJECTS.encode()
    client = ClientConfig.default_rules()
    full = validate_file(data, client, "r.csv")
    report = validate_file(data, client, "r.csv", report_only=True)
    assert {"ada@example.org", "not-an-address"} <= set(full.protected_keys)
    assert len(report.protected_keys) == 0
    assert (report.rows_total, report.rows_valid, report.rows_rejected) == (3, 1, 2)
    assert report.rejected.equals(full.rejected)
    assert report.valid.equals(full.valid[list(report.valid.columns)])


def test_a_report_keeps_only_the_columns_its_value_warnings_read_and_warns_as_an_import_does():
    from benchmarks.generate import benchmark_client_config, iter_file_chunks
    from sis_pipeline.sisfile.schema import validate_file

    data = b"".join(bytes(chunk) for chunk in iter_file_chunks(3000, week=2))
    client = benchmark_client_config()  # maps user types and two extra fields
    full = validate_file(data, client, "w.csv")
    report = validate_file(data, client, "w.csv", report_only=True)
    assert sorted(report.valid.columns) == sorted(
        ["user_type", "graduation", *client.extra_fields, "line_number"]
    )
    assert len(full.valid.columns) > len(report.valid.columns)
    assert report.warnings == full.warnings and len(report.warnings) >= 2
    assert (report.rows_valid, report.rows_warned, report.rows_rejected) == (
        full.rows_valid,
        full.rows_warned,
        full.rows_rejected,
    )
    assert report.rows_warned > 0
