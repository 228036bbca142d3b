"""AWS side of onboarding (PRODUCT.md §9): a private bucket, a least-privilege IAM user, its access keys.

Every resource created is recorded on a rollback stack; if a later step fails, what this run created is
removed in reverse order (access key, inline policy, user, and the bucket if this run created it and it is
still empty), so a failed onboarding can simply be re-run. Secrets live only in `AccessKey.secret`, which is
kept out of `repr()` and out of every log line.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from sis_pipeline import aws_clients

log = logging.getLogger(__name__)

#: IAM path marking users as sis-pipeline's; `aws iam list-users --path-prefix /sis-pipeline/` lists them.
IAM_PATH = "/sis-pipeline/"
IAM_USER_PREFIX = "sis-pipeline-"
POLICY_NAME = "sis-pipeline-upload"
MANAGED_BY_TAG = {"Key": "managed-by", "Value": "sis-pipeline"}
CLIENT_TAG_KEY = "sis-pipeline:client-id"
#: AWS allows two access keys per user; rotation needs one free slot.
MAX_KEYS_PER_USER = 2

_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_IAM_USER_MAX = 64


class OnboardingError(RuntimeError):
    """Provisioning failed; the message says what was rolled back and what (if anything) was left behind."""


class PreconditionError(ValueError):
    """The request cannot be carried out as asked (client exists, bad name); nothing was created."""


@dataclass(frozen=True)
class AccessKey:
    """An IAM access key. `secret` is shown once to the operator and never logged or stored."""

    user_name: str
    access_key_id: str
    secret: str = field(repr=False)


def iam_user_name(client_id: str) -> str:
    """The school's IAM user: `sis-pipeline-<id>` (client ids are already IAM-safe characters)."""
    name = IAM_USER_PREFIX + client_id
    if len(name) > _IAM_USER_MAX:
        raise PreconditionError(
            f"client id {client_id!r} is too long for an IAM user name "
            f"(at most {_IAM_USER_MAX - len(IAM_USER_PREFIX)} characters)"
        )
    return name


def default_bucket_name(client_id: str) -> str:
    """`sis-<id>-<8 random hex>`: ids lower-cased, `_` to `-`; the suffix avoids global name clashes."""
    stem = re.sub(r"[^a-z0-9-]+", "-", client_id.lower()).strip("-") or "client"
    suffix = secrets.token_hex(4)
    return f"sis-{stem[: 63 - len('sis--') - len(suffix)].rstrip('-')}-{suffix}"


def check_bucket_name(bucket: str) -> str:
    """Reject names S3 would reject, before anything is created."""
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise PreconditionError(
            f"{bucket!r} is not a valid bucket name (3-63 characters: lower-case letters, digits, '.', '-')"
        )
    return bucket


def upload_policy(bucket: str) -> dict[str, Any]:
    """The school's inline policy: put/get objects in its bucket and list that bucket, nothing else."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadWriteTheRosterFile",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject"],
                "Resource": f"arn:aws:s3:::{bucket}/*",
            },
            {
                "Sid": "ListTheBucket",
                "Effect": "Allow",
                "Action": "s3:ListBucket",
                "Resource": f"arn:aws:s3:::{bucket}",
            },
        ],
    }


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def iam_user_exists(iam: Any, user_name: str) -> bool:
    try:
        iam.get_user(UserName=user_name)
    except ClientError as exc:
        if _error_code(exc) == "NoSuchEntity":
            return False
        raise
    return True


def _bucket_state(s3: Any, bucket: str) -> str:
    """`absent`, `ours` (we can reach it) or `foreign` (exists, owned by someone else)."""
    try:
        s3.head_bucket(Bucket=bucket)
    except ClientError as exc:
        code = _error_code(exc)
        if code in ("404", "NoSuchBucket", "NotFound"):
            return "absent"
        if code in ("403", "AccessDenied", "Forbidden"):
            return "foreign"
        raise
    return "ours"


def _bucket_is_empty(s3: Any, bucket: str) -> bool:
    listing = s3.list_object_versions(Bucket=bucket, MaxKeys=1)
    return not listing.get("Versions") and not listing.get("DeleteMarkers")


class _Rollback:
    """Undo steps for what this run created, run newest first when a later step fails."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], str | None]]] = []

    def push(self, what: str, undo: Callable[[], str | None]) -> None:
        self._steps.append((what, undo))

    def run(self) -> tuple[list[str], list[str]]:
        """Returns (undone, left behind) descriptions."""
        undone: list[str] = []
        left: list[str] = []
        for what, undo in reversed(self._steps):
            try:
                problem = undo()
            except Exception as exc:  # keep undoing the rest; report what could not be removed
                problem = f"{type(exc).__name__}: {exc}"
            if problem:
                left.append(f"{what} ({problem})")
                log.warning("rollback: could not remove %s: %s", what, problem)
            else:
                undone.append(what)
                log.info("rollback: removed %s", what)
        return undone, left


