"""Privacy (issue 7): no email, name, login, user id or extra-field value of a roster ever reaches a log
line, a Dagster event (message, metadata, check metadata, failure with its chained exceptions and stack
traces), a command's output or the warehouse's sync-log and rejected-row messages.

Every scenario runs with distinctive values planted in the file, for real: S3 on moto's server, Dagster's
own instance, SQLite and PostgreSQL warehouses, and the installed `sis-pipeline` command. Then everything
those produced is scanned. `test_the_scanner_finds_a_planted_value_in_every_place_it_reads` proves the scan
would see a leak in each place it looks, so a clean scan means something.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import MaterializeResult, asset, materialize

from sis_pipeline.warehouse.tables import sis_rejected_rows, sis_sync_log
from sis_pipeline_tests.conftest import POSTGRES_URL_ENV

SCRIPT = str(Path(sys.executable).with_name("sis-pipeline"))
DOMAIN = "pv-fixture.example.org"
COLUMNS = [
    "first_name",
    "last_name",
    "email",
    "user_login",
    "user_id",
    "user_type",
    "graduation",
    "program",
    "home_address",
]
#: Not personal on their own (vocabulary and years), so not scanned for.
NOT_PERSONAL = ("user_type", "graduation")
#: A mapped extra-field value: it feeds a community and is never echoed (only unmapped values are listed).
PROGRAM = "prgzq-bio"
CLIENT_SETTINGS = {
    "auto_deprovision": True,
    "guard": {"max_fraction": 0.1, "min_active": 5},
    "user_types": {"Student": "Students"},
    "extra_fields": {"program": {"group": "Programs", "values": {PROGRAM: "Biology"}}},
}
LOGGERS = ("sis_pipeline", "dagster", "botocore", "boto3", "urllib3", "s3transfer")


def student(n: int, **overrides: str) -> dict[str, str]:
    row = {
        "first_name": f"Quorzel{n:02d}",
        "last_name": f"Vantrix{n:02d}",
        "email": f"quorzel.vantrix{n:02d}@{DOMAIN}",
        "user_login": f"qvlogin{n:02d}",
        "user_id": f"qvuid{n:02d}",
        "user_type": "Student",
        "graduation": "2027",
        "program": PROGRAM,
        "home_address": f"{n:02d} Xylomarsh Lane",
    }
    row.update(overrides)
    return row


def _line(values: list[str]) -> str:
    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\r\n").writerow(values)
    return buffer.getvalue()


def roster(students: list[dict[str, str]], *, extra_text: str = "", header: bool = True) -> bytes:
    text = _line(COLUMNS) if header else ""
    text += "".join(_line([s[c] for c in COLUMNS]) for s in students)
    return (text + extra_text).encode("utf-8")


#: An email in the graduation column (a column mix-up): warned about, withheld from logs and the UI.
MISFILED_EMAIL = f"misfiled.kq77@{DOMAIN}"
VALID = [*(student(n) for n in range(11)), student(11, graduation=MISFILED_EMAIL)]
#: Rows the file contract rejects: an invalid email, a duplicated email (both copies), a stray delimiter,
#: two user types. Lines 14-18 of the applied file.
REJECTED = [
    student(50, email="rejzel-at-nowhere"),
    student(51, email=f"dupzel@{DOMAIN}", first_name="Dupzela"),
    student(52, email=f"DUPZEL@{DOMAIN}", first_name="Dupzelb"),
    student(53, user_type="Wizardzel;Sorcerzel"),
]
STRAY_DELIMITER = _line(
    ["Strayzel", "Commazel", "extra-zel-value", f"strayzel@{DOMAIN}", "qvstray", "", "", "", "", ""]
)
APPLIED_FILE = roster(VALID + REJECTED, extra_text=STRAY_DELIMITER)
#: Half the school gone: past the guard's 10%.
BLOCKED_FILE = roster(VALID[:6])
IGNORED_FILES = {
    # no email column
    "missing_column": b"first_name,last_name,user_login\r\nQuorzel00,Vantrix00,qvlogin00\r\n",
    # exported without its header row: the first student is read as the header (two equal cells)
    "no_header_row": roster(
        [student(0, first_name="Kimzqel", last_name="Kimzqel"), *VALID[1:3]], header=False
    ),
    # a quote that never closes
    "unreadable_quoting": roster(VALID[:2], extra_text=f'Quorzel77,"Vantrix77,{DOMAIN}\r\n'),
}
#: Student 0 with a new email but the login they had: a unique index on logins refuses the insert.
CHANGED_EMAIL = f"quorzel.newmail00@{DOMAIN}"
FAILING_FILE = roster([student(0, email=CHANGED_EMAIL), *VALID[1:]])

KNOWN_VALUES = sorted(
    {
        value
        for row in [*VALID, *REJECTED, student(0, first_name="Kimzqel", email=CHANGED_EMAIL)]
        for column, value in row.items()
        if column not in NOT_PERSONAL and value
    }
    | {
        MISFILED_EMAIL,
        "Wizardzel",
        "Sorcerzel",
        "Strayzel",
        "Commazel",
        "extra-zel-value",
        f"strayzel@{DOMAIN}",
        "qvstray",
    }
    | {"Quorzel77", "Vantrix77"}
)


# --- the scanner --------------------------------------------------------------------------------------------


@dataclass
class Scan:
    """Texts gathered from every place a sync leaves a trace, and which known values each holds."""

    texts: dict[str, str] = field(default_factory=dict)

    def add(self, where: str, text: str | bytes) -> None:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        self.texts[where] = self.texts.get(where, "") + "\n" + text

    def leaks(self, values=KNOWN_VALUES, only: str = "") -> list[str]:
        found = []
        for where, text in self.texts.items():
            if only not in where:
                continue
            folded = text.casefold()
            for value in values:
                at = folded.find(value.casefold())
                if at >= 0:
                    found.append(f"{where}: {value!r} in …{text[max(0, at - 120) : at + 80]!r}…")
        return found

    def assert_clean(self, allowed: list[str] = ()) -> None:
        assert len(self.texts) > 0
        leaks = self.leaks([v for v in KNOWN_VALUES if v not in allowed])
        assert not leaks, "personal values leaked:\n" + "\n".join(leaks[:20])

    # sources ---------------------------------------------------------------------------------------------
    def python_logs(self, records: list[logging.LogRecord]) -> None:
        formatter = logging.Formatter()
        for record in records:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + formatter.formatException(record.exc_info)
            if record.stack_info:
                text += "\n" + record.stack_info
            # what handlers and structured loggers get too (Dagster puts its event on the record)
            text += "\n" + repr({k: v for k, v in vars(record).items() if k not in ("exc_info",)})
            self.add(f"python log {record.name}", text)

    def dagster_instance(self, instance) -> None:
        """Every event of every run (serialised as stored: metadata, check results, errors with their
        causes, contexts and stacks), every run record, and the raw bytes of the instance's files."""
        from dagster._serdes import serialize_value

        for run in instance.get_runs():
            self.add("dagster run record", serialize_value(run))
            for entry in instance.all_logs(run.run_id):
                self.add(f"dagster event {entry.dagster_event_type or 'log'}", serialize_value(entry))
                self.add("dagster event message", entry.message or "")
        self.files(Path(instance.root_directory), "dagster instance file")

    def files(self, root: Path, what: str) -> None:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            self.add(f"{what} {path.relative_to(root)}", path.read_bytes())

    def warehouse_messages(self, warehouse) -> None:
        """Every column of the sync log and the rejected rows (their messages above all)."""
        with warehouse.engine.connect() as conn:
            for table in (sis_sync_log, sis_rejected_rows):
                rows = conn.execute(sa.select(table)).mappings().all()
                assert table is sis_rejected_rows or rows, "the scenario wrote no sync log"
                self.add(f"warehouse {table.name}", "\n".join(repr(dict(r)) for r in rows))


