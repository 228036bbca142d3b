"""`sis-pipeline demo`: the whole flow on one machine, no AWS account, no database server.

Starts moto's S3-compatible server on loopback, writes a registry of three sample schools, creates their
versioned buckets, uploads realistic rosters (with a few bad rows, and one school not yet reviewed), runs
the sync as real Dagster runs into a SQLite warehouse, then uploads next week's file for one school and
syncs again so the deprovisioning shows. Prints each outcome and the command that opens the UI on the same
data.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
import os
import random
import shlex
import shutil
import sys
import time
import unicodedata
from pathlib import Path

from sis_pipeline.cli import EXIT_OK, EXIT_PROBLEM

DEMO_REGISTRY = """\
# Demo registry written by `sis-pipeline demo`. See clients.yaml in the project root for every field.
clients:
  "22":
    name: Springfield High School
    bucket: sis-demo-springfield
    sync: weekly
    auto_sync_enabled: true
    auto_deprovision: true
    deprovision_after_missing_files: 1
    guard:
      max_fraction: 0.10
      min_active: 100
    class_year_tags: true
    user_types:
      Student: Students
      Alumni: Alumni
    extra_fields:
      program:
        group: Programs
        values:
          STEM: STEM Academy
          Arts: Fine Arts
          Music: Fine Arts
          Athletics: Athletics
  "41":
    name: Shelbyville Academy
    bucket: sis-demo-shelbyville
    sync: on_upload
    auto_sync_enabled: true
    identifier: user_id
    user_types:
      Undergraduate: Undergraduate Students
      Graduate: Graduate Students
  "57":
    name: Ogdenville College
    bucket: sis-demo-ogdenville
    sync: daily
    auto_sync_enabled: false   # first file under review: previewed, never applied
"""

FIRST = [
    "Ana",
    "Bo",
    "Chloé",
    "Dmitri",
    "Eun-ji",
    "Farah",
    "Gustavo",
    "Hannah",
    "Ιωάννης",
    "Jun",
    "Kwame",
    "Lena",
    "Mateo",
    "Nia",
    "Oluwaseun",
    "Priya",
    "Quinn",
    "Rosa",
    "Søren",
    "Thao",
    "Uma",
    "Viktor",
    "Wen",
    "Ximena",
    "Yusuf",
    "Zoë",
]
LAST = [
    "Abara",
    "Brennan",
    "Castillo",
    "Dubois",
    "Eriksen",
    "Fitzgerald",
    "García",
    "Horvath",
    "Ito",
    "Jovanović",
    "Kowalski",
    "López",
    "Müller",
    "Nguyen",
    "O'Neil",
    "Patel",
    "Quispe",
    "Rossi",
    "Sato",
    "Tanaka",
    "Ulrich",
    "Van der Berg",
    "Wójcik",
    "Xu",
    "Yilmaz",
    "Zhang",
]


def _ascii(name: str) -> str:
    """`Chloé` -> `chloe`: addresses are ASCII even when names are not."""
    return unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower().replace(" ", "")


def roster(
    school: str, size: int, seed: int, *, id_column: bool, drop: int = 0, add: int = 0, bad_rows: bool = True
) -> bytes:
    """A realistic roster CSV; `drop`/`add` make next week's file from the same seed."""
    rng = random.Random(seed)
    people = []
    for n in range(size + add):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        people.append(
            {
                "First Name": first,
                "Last Name": last,
                "Email Address": f"{_ascii(first)[:3] or 'stu'}.{n:05d}@{school}.example.edu",
                "Student ID": f"s{n:05d}",
                "Study Level": rng.choice(
                    ["Student", "Student", "Student", "Alumni", "Undergraduate", "Graduate"]
                ),
                "Graduation": rng.choice(["2026", "2027", "2028", "6/15/2029", "2030-05-20"]),
                "Program": ";".join(
                    rng.sample(["STEM", "Arts", "Music", "Athletics", "Debate"], rng.randint(0, 2))
                ),
                "Opt Out": rng.choice(["", "", "", "", "yes"]),
            }
        )
    people = people[drop : size + add]
    columns = (
        ["First Name", "Last Name", "Email Address"]
        + (["Student ID"] if id_column else [])
        + ["Study Level", "Graduation", "Program", "Opt Out"]
    )
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(people)
    text = buffer.getvalue()
    if bad_rows:
        bad = {**people[0], "Email Address": "not-an-email", "Student ID": "s99998"}
        dup = {**people[1]}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\r\n")
        writer.writerows([bad, dup])
        text += buffer.getvalue()
        text += "Stray,Delimiter,stray@example.edu,extra,fields,here,too,many,values,x\r\n"
    return text.encode("utf-8")


