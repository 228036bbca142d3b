"""`sis-pipeline` command line (PRODUCT.md §8). Parses arguments and hands off; no logic lives here.

Each command's handler lives beside the code it drives and is imported only when that command runs, so
`sis-pipeline validate` starts without loading Dagster.
Exit codes: 0 success, 1 the work found a problem (rows rejected, a sync not applied), 2 usage/configuration.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sis_pipeline import __version__

EXIT_OK = 0
EXIT_PROBLEM = 1
EXIT_USAGE = 2


def _handler(target: str):
    def run(args: argparse.Namespace) -> int:
        module_name, func_name = target.split(":")
        return getattr(importlib.import_module(module_name), func_name)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sis-pipeline",
        description="Import schools' SIS roster files from S3 into the subscriber warehouse.",
    )
    parser.add_argument("--version", action="version", version=f"sis-pipeline {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = commands.add_parser(
        "validate",
        help="check a roster file before uploading it",
        description="Check a roster CSV against the file contract. Exit 0 clean, 1 rows rejected, "
        "2 the file would be ignored.",
    )
    validate.add_argument("file", metavar="FILE", help="the CSV to check")
    validate.add_argument("--client", metavar="ID", help="apply this client's rules from the registry")
    validate.add_argument("--errors-out", metavar="PATH", help="write rejected rows to this CSV")
    validate.add_argument("--json", action="store_true", help="print the result as JSON")
    validate.set_defaults(run=_handler("sis_pipeline.sisfile.validate_cmd:run"))

    sync = commands.add_parser(
        "sync",
        help="run the import now, as Dagster runs",
        description="Run the import graph now for the given clients as Dagster runs (recorded under "
        "DAGSTER_HOME) and print the sync log rows. Exit 0 when every client ended applied, unchanged or "
        "preview; 1 when any ended ignored, blocked or failed.",
    )
    who = sync.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--client", metavar="ID", action="append", dest="clients", help="a client id (repeatable)"
    )
    who.add_argument("--all", action="store_true", help="every client in the registry")
    sync.add_argument("--force", action="store_true", help="re-apply a file that has not changed")
    sync.add_argument("--override-guard", action="store_true", help="apply past the mass-change guard")
    sync.add_argument("--dry-run", action="store_true", help="preview: everything but the warehouse write")
    sync.add_argument(
        "--version-id", metavar="VERSION", help="replay this S3 object version (one client only)"
    )
    sync.add_argument(
        "--workers", type=int, default=1, metavar="N", help="run up to N clients at once in worker processes"
    )
    sync.set_defaults(run=_handler("sis_pipeline.runner:run_sync_command"))

    log = commands.add_parser("log", help="show recent sync log rows")
    log.add_argument("--client", metavar="ID", help="only this client")
    log.add_argument("--limit", type=int, default=20, help="how many rows (default 20)")
    log.set_defaults(run=_handler("sis_pipeline.runner:run_log_command"))

    demo = commands.add_parser(
        "demo",
        help="run the whole flow locally: embedded S3, sample schools, a real sync",
        description="Start an embedded S3-compatible server on loopback, create sample clients and files, "
        "run the sync, print the outcome and how to open the Dagster UI on the same data.",
    )
    demo.add_argument("--dir", metavar="PATH", default="demo", help="where the demo keeps its state")
    demo.add_argument("--port", type=int, default=0, help="S3 server port (default: any free port)")
    demo.add_argument("--serve", action="store_true", help="keep the S3 server running after the sync")
    demo.set_defaults(run=_handler("sis_pipeline.demo:run_demo_command"))

    migrate = commands.add_parser("migrate", help="create or upgrade the warehouse tables (Alembic)")
    migrate.set_defaults(run=_handler("sis_pipeline.warehouse.migrate:run_migrate_command"))

    clients = commands.add_parser("clients", help="onboard schools and manage their credentials")
    client_commands = clients.add_subparsers(dest="clients_command", required=True, metavar="ACTION")
    onboard = client_commands.add_parser("onboard", help="create a school's bucket, user and key")
    onboard.add_argument("id", metavar="ID")
    onboard.add_argument("--name", required=True)
    onboard.add_argument("--sync", choices=["weekly", "daily", "on_upload", "manual"], default="weekly")
    onboard.add_argument("--bucket", help="bucket name (default: sis-<id>-<random suffix>)")
    onboard.add_argument("--key", default="student_feed.csv")
    onboard.add_argument("--region", default="us-east-1")
    onboard.set_defaults(run=_handler("sis_pipeline.onboarding:run_onboard_command"))
    instructions = client_commands.add_parser("instructions", help="print a school's setup instructions")
    instructions.add_argument("id", metavar="ID")
    instructions.set_defaults(run=_handler("sis_pipeline.onboarding:run_instructions_command"))
    rotate = client_commands.add_parser("rotate-credentials", help="replace a school's access key")
    rotate.add_argument("id", metavar="ID")
    rotate.set_defaults(run=_handler("sis_pipeline.onboarding:run_rotate_command"))
    listing = client_commands.add_parser("list", help="clients, buckets, last upload and last sync")
    listing.set_defaults(run=_handler("sis_pipeline.onboarding:run_list_command"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from sis_pipeline.registry import RegistryError

    try:
        return int(args.run(args))
    except RegistryError as exc:
        print(f"sis-pipeline: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def console() -> int:
    """The `sis-pipeline` console script. pandera imports hypothesis, when it is installed (the test
    extra), only to offer data-generation strategies that no command uses: 0.4 s of every command's
    start-up. Hiding it here, in the script's own process, and never in `main` (which tests call in a
    process that uses hypothesis), keeps `sis-pipeline validate` as quick as it is without the extra."""
    sys.modules.setdefault("hypothesis", None)  # type: ignore[arg-type]
    return main()


if __name__ == "__main__":
    sys.exit(console())