@pytest.fixture
def all_logs(caplog):
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _statuses(warehouse, client_id: str) -> list[str]:
    return list(warehouse.sync_log(client_id, limit=50).sort_values("sync_id")["status"])


def _refuse_reused_logins(warehouse) -> None:
    """What a DBA might add: logins unique per client. A student whose email changed then fails the write."""
    with warehouse.engine.begin() as conn:
        conn.execute(
            sa.text("CREATE UNIQUE INDEX uq_test_subscribers_login ON subscribers (client_id, user_login)")
        )


def _database_error_text(warehouse, client) -> str:
    """The text of the error the database raises for FAILING_FILE, straight from the warehouse."""
    import hashlib

    from sis_pipeline.file_version import FileVersion
    from sis_pipeline.sisfile import map_file, validate_file

    validated = validate_file(FAILING_FILE, client, "failing.csv")
    version = FileVersion("b", "k", None, None, hashlib.sha256(FAILING_FILE).hexdigest(), len(FAILING_FILE))
    with pytest.raises(Exception) as raised:
        warehouse.apply(
            client=client, validated=validated, mapped=map_file(validated, client), file=version, run_id=None
        )
    return str(raised.value)


# --- the scanner itself -----------------------------------------------------------------------------------


def test_the_scanner_finds_a_planted_value_in_every_place_it_reads(dagster_instance, all_logs, tmp_path):
    """A value planted in each place the scans read is found there: a clean scan is evidence, not luck."""
    from sis_pipeline.warehouse import Warehouse

    planted = {
        "log": "Quorzel01",
        "metadata": f"quorzel.vantrix02@{DOMAIN}",
        "cause": "qvlogin03",
        "context": "qvuid04",
        "warehouse": "Vantrix05",
        "python": "06 Xylomarsh Lane",
    }

    @asset
    def planted_asset(context):
        context.log.info(f"hello {planted['log']}")
        yield MaterializeResult(metadata={"who": planted["metadata"]})

    @asset(deps=[planted_asset])
    def failing_asset():
        try:
            try:
                raise KeyError(planted["context"])
            except KeyError:
                raise ValueError(planted["cause"])  # noqa: B904 (the KeyError is its __context__)
        except ValueError as error:
            raise RuntimeError("outer") from error

    materialize([planted_asset, failing_asset], instance=dagster_instance, raise_on_error=False)
    logging.getLogger("sis_pipeline.test").debug("python %s", planted["python"])
    warehouse = Warehouse(f"sqlite:///{tmp_path / 'w.sqlite'}")
    warehouse.upgrade()
    warehouse.record(
        client_id="22", status="failed", file=None, validated=None, run_id=None, message=planted["warehouse"]
    )

    scan = Scan()
    scan.dagster_instance(dagster_instance)
    scan.python_logs(all_logs.records)
    scan.warehouse_messages(warehouse)
    for what, value in planted.items():
        assert scan.leaks([value]), f"the scan misses a value planted in the {what}"
    structured = Scan({k: v for k, v in scan.texts.items() if not k.startswith("dagster instance file")})
    for what in ("metadata", "cause", "context"):  # found in the events themselves, not only in raw files
        assert structured.leaks([planted[what]]), f"the event scan misses the {what}"
    warehouse.dispose()


