"""Onboarding and credentials (PRODUCT.md §9) against moto's server over HTTP with IAM enforcement ON.

The shared `moto_endpoint` fixture runs without auth for everyone else, so this module starts its own moto
server as a subprocess: an admin user (and two admins each denied one IAM call, to make onboarding fail for
real) is created while auth is off, then `/moto-api/reset-auth` switches enforcement on for good.
What moto enforces was checked in moto/iam/access_control.py: identity policies are evaluated per S3/IAM
action and resource ARN (Allow/Deny, wildcards); bucket policies are not, and a key's Inactive status is not
(so rotation is proven by the old key being deleted, which is what rotation does).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import requests
from botocore.exceptions import ClientError

from sis_pipeline.cli import main
from sis_pipeline.onboarding.provision import IAM_PATH, POLICY_NAME, iam_user_name, upload_policy
from sis_pipeline.registry import load_registry

VENV_BIN = Path(sys.executable).parent
REGISTRY_WITH_COMMENTS = """\
# Schools we import. Keep ids stable: they are Dagster partition keys.
clients:
  # the pilot school
  "pilot":
    name: Pilot High   # reviewed 2024-09
    bucket: sis-pilot-bucket
    auto_sync_enabled: true
"""
CSV = b"first_name,last_name,email\nAda,Lovelace,ada@example.org\n"


@dataclass(frozen=True)
class Keys:
    access_key_id: str
    secret: str


@dataclass(frozen=True)
class AuthMoto:
    endpoint: str
    admin: Keys
    admin_without_put_user_policy: Keys
    admin_without_create_access_key: Keys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _admin(iam, name: str, denied: str | None = None) -> Keys:
    statements = [{"Effect": "Allow", "Action": "*", "Resource": "*"}]
    if denied:
        statements.append({"Effect": "Deny", "Action": denied, "Resource": "*"})
    iam.create_user(UserName=name)
    iam.put_user_policy(
        UserName=name,
        PolicyName="admin",
        PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": statements}),
    )
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return Keys(key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="module")
def auth_moto() -> Iterator[AuthMoto]:
    """A moto server subprocess with IAM enforcement switched on after the admins were created."""
    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(f"{endpoint}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if time.monotonic() > deadline:
                    raise RuntimeError("moto server did not start") from None
                time.sleep(0.1)
        iam = boto3.client(
            "iam",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        moto = AuthMoto(
            endpoint=endpoint,
            admin=_admin(iam, "ops-admin"),
            admin_without_put_user_policy=_admin(iam, "ops-no-put-policy", denied="iam:PutUserPolicy"),
            admin_without_create_access_key=_admin(iam, "ops-no-create-key", denied="iam:CreateAccessKey"),
        )
        requests.post(f"{endpoint}/moto-api/reset-auth", data=b"0", timeout=5).raise_for_status()
        yield moto
    finally:
        server.terminate()
        server.wait(timeout=10)


def _client(service: str, endpoint: str, keys: Keys):
    return boto3.client(
        service,
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=keys.access_key_id,
        aws_secret_access_key=keys.secret,
    )


@dataclass
class Operator:
    """The environment of an operator running `sis-pipeline clients …` with admin keys."""

    moto: AuthMoto
    registry_path: Path
    monkeypatch: pytest.MonkeyPatch

    def use_keys(self, keys: Keys) -> None:
        self.monkeypatch.setenv("AWS_ACCESS_KEY_ID", keys.access_key_id)
        self.monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", keys.secret)
        # boto3's default session caches the credentials it first resolved; a new process would not have one.
        self.monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)

    def s3(self, keys: Keys | None = None):
        return _client("s3", self.moto.endpoint, keys or self.moto.admin)

    def iam(self, keys: Keys | None = None):
        return _client("iam", self.moto.endpoint, keys or self.moto.admin)

    def bucket_exists(self, bucket: str) -> bool:
        try:
            self.s3().head_bucket(Bucket=bucket)
        except ClientError:
            return False
        return True

    def sis_users(self) -> list[str]:
        users = self.iam().list_users(PathPrefix=IAM_PATH)["Users"]
        return [u["UserName"] for u in users]


@pytest.fixture
def operator(auth_moto, tmp_path, monkeypatch) -> Operator:
    registry_path = tmp_path / "clients.yaml"
    registry_path.write_text(REGISTRY_WITH_COMMENTS, encoding="utf-8")
    monkeypatch.setenv("SIS_CLIENTS_FILE", str(registry_path))
    monkeypatch.setenv("SIS_S3_ENDPOINT_URL", auth_moto.endpoint)
    op = Operator(auth_moto, registry_path, monkeypatch)
    op.use_keys(auth_moto.admin)
    return op


def _new_id() -> str:
    return f"s{uuid.uuid4().hex[:10]}"


@dataclass(frozen=True)
class Onboarded:
    client_id: str
    bucket: str
    keys: Keys
    stdout: str


_KEY_ID = re.compile(r"Access key ID:\s+(\S+)")
_SECRET = re.compile(r"Secret access key:\s+(\S+)")


def _keys_from(stdout: str) -> Keys:
    return Keys(_KEY_ID.search(stdout).group(1), _SECRET.search(stdout).group(1))


def onboard(capsys, *extra: str, client_id: str | None = None) -> Onboarded:
    client_id = client_id or _new_id()
    code = main(["clients", "onboard", client_id, "--name", f"School {client_id}", *extra])
    out, err = capsys.readouterr()
    assert code == 0, err
    bucket = load_registry()[client_id].bucket
    return Onboarded(client_id, bucket, _keys_from(out), out)


def _denied(call) -> str:
    with pytest.raises(ClientError) as raised:
        call()
    return raised.value.response["Error"]["Code"]


# --- isolation: what the school's key can and cannot do ---------------------------------------------------


def test_school_key_can_upload_read_back_and_list_its_own_bucket(operator, capsys):
    school = onboard(capsys)
    s3 = operator.s3(school.keys)
    s3.put_object(Bucket=school.bucket, Key="student_feed.csv", Body=CSV)
    assert s3.get_object(Bucket=school.bucket, Key="student_feed.csv")["Body"].read() == CSV
    listed = s3.list_objects_v2(Bucket=school.bucket)["Contents"]
    assert [o["Key"] for o in listed] == ["student_feed.csv"]


def test_school_key_is_denied_on_another_schools_bucket(operator, capsys):
    school, other = onboard(capsys), onboard(capsys)
    operator.s3().put_object(Bucket=other.bucket, Key="student_feed.csv", Body=CSV)
    s3 = operator.s3(school.keys)
    assert (
        _denied(lambda: s3.put_object(Bucket=other.bucket, Key="student_feed.csv", Body=b"x"))
        == "AccessDenied"
    )
    assert _denied(lambda: s3.get_object(Bucket=other.bucket, Key="student_feed.csv")) == "AccessDenied"
    assert _denied(lambda: s3.list_objects_v2(Bucket=other.bucket)) == "AccessDenied"


def test_school_key_cannot_delete_objects(operator, capsys):
    school = onboard(capsys)
    s3 = operator.s3(school.keys)
    s3.put_object(Bucket=school.bucket, Key="student_feed.csv", Body=CSV)
    assert _denied(lambda: s3.delete_object(Bucket=school.bucket, Key="student_feed.csv")) == "AccessDenied"
    batch = s3.delete_objects(Bucket=school.bucket, Delete={"Objects": [{"Key": "student_feed.csv"}]})
    assert [e["Code"] for e in batch["Errors"]] == ["AccessDenied"]
    versions = operator.s3().list_object_versions(Bucket=school.bucket)
    assert len(versions["Versions"]) == 1 and not versions.get("DeleteMarkers")


def test_school_key_cannot_change_bucket_policy_or_settings(operator, capsys):
    school = onboard(capsys)
    s3 = operator.s3(school.keys)
    public_read = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": "*",
                "Action": "s3:GetObject",
                "Resource": f"arn:aws:s3:::{school.bucket}/*",
            }
        ],
    }
    assert _denied(lambda: s3.put_bucket_policy(Bucket=school.bucket, Policy=json.dumps(public_read))) == (
        "AccessDenied"
    )
    assert _denied(lambda: s3.delete_public_access_block(Bucket=school.bucket)) == "AccessDenied"
    assert (
        _denied(
            lambda: s3.put_bucket_versioning(
                Bucket=school.bucket, VersioningConfiguration={"Status": "Suspended"}
            )
        )
        == "AccessDenied"
    )
    assert _denied(lambda: s3.list_buckets()) == "AccessDenied"


def test_school_key_cannot_call_iam(operator, capsys):
    school = onboard(capsys)
    iam = operator.iam(school.keys)
    user = iam_user_name(school.client_id)
    assert _denied(lambda: iam.create_access_key(UserName=user)) == "AccessDenied"
    assert _denied(lambda: iam.put_user_policy(UserName=user, PolicyName="x", PolicyDocument="{}")) == (
        "AccessDenied"
    )


# --- what onboarding sets up ----------------------------------------------------------------------------


def test_bucket_settings_read_back_as_set(operator, capsys):
    school = onboard(capsys)
    s3 = operator.s3()
    block = s3.get_public_access_block(Bucket=school.bucket)["PublicAccessBlockConfiguration"]
    assert block == {
        "BlockPublicAcls": True,
        "IgnorePublicAcls": True,
        "BlockPublicPolicy": True,
        "RestrictPublicBuckets": True,
    }
    assert s3.get_bucket_versioning(Bucket=school.bucket)["Status"] == "Enabled"
    rules = s3.get_bucket_encryption(Bucket=school.bucket)["ServerSideEncryptionConfiguration"]["Rules"]
    assert rules[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    tags = {t["Key"]: t["Value"] for t in s3.get_bucket_tagging(Bucket=school.bucket)["TagSet"]}
    assert tags["sis-pipeline:client-id"] == school.client_id


def test_default_bucket_name_is_derived_from_the_client_id(operator, capsys):
    school = onboard(capsys, client_id=f"Big_School-{uuid.uuid4().hex[:6]}")
    assert re.fullmatch(r"sis-big-school-[0-9a-f]{6}-[0-9a-f]{8}", school.bucket)


def test_iam_user_is_marked_as_ours_and_has_only_the_upload_policy(operator, capsys):
    school = onboard(capsys)
    iam = operator.iam()
    user_name = iam_user_name(school.client_id)
    user = iam.get_user(UserName=user_name)["User"]
    assert user["Path"] == IAM_PATH
    tags = {t["Key"]: t["Value"] for t in iam.list_user_tags(UserName=user_name)["Tags"]}
    assert tags == {"managed-by": "sis-pipeline", "sis-pipeline:client-id": school.client_id}
    assert iam.list_user_policies(UserName=user_name)["PolicyNames"] == [POLICY_NAME]
    assert iam.list_attached_user_policies(UserName=user_name)["AttachedPolicies"] == []
    document = iam.get_user_policy(UserName=user_name, PolicyName=POLICY_NAME)["PolicyDocument"]
    if isinstance(document, str):
        document = json.loads(document)
    assert document == upload_policy(school.bucket)
    actions = {
        a
        for s in document["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert actions == {"s3:PutObject", "s3:GetObject", "s3:ListBucket"}


def test_registry_keeps_its_comments_and_the_new_client_loads_with_auto_sync_off(operator, capsys):
    school = onboard(capsys, "--sync", "daily", "--key", "exports/roster.csv")
    text = operator.registry_path.read_text(encoding="utf-8")
    assert text.startswith(REGISTRY_WITH_COMMENTS.rstrip("\n"))
    assert "# the pilot school" in text and "# reviewed 2024-09" in text
    registry = load_registry()
    client = registry[school.client_id]
    assert client.auto_sync_enabled is False
    assert (client.sync, client.key, client.region) == ("daily", "exports/roster.csv", "us-east-1")
    assert registry["pilot"].auto_sync_enabled is True


def test_onboard_prints_the_instructions_after_the_secret(operator, capsys):
    school = onboard(capsys)
    secret_at = school.stdout.index(school.keys.secret)
    assert school.stdout.index(f"Bucket:    {school.bucket}") > secret_at
    assert school.stdout.count(school.keys.secret) == 1


# --- refusing and rolling back --------------------------------------------------------------------------


def test_rerunning_onboard_for_a_registered_client_fails_and_leaves_one_user(operator, capsys):
    school = onboard(capsys)
    registry_before = operator.registry_path.read_bytes()
    code = main(["clients", "onboard", school.client_id, "--name", "Again"])
    out, err = capsys.readouterr()
    assert code == 2
    assert "already in" in err and "nothing was created" in err
    assert "Secret access key" not in out
    user_name = iam_user_name(school.client_id)
    assert operator.sis_users().count(user_name) == 1
    assert len(operator.iam().list_access_keys(UserName=user_name)["AccessKeyMetadata"]) == 1
    assert operator.registry_path.read_bytes() == registry_before


def test_onboard_refuses_when_the_iam_user_exists_but_the_client_is_not_registered(operator, capsys):
    client_id = _new_id()
    operator.iam().create_user(UserName=iam_user_name(client_id), Path=IAM_PATH)
    bucket = f"sis-{client_id}-explicit"
    code = main(["clients", "onboard", client_id, "--name", "X", "--bucket", bucket])
    _, err = capsys.readouterr()
    assert code == 2
    assert "already exists" in err
    assert not operator.bucket_exists(bucket)
    assert operator.iam().list_access_keys(UserName=iam_user_name(client_id))["AccessKeyMetadata"] == []


def test_onboard_refuses_a_bucket_already_used_by_another_client(operator, capsys):
    code = main(["clients", "onboard", _new_id(), "--name", "X", "--bucket", "sis-pilot-bucket"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "already belongs to client 'pilot'" in err


def test_onboard_refuses_an_invalid_bucket_name_before_creating_anything(operator, capsys):
    client_id = _new_id()
    code = main(["clients", "onboard", client_id, "--name", "X", "--bucket", "Not_A_Bucket"])
    _, err = capsys.readouterr()
    assert code == 2
    assert "not a valid bucket name" in err
    assert iam_user_name(client_id) not in operator.sis_users()


@pytest.mark.parametrize(
    ("admin", "failing_step"),
    [
        ("admin_without_put_user_policy", "attach the upload policy"),
        ("admin_without_create_access_key", "create the access key"),
    ],
)
def test_failed_iam_call_rolls_back_everything_onboarding_created(operator, capsys, admin, failing_step):
    operator.use_keys(getattr(operator.moto, admin))
    client_id = _new_id()
    bucket = f"sis-{client_id}-rollback"
    registry_before = operator.registry_path.read_bytes()
    code = main(["clients", "onboard", client_id, "--name", "X", "--bucket", bucket])
    out, err = capsys.readouterr()
    assert code == 1
    assert f"failed when trying to {failing_step}" in err and "AccessDenied" in err
    assert "LEFT BEHIND" not in err
    assert iam_user_name(client_id) not in operator.sis_users()
    assert not operator.bucket_exists(bucket)
    assert operator.registry_path.read_bytes() == registry_before
    assert "Secret access key" not in out


def test_failed_registry_write_rolls_back_the_aws_resources(operator, capsys, monkeypatch):
    def disk_full(file, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("sis_pipeline.registry_writer._atomic_write", disk_full)
    client_id = _new_id()
    bucket = f"sis-{client_id}-diskfull"
    code = main(["clients", "onboard", client_id, "--name", "X", "--bucket", bucket])
    out, err = capsys.readouterr()
    assert code == 1
    assert "record the client in the registry" in err
    assert iam_user_name(client_id) not in operator.sis_users()
    assert not operator.bucket_exists(bucket)
    assert "Secret access key" not in out


def test_rollback_keeps_a_bucket_that_existed_before_onboarding(operator, capsys):
    client_id = _new_id()
    bucket = f"sis-{client_id}-preexisting"
    operator.s3().create_bucket(Bucket=bucket)
    operator.use_keys(operator.moto.admin_without_put_user_policy)
    code = main(["clients", "onboard", client_id, "--name", "X", "--bucket", bucket])
    _, err = capsys.readouterr()
    assert code == 1
    assert f"kept: bucket {bucket}" in err
    assert operator.bucket_exists(bucket)
    assert iam_user_name(client_id) not in operator.sis_users()


# --- rotation ---------------------------------------------------------------------------------------------


def test_after_rotation_the_old_key_is_denied_and_the_new_key_works(operator, capsys):
    school = onboard(capsys)
    code = main(["clients", "rotate-credentials", school.client_id])
    out, _ = capsys.readouterr()
    assert code == 0
    new_keys = _keys_from(out)
    assert new_keys.access_key_id != school.keys.access_key_id
    assert out.count(new_keys.secret) == 1
    old = operator.s3(school.keys)
    assert _denied(lambda: old.put_object(Bucket=school.bucket, Key="student_feed.csv", Body=CSV)) == (
        "InvalidAccessKeyId"
    )
    new = operator.s3(new_keys)
    new.put_object(Bucket=school.bucket, Key="student_feed.csv", Body=CSV)
    assert new.get_object(Bucket=school.bucket, Key="student_feed.csv")["Body"].read() == CSV
    listed = operator.iam().list_access_keys(UserName=iam_user_name(school.client_id))["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in listed] == [new_keys.access_key_id]


def test_rotation_with_two_active_keys_refuses_and_changes_nothing(operator, capsys):
    school = onboard(capsys)
    user_name = iam_user_name(school.client_id)
    operator.iam().create_access_key(UserName=user_name)
    before = operator.iam().list_access_keys(UserName=user_name)["AccessKeyMetadata"]
    code = main(["clients", "rotate-credentials", school.client_id])
    out, err = capsys.readouterr()
    assert code == 1
    assert "already has 2 active access keys" in err and "not changed" in err
    assert "Secret access key" not in out
    after = operator.iam().list_access_keys(UserName=user_name)["AccessKeyMetadata"]
    assert [(k["AccessKeyId"], k["Status"]) for k in after] == [
        (k["AccessKeyId"], k["Status"]) for k in before
    ]


def test_rotation_first_deletes_an_inactive_leftover_key_to_free_a_slot(operator, capsys):
    school = onboard(capsys)
    user_name = iam_user_name(school.client_id)
    leftover = operator.iam().create_access_key(UserName=user_name)["AccessKey"]["AccessKeyId"]
    operator.iam().update_access_key(UserName=user_name, AccessKeyId=leftover, Status="Inactive")
    code = main(["clients", "rotate-credentials", school.client_id])
    out, _ = capsys.readouterr()
    assert code == 0
    remaining = operator.iam().list_access_keys(UserName=user_name)["AccessKeyMetadata"]
    assert [k["AccessKeyId"] for k in remaining] == [_keys_from(out).access_key_id]


def test_rotation_of_an_unknown_client_is_a_usage_error(operator, capsys):
    assert main(["clients", "rotate-credentials", "no-such-school"]) == 2
    assert "unknown client 'no-such-school'" in capsys.readouterr().err


# --- the printed instructions work with the real AWS CLI ----------------------------------------------------


def _aws(args: list[str], env: dict[str, str], endpoint: str) -> subprocess.CompletedProcess[str]:
    assert args[0] == "aws"
    return subprocess.run(
        [str(VENV_BIN / "aws"), *args[1:], "--endpoint-url", endpoint],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_printed_aws_cli_upload_and_verify_lines_deliver_the_file(operator, capsys, tmp_path):
    school = onboard(capsys)
    main(["clients", "instructions", school.client_id])
    text = capsys.readouterr().out
    upload = next(
        line.split(":", 1)[1].strip() for line in text.splitlines() if "Linux/macOS:  aws s3 cp" in line
    )
    verify = next(line.strip() for line in text.splitlines() if line.strip().startswith("aws s3 ls"))
    profile = re.search(r"aws configure --profile (\S+)", text).group(1)

    # The school answers `aws configure --profile …`; `aws configure set` writes the same two files.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AWS_ACCESS") and not k.startswith("AWS_SECRET")
    }
    for setting, value in (
        ("aws_access_key_id", school.keys.access_key_id),
        ("aws_secret_access_key", school.keys.secret),
        ("region", "us-east-1"),
    ):
        subprocess.run(
            [str(VENV_BIN / "aws"), "configure", "set", setting, value, "--profile", profile],
            env=env,
            check=True,
            timeout=60,
        )
    local = tmp_path / "student_feed.csv"
    local.write_bytes(CSV)
    argv = shlex.split(upload)
    assert argv[3] == "/path/to/student_feed.csv"  # the placeholder the school replaces with its export
    argv[3] = str(local)
    done = _aws(argv, env, operator.moto.endpoint)
    assert done.returncode == 0, done.stderr
    got = operator.s3().get_object(Bucket=school.bucket, Key="student_feed.csv")["Body"].read()
    assert got == CSV
    listed = _aws(shlex.split(verify), env, operator.moto.endpoint)
    assert listed.returncode == 0, listed.stderr
    assert "student_feed.csv" in listed.stdout


# --- secrets --------------------------------------------------------------------------------------------


def test_secrets_never_reach_the_registry_or_the_logs(operator, capsys, caplog):
    caplog.set_level(logging.DEBUG)  # botocore logs response bodies at DEBUG: the worst case
    school = onboard(capsys)
    main(["clients", "rotate-credentials", school.client_id])
    rotated = _keys_from(capsys.readouterr().out)
    registry_text = operator.registry_path.read_text(encoding="utf-8")
    logged = caplog.text + "".join(str(r.args) for r in caplog.records)
    for secret in (school.keys.secret, rotated.secret):
        assert secret not in registry_text
        assert secret not in logged
    assert any("created access key" in r.getMessage() for r in caplog.records)


# --- clients list -----------------------------------------------------------------------------------------


def _row(out: str, client_id: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(client_id + " "))


def test_list_shows_none_before_an_upload_and_the_time_after(operator, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "sis_pipeline.warehouse", None)  # warehouse not installed: "unknown"
    school = onboard(capsys)
    assert main(["clients", "list"]) == 0
    row = _row(capsys.readouterr().out, school.client_id)
    assert re.search(r"\bweekly\s+off\s+none\s+unknown$", row)
    operator.s3(school.keys).put_object(Bucket=school.bucket, Key="student_feed.csv", Body=CSV)
    assert main(["clients", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"off\s+\d{4}-\d\d-\d\d \d\d:\d\d UTC\s+unknown$", _row(out, school.client_id))
    assert re.search(r"\bon\s+none\s+unknown$", _row(out, "pilot"))  # its bucket was never created


def test_list_shows_the_last_sync_from_the_warehouse_sync_log(operator, capsys, monkeypatch, tmp_path):
    from sis_pipeline.warehouse import Warehouse

    monkeypatch.setenv("SIS_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'warehouse.sqlite'}")
    with Warehouse() as warehouse:
        warehouse.upgrade()
        warehouse.record(
            client_id="pilot", status="preview", file=None, validated=None, run_id=None, message=""
        )
    school = onboard(capsys)
    assert main(["clients", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\bpreview \d{4}-\d\d-\d\d \d\d:\d\d$", _row(out, "pilot"))
    assert _row(out, school.client_id).endswith("never")


def test_list_shows_unknown_when_the_warehouse_has_no_tables(operator, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("SIS_WAREHOUSE_URL", f"sqlite:///{tmp_path / 'empty.sqlite'}")  # never migrated
    assert main(["clients", "list"]) == 0
    assert _row(capsys.readouterr().out, "pilot").endswith("unknown")


def test_console_script_lists_the_onboarded_clients(operator, capsys):
    school = onboard(capsys)
    done = subprocess.run(
        [str(VENV_BIN / "sis-pipeline"), "clients", "list"],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert school.bucket in _row(done.stdout, school.client_id)