def _hide_response_bodies_with_secrets() -> None:
    """botocore logs raw response bodies at DEBUG; CreateAccessKey's carries the secret. Drop those records."""

    def no_secret(record: logging.LogRecord) -> bool:
        try:
            return "SecretAccessKey" not in record.getMessage()
        except Exception:  # a record that cannot be formatted is dropped rather than risked
            return False

    for name in ("botocore.parsers", "botocore.endpoint", "botocore.hooks"):
        logger = logging.getLogger(name)
        if not any(getattr(f, "_sis_secret_filter", False) for f in logger.filters):
            no_secret._sis_secret_filter = True  # type: ignore[attr-defined]
            logger.addFilter(no_secret)


def _create_access_key(iam: Any, user_name: str) -> AccessKey:
    _hide_response_bodies_with_secrets()
    created = iam.create_access_key(UserName=user_name)["AccessKey"]
    key = AccessKey(user_name, created["AccessKeyId"], created["SecretAccessKey"])
    log.info("created access key %s for IAM user %s", key.access_key_id, user_name)
    return key


@dataclass(frozen=True)
class Provisioned:
    """What onboarding created (or reused) in AWS for one school."""

    client_id: str
    bucket: str
    region: str
    bucket_created: bool
    access_key: AccessKey


def provision_client(
    client_id: str,
    bucket: str,
    region: str,
    *,
    after: Callable[[Provisioned], None] | None = None,
) -> Provisioned:
    """Create the bucket (or secure an existing one of ours), the IAM user, its policy and an access key.

    `after` runs last (onboarding writes the registry there); if it raises, everything is rolled back too.
    Raises PreconditionError before creating anything when the user exists or the bucket is someone else's;
    OnboardingError when a step fails (after rolling back).
    """
    user_name = iam_user_name(client_id)
    check_bucket_name(bucket)
    iam = aws_clients.iam_client()
    s3 = aws_clients.s3_client(region)
    if iam_user_exists(iam, user_name):
        raise PreconditionError(
            f"IAM user {user_name!r} already exists: client {client_id!r} looks onboarded already "
            f"(use 'sis-pipeline clients rotate-credentials {client_id}' for a new key)"
        )
    state = _bucket_state(s3, bucket)
    if state == "foreign":
        raise PreconditionError(
            f"bucket {bucket!r} exists and belongs to another account; choose another name"
        )

    rollback = _Rollback()
    step = "start"
    try:
        step = "create the bucket"
        created_bucket = state == "absent"
        if created_bucket:
            _create_bucket(s3, bucket, region)
            rollback.push(f"bucket {bucket}", lambda: _delete_bucket_if_empty(s3, bucket))
            log.info("created bucket %s in %s", bucket, region)
        else:
            log.info("securing existing bucket %s", bucket)
        step = "secure the bucket"
        secure_bucket(s3, bucket, client_id)

        step = "create the IAM user"
        iam.create_user(
            UserName=user_name,
            Path=IAM_PATH,
            Tags=[MANAGED_BY_TAG, {"Key": CLIENT_TAG_KEY, "Value": client_id}],
        )
        rollback.push(f"IAM user {user_name}", lambda: _call(iam.delete_user, UserName=user_name))
        log.info("created IAM user %s", user_name)

        step = "attach the upload policy"
        iam.put_user_policy(
            UserName=user_name, PolicyName=POLICY_NAME, PolicyDocument=json.dumps(upload_policy(bucket))
        )
        rollback.push(
            f"policy {POLICY_NAME} of {user_name}",
            lambda: _call(iam.delete_user_policy, UserName=user_name, PolicyName=POLICY_NAME),
        )
        log.info("attached policy %s to IAM user %s", POLICY_NAME, user_name)

        step = "create the access key"
        key = _create_access_key(iam, user_name)
        rollback.push(
            f"access key {key.access_key_id}",
            lambda: _call(iam.delete_access_key, UserName=user_name, AccessKeyId=key.access_key_id),
        )

        provisioned = Provisioned(client_id, bucket, region, created_bucket, key)
        step = "record the client in the registry"
        if after is not None:
            after(provisioned)
        return provisioned
    except BaseException as exc:  # Ctrl-C mid-way rolls back too
        log.warning("onboarding of client %s failed at step %r; rolling back", client_id, step)
        undone, left = rollback.run()
        message = f"onboarding client {client_id!r} failed when trying to {step}: {_describe(exc)}"
        message += f"\n  rolled back: {', '.join(undone) or 'nothing had been created'}"
        if state != "absent":
            message += f"\n  kept: bucket {bucket} (it existed before this run)"
        if left:
            message += "\n  LEFT BEHIND, remove by hand: " + "; ".join(left)
        if not isinstance(exc, Exception):
            log.error("%s", message)  # interrupted: say what was undone before the interrupt propagates
            raise
        raise OnboardingError(message) from exc