# --- through Dagster ----------------------------------------------------------------------------------------


def test_dagster_runs_never_log_or_record_personal_values(
    harness, dagster_instance, warehouse_url, all_logs, capfd
):
    """Applied with rejected rows, blocked by the guard, ignored three ways, failed inside the write: no
    known value in Python logs, console output, the Dagster event log or the warehouse's messages."""
    from sis_pipeline.assets import SUBSCRIBERS_TABLE

    harness.warehouse_url = warehouse_url
    harness.add_client("22", **CLIENT_SETTINGS)
    warehouse = harness.warehouse()

    harness.upload("22", APPLIED_FILE)
    assert harness.run(dagster_instance, "22").success
    harness.upload("22", BLOCKED_FILE)
    assert not harness.run(dagster_instance, "22").success
    for data in IGNORED_FILES.values():
        harness.upload("22", data)
        assert not harness.run(dagster_instance, "22").success
    _refuse_reused_logins(warehouse)
    harness.upload("22", FAILING_FILE)
    failed = harness.run(dagster_instance, "22")
    assert not failed.success
    assert _statuses(warehouse, "22") == ["applied", "blocked", "ignored", "ignored", "ignored", "failed"]
    state = warehouse.current_subscribers("22")
    assert len(state) == 12 and CHANGED_EMAIL not in set(state["subscriber_key"])  # rolled back
    assert SUBSCRIBERS_TABLE not in {
        m.asset_key for m in failed.asset_materializations_for_node("sis_import")
    }
    # the rejected rows were recorded (with their messages) for the applied file
    applied_sync = int(warehouse.sync_log("22", limit=50).sort_values("sync_id").iloc[0]["sync_id"])
    assert sorted(set(warehouse.rejected_rows(applied_sync)["line_number"])) == [14, 15, 16, 17, 18]

    scan = Scan()
    scan.python_logs(all_logs.records)
    console = capfd.readouterr()
    scan.add("console stdout", console.out)
    scan.add("console stderr", console.err)
    scan.dagster_instance(dagster_instance)
    scan.warehouse_messages(warehouse)
    scan.assert_clean()

    # the failure still says what failed and where: client, stage, error type, the frames without messages
    failure = next(e for e in failed.all_events if e.event_type_value == "STEP_FAILURE").event_specific_data
    assert "client 22: failed while writing the warehouse: " in failure.user_failure_data.description
    assert failure.user_failure_data.description.split(": ")[2].split(";")[0] in (
        "IntegrityError",
        "UniqueViolation",
    )
    assert failure.error.cause is None and failure.error.context is None  # the original is not chained
    frames = failure.user_failure_data.metadata["traceback"].value
    assert "(message withheld)" in frames and "upsert_subscribers" in frames

    from sis_pipeline.registry import load_registry

    error = _database_error_text(warehouse, load_registry(harness.registry_path)["22"])
    if warehouse.engine.dialect.name == "postgresql":  # the write failure really did quote personal data
        assert "qvlogin00" in error


