"""`sis-pipeline validate FILE --client bench` on next week's 1M-row file, as a school's IT would run it.

Measured end to end as a separate process (interpreter start-up included: that is what the user waits for).
Exit 0 (clean) or 1 (rows rejected: the generated file has some) is success; 2 means the file would be
ignored, which for this file is a bug.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

from benchmarks.cases import BenchContext, CaseUnavailable
from benchmarks.generate import clients_yaml

_COMMAND_MODULE = "sis_pipeline.sisfile.validate_cmd"


def check_available(ctx: BenchContext) -> None:
    if importlib.util.find_spec(_COMMAND_MODULE) is None:
        raise CaseUnavailable(f"needs {_COMMAND_MODULE} (`sis-pipeline validate`)")


def _script() -> str:
    beside = Path(sys.executable).with_name("sis-pipeline")
    found = str(beside) if beside.exists() else shutil.which("sis-pipeline")
    if not found:
        raise CaseUnavailable("needs the `sis-pipeline` console script (pip install -e .)")
    return found


def prepare(ctx: BenchContext) -> None:
    check_available(ctx)
    ctx.files()
    Path(ctx.work_dir, "clients.yaml").write_text(clients_yaml(["bench"]))


def run(ctx: BenchContext) -> dict:
    _, week2 = ctx.files()
    env = {**os.environ, "SIS_CLIENTS_FILE": str(Path(ctx.work_dir, "clients.yaml"))}
    command = [_script(), "validate", week2.path, "--client", "bench"]
    proc = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 1):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"validate exited {proc.returncode}: {last[:200]}")
    return {"rows": week2.rows, "detail": {"exit_code": proc.returncode}}