def _start_s3(port: int):
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no line per S3 request in the demo output
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    host, real_port = server.get_host_and_port()
    return server, f"http://{host}:{real_port}"


def _upload(s3, bucket: str, key: str, data: bytes) -> str:
    response = s3.put_object(Bucket=bucket, Key=key, Body=data)
    return response.get("VersionId") or response["ETag"]


def run_demo_command(args: argparse.Namespace) -> int:
    root = Path(args.dir).resolve()
    for part in ("data", "clients.yaml"):
        target = root / part
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / "clients.yaml").write_text(DEMO_REGISTRY, encoding="utf-8")
    server, endpoint = _start_s3(args.port)
    environment = {
        "SIS_DATA_DIR": str(root / "data"),
        "SIS_CLIENTS_FILE": str(root / "clients.yaml"),
        "SIS_S3_ENDPOINT_URL": endpoint,
        "DAGSTER_HOME": str(root / "data" / "dagster_home"),
    }
    os.environ.update(environment)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ.pop("SIS_WAREHOUSE_URL", None)
    try:
        return _run(root, endpoint, environment, args.serve)
    finally:
        server.stop()


def _run(root: Path, endpoint: str, environment: dict[str, str], serve: bool) -> int:
    from sis_pipeline.aws_clients import s3_client
    from sis_pipeline.registry import load_registry
    from sis_pipeline.runner import OK_STATUSES, print_sync_results, run_clients

    registry = load_registry()
    s3 = s3_client("us-east-1")
    print(f"S3-compatible server (moto) on {endpoint}")
    files = {
        "22": roster("springfield", 1200, 22, id_column=False),
        "41": roster("shelbyville", 800, 41, id_column=True),
        "57": roster("ogdenville", 300, 57, id_column=False, bad_rows=False),
    }
    for client_id, data in files.items():
        client = registry[client_id]
        s3.create_bucket(Bucket=client.bucket)
        s3.put_bucket_versioning(Bucket=client.bucket, VersioningConfiguration={"Status": "Enabled"})
        version = _upload(s3, client.bucket, client.key, data)
        print(
            f"uploaded s3://{client.bucket}/{client.key} for client {client_id} ({len(data)} bytes, {version})"
        )

    print("\n== Week 1: first sync of every school ==")
    first = run_clients(list(registry))
    print_sync_results(first)

    print("\n== Week 2: Springfield uploads a new file (2% of students left, 2% joined) ==")
    client = registry["22"]
    _upload(s3, client.bucket, client.key, roster("springfield", 1200, 22, id_column=False, drop=24, add=24))
    second = run_clients(["22"])
    print_sync_results(second)

    outcomes = first + second
    print("\nOutcome per client:")
    for r in outcomes:
        print(f"  {r.client_id:>4}  {registry[r.client_id].name:<26} {r.status}")
    shown = {k: v for k, v in environment.items() if k != "SIS_S3_ENDPOINT_URL" or serve}
    # The dagster command of this environment, even when its venv is not activated.
    dagster = shutil.which("dagster") or str(Path(sys.executable).with_name("dagster"))
    command = (
        " ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()) + f" {dagster} dev -w workspace.yaml"
    )
    print("\nOpen the Dagster UI on the same runs, warehouse and registry (from the project root):")
    print(f"  {command}")
    if serve:
        print("\nThe S3 server stays up for the UI, the sensor and new runs. Ctrl-C to stop.")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print("(Runs in the UI need the S3 server: start the demo with --serve to keep it running.)")
    expected_ok = all(r.status in OK_STATUSES for r in outcomes)
    if not expected_ok:
        print("demo: some client did not end applied/unchanged/preview", file=sys.stderr)
    return EXIT_OK if expected_ok else EXIT_PROBLEM