# --- through the command line ------------------------------------------------------------------------------


@pytest.fixture
def revealing_warehouse_url(request, tmp_path) -> str:
    """PostgreSQL when the tests have one (its errors quote the row they refuse, so the failed write
    really carries personal data), else SQLite."""
    if os.environ.get(POSTGRES_URL_ENV, "").strip():
        return request.getfixturevalue("postgres_schema_url")
    return f"sqlite:///{tmp_path / 'warehouse.sqlite'}"


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([SCRIPT, *args], env=env, capture_output=True, text=True, timeout=300)


def test_sync_command_never_prints_or_records_personal_values(harness, revealing_warehouse_url, tmp_path):
    """`sis-pipeline sync` for an applied file with rejected rows, an ignored file, a blocked run and a
    failure inside the write: its output, DAGSTER_HOME and the warehouse's messages hold no known value."""
    from dagster import DagsterInstance

    from sis_pipeline.warehouse import Warehouse

    env = {
        **os.environ,
        "SIS_CLIENTS_FILE": str(harness.registry_path),
        "SIS_DATA_DIR": str(tmp_path / "data"),
        "SIS_S3_ENDPOINT_URL": harness.endpoint,
        "SIS_WAREHOUSE_URL": revealing_warehouse_url,
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    for client_id in ("22", "23", "24"):
        harness.add_client(client_id, **CLIENT_SETTINGS)
    harness.upload("22", APPLIED_FILE)  # applied, rows rejected
    harness.upload("23", IGNORED_FILES["no_header_row"])  # ignored
    harness.upload("24", APPLIED_FILE)
    first = _cli(["sync", "--all"], env)
    assert first.returncode == 1, first.stdout + first.stderr

    warehouse = Warehouse(revealing_warehouse_url)
    _refuse_reused_logins(warehouse)
    harness.upload("22", FAILING_FILE)  # fails inside the write
    harness.upload("24", BLOCKED_FILE)  # blocked
    second = _cli(["sync", "--all"], env)
    assert second.returncode == 1, second.stdout + second.stderr
    assert _statuses(warehouse, "22") == ["applied", "failed"]
    assert _statuses(warehouse, "23") == ["ignored", "ignored"]
    assert _statuses(warehouse, "24") == ["applied", "blocked"]
    log = _cli(["log"], env)
    assert log.returncode == 0

    scan = Scan()
    for name, result in (("first sync", first), ("second sync", second), ("log", log)):
        scan.add(f"{name} stdout", result.stdout)
        scan.add(f"{name} stderr", result.stderr)
    os.environ["DAGSTER_HOME"] = env["DAGSTER_HOME"]
    try:
        with DagsterInstance.get() as instance:
            assert len(instance.get_runs()) == 6
            scan.dagster_instance(instance)
    finally:
        os.environ.pop("DAGSTER_HOME")
    scan.warehouse_messages(warehouse)
    scan.assert_clean()

    from sis_pipeline.registry import load_registry

    error = _database_error_text(warehouse, load_registry(harness.registry_path)["22"])
    if warehouse.engine.dialect.name == "postgresql":  # the write failure really did quote personal data
        assert "qvlogin00" in error
    warehouse.dispose()


def test_validate_command_prints_line_numbers_and_reasons_never_values(tmp_path, harness):
    """`sis-pipeline validate` (text and --json, default rules and a client's) names lines, columns and
    reasons; its --errors-out CSV holds the same and no row values either."""
    harness.add_client("22", create_bucket=False, **CLIENT_SETTINGS)
    env = {**os.environ, "SIS_CLIENTS_FILE": str(harness.registry_path)}
    scan = Scan()
    files = {"applied": APPLIED_FILE, **IGNORED_FILES}
    for name, data in files.items():
        path = tmp_path / f"{name}.csv"
        path.write_bytes(data)
        for options in ([], ["--client", "22", "--json"]):
            errors = tmp_path / f"{name}-errors.csv"
            result = _cli(["validate", str(path), *options, "--errors-out", str(errors)], env)
            assert result.returncode == (1 if name == "applied" else 2), result.stdout + result.stderr
            scan.add(f"validate {name} {options} stdout", result.stdout)
            scan.add(f"validate {name} {options} stderr", result.stderr)
            scan.add(f"validate {name} {options} errors csv", errors.read_bytes())
    # Warnings name the values of vocabulary columns (graduation, user_type, extra fields) to the school on
    # its own machine, whatever it put there: the misfiled address is its own data, shown to it. Everything
    # else, and the errors CSV, holds no value.
    assert MISFILED_EMAIL in scan.texts["validate applied [] stdout"]
    assert not scan.leaks([MISFILED_EMAIL], only="errors csv")
    scan.assert_clean(allowed=[MISFILED_EMAIL])
    # useful without the values: each rejected line with its column and reason
    result = _cli(["validate", str(tmp_path / "applied.csv"), "--json"], env)
    rejected = [
        (r["line_number"], r["column_name"], r["reason_code"]) for r in json.loads(result.stdout)["rejected"]
    ]
    assert rejected == [
        (14, "email", "invalid_email"),
        (15, "email", "duplicate"),
        (16, "email", "duplicate"),
        (17, "user_type", "multiple_user_types"),
        (18, None, "field_count"),
    ]
