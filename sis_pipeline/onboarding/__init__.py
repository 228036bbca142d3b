"""`sis-pipeline clients …`: onboard schools, print their instructions, rotate keys, list them (PRODUCT.md §9).

Handlers take the argparse namespace built in `sis_pipeline.cli` and return exit codes: 0 done, 1 the AWS
work failed (anything created was rolled back), 2 the request was refused before anything was created
(client already onboarded, unknown client, bad name, registry problem).
The secret access key is printed to stdout exactly once, by `onboard` and `rotate-credentials`; nothing
else (logs, registry, warehouse) ever sees it.
"""

from __future__ import annotations

import argparse
import logging
import sys

from botocore.exceptions import BotoCoreError, ClientError

from sis_pipeline import settings
from sis_pipeline.onboarding.instructions import aws_profile, render_instructions
from sis_pipeline.onboarding.listing import client_rows, render_table
from sis_pipeline.onboarding.provision import (
    AccessKey,
    OnboardingError,
    PreconditionError,
    Provisioned,
    default_bucket_name,
    iam_user_name,
    provision_client,
    rotate_access_key,
)
from sis_pipeline.registry import Registry, RegistryError, load_registry
from sis_pipeline.registry_writer import add_client, check_client_can_be_added

__all__ = [
    "run_instructions_command",
    "run_list_command",
    "run_onboard_command",
    "run_rotate_command",
]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger(__name__)


def _error(message: str) -> None:
    print(f"sis-pipeline: {message}", file=sys.stderr)


def _existing_registry() -> Registry | None:
    """The registry, or None when there is no file yet (onboarding the first school creates it)."""
    if not settings.clients_file().exists():
        return None
    return load_registry()


def _print_secret_once(key: AccessKey, what: str) -> None:
    # The one intentional place a secret is written anywhere; stdout only, never a logger.
    print(f"{what} for IAM user {key.user_name}: shown once, store it now (e.g. in a password manager).")
    print(f"  Access key ID:     {key.access_key_id}")
    print(f"  Secret access key: {key.secret}")
    print()


def run_onboard_command(args: argparse.Namespace) -> int:
    """Create bucket, IAM user, policy and key for a new school; register it; print secret and instructions."""
    client_id: str = args.id
    registry = _existing_registry()
    if registry is not None and client_id in registry:
        _error(f"client {client_id!r} is already in {registry.source}; nothing was created")
        return EXIT_USAGE
    bucket = args.bucket or default_bucket_name(client_id)
    if registry is not None:
        owners = [c.id for c in registry.values() if c.bucket == bucket]
        if owners:
            # The policy grants the whole bucket, so sharing one would let schools read each other's file.
            _error(f"bucket {bucket!r} already belongs to client {owners[0]!r}; each school needs its own")
            return EXIT_USAGE
    entry = {
        "name": args.name,
        "bucket": bucket,
        "key": args.key,
        "region": args.region,
        "sync": args.sync,
        "auto_sync_enabled": False,
    }
    try:
        iam_user_name(client_id)
        check_client_can_be_added(client_id, entry)  # a bad id or name fails here, before AWS is touched
        provisioned = provision_client(
            client_id,
            bucket,
            args.region,
            after=lambda _done: add_client(client_id, entry),
        )
    except (PreconditionError, RegistryError) as exc:
        _error(f"{exc}\nnothing was created")
        return EXIT_USAGE
    except OnboardingError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except (ClientError, BotoCoreError) as exc:  # a pre-check call failed: nothing was created
        _error(f"AWS refused a check before onboarding client {client_id!r}: {exc}\nnothing was created")
        return EXIT_FAILED
    log.info("onboarded client %s (bucket %s)", client_id, provisioned.bucket)
    _report_onboarded(provisioned)
    print(render_instructions(load_registry()[client_id]))
    return EXIT_OK


def _report_onboarded(provisioned: Provisioned) -> None:
    origin = "created" if provisioned.bucket_created else "existing, secured"
    print(
        f"Onboarded client {provisioned.client_id}: bucket {provisioned.bucket} ({origin}), region "
        f"{provisioned.region}, registered with auto_sync_enabled: false (files are previewed until you "
        f"review the first one and turn it on in {settings.clients_file()})."
    )
    print()
    _print_secret_once(provisioned.access_key, "Credentials")
    print(
        f"Give the school the keys above through a secure channel, and the instructions below "
        f"(again any time: sis-pipeline clients instructions {provisioned.client_id})."
    )
    print()


def _lookup(client_id: str) -> tuple[Registry, int | None]:
    registry = load_registry()
    if client_id not in registry:
        known = ", ".join(registry) or "none"
        _error(f"unknown client {client_id!r} in {registry.source} (known: {known})")
        return registry, EXIT_USAGE
    return registry, None


def run_instructions_command(args: argparse.Namespace) -> int:
    """Print the setup instructions for a registered school (no AWS calls, no secrets)."""
    registry, failed = _lookup(args.id)
    if failed is not None:
        return failed
    print(render_instructions(registry[args.id]))
    return EXIT_OK


def run_rotate_command(args: argparse.Namespace) -> int:
    """New access key for the school's user; the old one deactivated then deleted; the new secret printed once."""
    registry, failed = _lookup(args.id)
    if failed is not None:
        return failed
    client = registry[args.id]
    try:
        result = rotate_access_key(client.id)
    except (OnboardingError, PreconditionError) as exc:
        _error(f"{exc}\nthe school's keys were not changed")
        return EXIT_FAILED
    except (ClientError, BotoCoreError) as exc:
        _error(f"rotating the credentials of client {client.id!r} failed: {exc}")
        return EXIT_FAILED
    log.info("rotated credentials of client %s (%d old key(s) removed)", client.id, len(result.removed))
    _print_secret_once(result.new_key, "New credentials")
    if result.removed:
        print(
            f"Removed old key(s): {', '.join(result.removed)}. Uploads with them now fail until the school "
            f"re-runs: aws configure --profile {aws_profile(client)}"
        )
    for problem in result.problems:
        _error(problem)
    return EXIT_FAILED if result.problems else EXIT_OK


def run_list_command(args: argparse.Namespace) -> int:
    """Clients with bucket, sync mode, auto-sync, last upload (S3) and last sync (warehouse)."""
    registry = load_registry()
    print(render_table(client_rows(registry)))
    return EXIT_OK