def _call(operation: Callable[..., Any], **kwargs: Any) -> None:
    """Run an undo call, discarding its response (undo steps return a problem text or None)."""
    operation(**kwargs)


def _describe(exc: Exception) -> str:
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        return f"{error.get('Code', 'error')}: {error.get('Message', '')}".rstrip(": ")
    return f"{type(exc).__name__}: {exc}"


def _create_bucket(s3: Any, bucket: str, region: str) -> None:
    if region == "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
        s3.create_bucket(Bucket=bucket)
    else:
        s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})


def secure_bucket(s3: Any, bucket: str, client_id: str) -> None:
    """Public access blocked (all four), versioning on (replays need old versions), SSE-S3 by default."""
    s3.put_public_access_block(
        Bucket=bucket,
        PublicAccessBlockConfiguration={
            "BlockPublicAcls": True,
            "IgnorePublicAcls": True,
            "BlockPublicPolicy": True,
            "RestrictPublicBuckets": True,
        },
    )
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    s3.put_bucket_encryption(
        Bucket=bucket,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_bucket_tagging(
        Bucket=bucket, Tagging={"TagSet": [MANAGED_BY_TAG, {"Key": CLIENT_TAG_KEY, "Value": client_id}]}
    )


def _delete_bucket_if_empty(s3: Any, bucket: str) -> str | None:
    if not _bucket_is_empty(s3, bucket):
        return "not empty, kept"
    s3.delete_bucket(Bucket=bucket)
    return None


@dataclass(frozen=True)
class KeyInfo:
    access_key_id: str
    status: str
    created: datetime | None


def list_keys(iam: Any, user_name: str) -> list[KeyInfo]:
    listing = iam.list_access_keys(UserName=user_name)["AccessKeyMetadata"]
    return [KeyInfo(k["AccessKeyId"], k["Status"], k.get("CreateDate")) for k in listing]


@dataclass(frozen=True)
class RotationResult:
    new_key: AccessKey
    removed: list[str]
    problems: list[str]


def rotate_access_key(client_id: str) -> RotationResult:
    """Create a new key for the school's user, then deactivate and delete the old ones.

    Inactive keys (left by an interrupted rotation; nothing can use them) are deleted first to free a slot.
    With two active keys we cannot tell which one the school uses, so nothing is changed and
    OnboardingError names both. Returns the new key, the ids of the keys removed and any old key that could
    not be removed (the new key is returned even then, so its secret is not lost).
    """
    user_name = iam_user_name(client_id)
    iam = aws_clients.iam_client()
    try:
        user = iam.get_user(UserName=user_name)["User"]
    except ClientError as exc:
        if _error_code(exc) == "NoSuchEntity":
            raise OnboardingError(
                f"client {client_id!r} has no IAM user {user_name!r}; onboard it with "
                f"'sis-pipeline clients onboard {client_id} --name ...' first"
            ) from None
        raise
    if user.get("Path") != IAM_PATH:
        raise OnboardingError(
            f"IAM user {user_name!r} is not under {IAM_PATH}; not rotating a key we do not own"
        )

    removed: list[str] = []
    keys = list_keys(iam, user_name)
    for stale in [k for k in keys if k.status != "Active"]:
        iam.delete_access_key(UserName=user_name, AccessKeyId=stale.access_key_id)
        removed.append(stale.access_key_id)
        log.info("deleted inactive access key %s of IAM user %s", stale.access_key_id, user_name)
    active = [k for k in keys if k.status == "Active"]
    if len(active) >= MAX_KEYS_PER_USER:
        listed = ", ".join(f"{k.access_key_id} (created {k.created:%Y-%m-%d})" for k in active if k.created)
        raise OnboardingError(
            f"IAM user {user_name!r} already has {len(active)} active access keys ({listed}); AWS allows "
            f"{MAX_KEYS_PER_USER}. Find out which one the school uses (aws iam get-access-key-last-used), "
            f"delete the other (aws iam delete-access-key --user-name {user_name} --access-key-id ID), "
            "then rotate again."
        )

    new_key = _create_access_key(iam, user_name)
    problems: list[str] = []
    for old in active:
        # Deactivate first: if the delete then fails, the old key is already unusable. A failure here must
        # not lose the new secret, so it is reported alongside the new key instead of raised.
        try:
            iam.update_access_key(UserName=user_name, AccessKeyId=old.access_key_id, Status="Inactive")
            log.info("deactivated access key %s of IAM user %s", old.access_key_id, user_name)
            iam.delete_access_key(UserName=user_name, AccessKeyId=old.access_key_id)
            log.info("deleted access key %s of IAM user %s", old.access_key_id, user_name)
            removed.append(old.access_key_id)
        except (ClientError, BotoCoreError) as exc:
            log.warning("could not remove access key %s of IAM user %s", old.access_key_id, user_name)
            problems.append(
                f"old key {old.access_key_id} could not be removed ({_describe(exc)}); remove it by hand"
            )
    return RotationResult(new_key, removed, problems)
