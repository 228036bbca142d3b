"""Faults in S3, SQS and the upload sensor, with real components (issue 7).

S3 and SQS are moto's server over HTTP; faults come from `fault_proxy.FaultProxy`, a real HTTP proxy in
front of it that answers 500/503, drops connections, cuts bodies off, stops listening, or overwrites the
upload at the exact moment it relays a HeadObject. Runs are Dagster runs on Dagster's test instance; sensor
ticks are Dagster's own evaluation (`build_sensor_context`), and once the sensor daemon's real tick with the
instance's stored cursor.
"""

from __future__ import annotations

import json
import logging
import sys
import textwrap
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from dagster import instance_for_test

from sis_pipeline import aws_clients
from sis_pipeline.resources import EventQueueResource, SisS3Resource, default_resources
from sis_pipeline.s3 import S3RequestFailed
from sis_pipeline_tests.fault_proxy import FaultProxy, s3_op, sqs_op
from sis_pipeline_tests.orchestration_support import Harness, roster_csv, sensor_tick
from sis_pipeline_tests.warehouse_builders import dump

#: Requests per S3/SQS call in these tests (production: 5). Transient errors back off 50 ms, 100 ms, ...
ATTEMPTS = 3
VISIBILITY_SECONDS = 1


@dataclass
class FaultHarness(Harness):
    """The Dagster harness with S3 (and optionally SQS) behind the fault proxy, few attempts, short
    SQS visibility timeout."""

    sqs_endpoint: str = ""

    def resources(self) -> dict[str, Any]:
        resources = super().resources()
        resources["s3"] = SisS3Resource(
            endpoint_url=self.endpoint, region_name="us-east-1", max_attempts=ATTEMPTS
        )
        resources["events"] = EventQueueResource(
            queue_url=self.queue_url,
            endpoint_url=self.sqs_endpoint or self.endpoint,
            visibility_timeout_seconds=VISIBILITY_SECONDS,
            max_attempts=ATTEMPTS,
        )
        return resources


@pytest.fixture(scope="module")
def instance():
    """One Dagster test instance for the module: runs of different tests never share a warehouse."""
    with instance_for_test() as test_instance:
        yield test_instance


@pytest.fixture
def proxy(moto_endpoint):
    running = FaultProxy(moto_endpoint).start()
    yield running
    running.stop()


@pytest.fixture
def faulty(tmp_path, s3_client, proxy, moto_endpoint) -> FaultHarness:
    """Code under test reaches S3 through the proxy; the test itself sets up and uploads directly."""
    return FaultHarness(tmp=tmp_path, endpoint=proxy.url, s3=s3_client, sqs_endpoint=moto_endpoint)


def _failure_text(result) -> str:
    """The run's step failure with its whole cause chain, as the UI shows it."""
    failures = result.get_step_failure_events()
    assert failures, "the run did not fail"
    return failures[0].step_failure_data.error.to_string()


def _tables_but_the_log(harness) -> dict:
    snapshot = dump(harness.warehouse())
    snapshot.pop("sis_sync_log")
    return snapshot


def _emails(harness, client_id: str = "22") -> set[str]:
    return set(harness.warehouse().current_subscribers(client_id)["email"])


# --- retry policy --------------------------------------------------------------------------------------


def test_retry_policy_is_standard_5_attempts_for_runs_and_adaptive_8_for_admin_unless_aws_env_says(
    monkeypatch,
):
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    monkeypatch.delenv("AWS_RETRY_MODE", raising=False)
    resources = default_resources()
    assert resources["s3"].get_client().meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert resources["events"].client().meta.config.retries == {"mode": "standard", "total_max_attempts": 5}
    assert resources["s3"].get_client().meta.config.connect_timeout == aws_clients.CONNECT_TIMEOUT_SECONDS
    assert aws_clients.iam_client().meta.config.retries == {"mode": "adaptive", "total_max_attempts": 8}

    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "2")
    monkeypatch.setenv("AWS_RETRY_MODE", "adaptive")
    overridden = default_resources()
    assert overridden["s3"].get_client().meta.config.retries == {"mode": "adaptive", "total_max_attempts": 2}
    assert aws_clients.s3_client().meta.config.retries == {"mode": "adaptive", "total_max_attempts": 2}


# --- S3 faults during a run ----------------------------------------------------------------------------


def test_transient_s3_errors_fewer_than_the_attempts_are_retried_and_the_run_applies(faulty, instance, proxy):
    bucket = faulty.add_client("22")
    faulty.upload("22", roster_csv(30))
    proxy.fail(503, match=s3_op("HeadObject", bucket=bucket), times=ATTEMPTS - 1)
    proxy.fail(500, match=s3_op("GetObject", bucket=bucket), times=1)
    proxy.truncate(match=s3_op("GetObject", bucket=bucket), times=1)  # botocore does not retry bodies

    result = faulty.run(instance, "22")

    assert result.success
    assert proxy.seen("HeadObject", bucket) == ["503"] * (ATTEMPTS - 1) + ["200"]
    assert proxy.seen("GetObject", bucket) == ["500", "truncated", "200"]
    last = faulty.log("22").iloc[0]
    assert (last["status"], last["inserted"]) == ("applied", 30)
    assert len(_emails(faulty)) == 30


PERSISTENT_FAULTS = {
    "HeadObject answers 503": (
        lambda proxy, bucket: proxy.fail(503, match=s3_op("HeadObject", bucket=bucket)),
        "S3 HeadObject",
        "HTTP 503",
        ("HeadObject", "503"),
    ),
    "GetObject answers 500": (
        lambda proxy, bucket: proxy.fail(500, match=s3_op("GetObject", bucket=bucket)),
        "S3 GetObject",
        "HTTP 500 InternalError",
        ("GetObject", "500"),
    ),
    "GetObject connection dropped": (
        lambda proxy, bucket: proxy.drop(match=s3_op("GetObject", bucket=bucket)),
        "S3 GetObject",
        "ConnectionClosedError",
        ("GetObject", "dropped"),
    ),
    "GetObject body always cut off": (
        lambda proxy, bucket: proxy.truncate(match=s3_op("GetObject", bucket=bucket)),
        "S3 GetObject (reading the body)",
        "ResponseStreamingError",
        ("GetObject", "truncated"),
    ),
    "endpoint down": (
        lambda proxy, bucket: proxy.stop(),
        "S3 HeadObject",
        "EndpointConnectionError",
        None,
    ),
}


@pytest.mark.parametrize("fault", list(PERSISTENT_FAULTS))
def test_persistent_s3_fault_fails_the_run_naming_client_operation_and_endpoint_and_applies_nothing(
    faulty, instance, proxy, fault
):
    inject, operation, reason, attempts_seen = PERSISTENT_FAULTS[fault]
    bucket = faulty.add_client("22")
    faulty.upload("22", roster_csv(20))
    inject(proxy, bucket)

    result = faulty.run(instance, "22")

    assert not result.success
    failure = _failure_text(result)
    expected = f"client 22: {operation} of s3://{bucket}/student_feed.csv failed after"
    assert expected in failure and proxy.url in failure and reason in failure
    if attempts_seen:  # exactly the configured attempts in all, the first included
        op, outcome = attempts_seen
        assert proxy.seen(op, bucket) == [outcome] * ATTEMPTS
    log = faulty.log("22")
    assert list(log["status"]) == ["failed"]
    message = log.iloc[0]["message"]
    assert message.startswith("failed while reading the upload: ") and expected in message
    assert "@school.example.edu" not in message and "First" not in message
    assert len(faulty.warehouse().current_subscribers("22")) == 0


@pytest.mark.parametrize("fault", ["GetObject answers 500", "endpoint down"])
def test_s3_outage_leaves_the_warehouse_as_it_was_and_a_rerun_after_recovery_applies(
    faulty, instance, proxy, fault, warehouse_url
):
    faulty.warehouse_url = warehouse_url  # SQLite and PostgreSQL
    inject = PERSISTENT_FAULTS[fault][0]
    bucket = faulty.add_client("22", auto_deprovision=True, guard={"min_active": 1000})
    faulty.upload("22", roster_csv(20))
    assert faulty.run(instance, "22").success
    faulty.upload("22", roster_csv(25, start=10))  # 10 leave, 15 join
    before = _tables_but_the_log(faulty)

    inject(proxy, bucket)
    assert not faulty.run(instance, "22").success
    assert list(faulty.log("22")["status"]) == ["failed", "applied"]
    assert _tables_but_the_log(faulty) == before

    proxy.clear()
    if fault == "endpoint down":
        proxy.start()
    assert faulty.run(instance, "22").success
    assert list(faulty.log("22")["status"]) == ["applied", "failed", "applied"]
    state = faulty.warehouse().current_subscribers("22")
    active = set(state.loc[state["status"] == "active", "email"])
    assert active == {f"student{n}@school.example.edu" for n in range(10, 35)}


# --- the upload overwritten between HeadObject and GetObject -------------------------------------------


def _overwrite_after_head(faulty, proxy, bucket: str, data: bytes) -> dict:
    """Arrange for the school to overwrite the upload right after the proxy relays the run's HeadObject."""
    put: dict = {}
    proxy.after(
        s3_op("HeadObject", bucket=bucket),
        lambda: put.update(faulty.s3.put_object(Bucket=bucket, Key="student_feed.csv", Body=data)),
    )
    return put


def test_versioned_upload_overwritten_mid_run_imports_the_version_the_run_started_with(
    faulty, instance, proxy
):
    bucket = faulty.add_client("22")
    first = faulty.upload("22", roster_csv(5))
    second = _overwrite_after_head(faulty, proxy, bucket, roster_csv(7, start=100))

    result = faulty.run(instance, "22")

    assert result.success
    assert second, "the overwrite did not happen"
    assert faulty.s3.head_object(Bucket=bucket, Key="student_feed.csv")["VersionId"] == second["VersionId"]
    assert proxy.seen("HeadObject", bucket) == ["200"]  # one HeadObject per run, then the pinned read
    assert _emails(faulty) == {f"student{n}@school.example.edu" for n in range(5)}
    log = faulty.log("22").iloc[0]
    assert (log["status"], log["version_id"]) == ("applied", first["VersionId"])

    assert faulty.run(instance, "22").success  # the next run imports the upload that came in between
    log = faulty.log("22").iloc[0]
    assert (log["status"], log["version_id"]) == ("applied", second["VersionId"])
    assert _emails(faulty) >= {f"student{n}@school.example.edu" for n in range(100, 107)}


def test_unversioned_upload_overwritten_mid_run_fails_cleanly_and_the_next_run_imports_it(
    faulty, instance, proxy
):
    bucket = faulty.add_client("22", versioned=False)
    faulty.upload("22", roster_csv(6))
    second = _overwrite_after_head(faulty, proxy, bucket, roster_csv(7, start=100))

    result = faulty.run(instance, "22")

    assert not result.success
    assert second, "the overwrite did not happen"
    assert proxy.seen("GetObject", bucket) == ["412"]  # IfMatch on the ETag HeadObject saw
    assert "changed between HeadObject and GetObject" in _failure_text(result)
    failed = faulty.log("22").iloc[0]
    assert failed["status"] == "failed" and "client 22" in failed["message"]
    assert "the next run will read the new upload" in failed["message"]
    assert len(faulty.warehouse().current_subscribers("22")) == 0

    assert faulty.run(instance, "22").success
    applied = faulty.log("22").iloc[0]
    assert (applied["status"], applied["etag"].strip('"')) == ("applied", second["ETag"].strip('"'))
    assert _emails(faulty) == {f"student{n}@school.example.edu" for n in range(100, 107)}


# --- the sensor: polling -------------------------------------------------------------------------------


def test_poll_tick_with_one_bucket_failing_requests_the_others_and_keeps_that_clients_cursor(
    faulty, instance, proxy
):
    faulty.add_client("22", sync="on_upload")
    bucket41 = faulty.add_client("41", sync="on_upload")
    faulty.upload("22", roster_csv(2))
    old41 = faulty.upload("41", roster_csv(2))
    _, cursor = sensor_tick(faulty, instance)
    new22 = faulty.upload("22", roster_csv(3))
    new41 = faulty.upload("41", roster_csv(3))
    proxy.fail(503, match=s3_op("HeadObject", bucket=bucket41))

    requests, cursor = sensor_tick(faulty, instance, cursor)

    assert [r.run_key for r in requests] == [f"22:{new22['VersionId']}"]
    assert proxy.seen("HeadObject", bucket41)[-ATTEMPTS:] == ["503"] * ATTEMPTS
    assert json.loads(cursor)["seen"]["41"] == old41["ETag"].strip('"')  # not advanced past the new file

    proxy.clear()
    requests, cursor = sensor_tick(faulty, instance, cursor)
    assert [r.run_key for r in requests] == [f"41:{new41['VersionId']}"]
    assert sensor_tick(faulty, instance, cursor)[0] == []


@dataclass
class SensorDaemon:
    """Dagster's sensor daemon over one in-process code location, on an instance that queues runs."""

    instance: Any
    workspace: Any
    sensor: Any
    started: float

    def tick(self, minute: int):
        """One daemon iteration, `minute` minutes after the first (past the sensor's 60 s interval)."""
        from dagster._core.test_utils import freeze_time
        from dagster._daemon.sensor import execute_sensor_iteration

        with freeze_time(self.started + 61 * minute):
            list(execute_sensor_iteration(self.workspace, logging.getLogger("sensor"), None, None))
        return self.instance.get_ticks(*self._ids, limit=1)[0]

    @property
    def _ids(self) -> tuple[str, str]:
        return self.sensor.get_remote_origin_id(), self.sensor.selector_id

    def stored_cursor(self) -> str:
        return self.instance.get_instigator_state(*self._ids).instigator_data.cursor

    def run_keys(self) -> list[str]:
        return sorted(r.tags["dagster/run_key"] for r in self.instance.get_runs())


@contextmanager
def sensor_daemon(harness: FaultHarness, code_path) -> Iterator[SensorDaemon]:
    """The harness's code location written as a Python file, loaded by Dagster as a deployment would."""
    from dagster._core.remote_origin import InProcessCodeLocationOrigin
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import InProcessWorkspaceLoadTarget

    resources = harness.resources()
    code_path.write_text(
        textwrap.dedent(f"""
        from sis_pipeline.location import build_definitions
        from sis_pipeline.registry import load_registry
        from sis_pipeline.resources import (
            ArchiveResource, EventQueueResource, RegistryResource, SisS3Resource, WarehouseResource
        )
        defs = build_definitions(load_registry({str(harness.registry_path)!r}), {{
            "s3": SisS3Resource(endpoint_url={harness.endpoint!r}, region_name="us-east-1", max_attempts={ATTEMPTS}),
            "registry": RegistryResource(path={str(harness.registry_path)!r}),
            "warehouse": WarehouseResource(url={resources["warehouse"].url!r}),
            "archive": ArchiveResource(uri={resources["archive"].uri!r}),
            "events": EventQueueResource(),
        }})
        """)
    )
    queued = {"run_coordinator": {"module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator"}}
    origin = LoadableTargetOrigin(
        executable_path=sys.executable, python_file=str(code_path), attribute="defs"
    )
    target = InProcessWorkspaceLoadTarget(InProcessCodeLocationOrigin(origin, location_name="sis"))
    with (
        instance_for_test(overrides=queued) as instance,
        WorkspaceProcessContext(instance, target) as workspace,
    ):
        location = workspace.create_request_context().get_code_location("sis")
        sensor = next(iter(location.get_repositories().values())).get_sensor("sis_upload_sensor")
        instance.start_sensor(sensor)
        yield SensorDaemon(instance, workspace, sensor, time.time())


def test_poll_tick_with_s3_down_fails_keeping_the_stored_cursor_through_the_sensor_daemon(
    faulty, proxy, tmp_path
):
    """The real thing: Dagster's sensor daemon ticks, stores the cursor and queues runs on the instance."""
    from dagster import DagsterRunStatus
    from dagster._core.scheduler.instigation import TickStatus

    faulty.add_client("22", sync="on_upload")
    first = faulty.upload("22", roster_csv(2))
    with sensor_daemon(faulty, tmp_path / "tick_location.py") as daemon:
        assert daemon.tick(0).status == TickStatus.SUCCESS
        assert daemon.run_keys() == [f"22:{first['VersionId']}"]
        cursor_before = daemon.stored_cursor()

        second = faulty.upload("22", roster_csv(3))
        proxy.stop()
        failed = daemon.tick(1)
        assert failed.status == TickStatus.FAILURE
        assert "HeadObject failed for all 1 clients" in failed.error.to_string()
        assert proxy.url in failed.error.to_string()
        assert daemon.stored_cursor() == cursor_before
        assert daemon.run_keys() == [f"22:{first['VersionId']}"]

        proxy.start()
        assert daemon.tick(2).status == TickStatus.SUCCESS
        assert daemon.run_keys() == sorted([f"22:{first['VersionId']}", f"22:{second['VersionId']}"])
        assert json.loads(daemon.stored_cursor())["seen"]["22"] == second["ETag"].strip('"')
        assert {r.status for r in daemon.instance.get_runs()} == {DagsterRunStatus.QUEUED}


# --- the sensor: S3 events on SQS ----------------------------------------------------------------------


def _event_queue(harness, moto_endpoint: str) -> tuple[Any, str, str]:
    """A queue on moto (set up directly, not through the proxy) that the sensor reads."""
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"uploads-{harness.tmp.name[-10:]}".replace("_", "-"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    harness.queue_url = queue_url
    harness._defs = None
    return sqs, queue_url, arn


def _notify(harness, bucket: str, arn: str) -> None:
    harness.s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )


def _messages_left(sqs, queue_url: str) -> int:
    """Messages still on the queue, visible or in flight."""
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=names)["Attributes"]
    return sum(int(attributes[n]) for n in names)


def _after_visibility_timeout() -> None:
    time.sleep(VISIBILITY_SECONDS + 0.1)


#: A cursor whose hourly reconciling poll is not due: only events can start runs.
EVENTS_ONLY = json.dumps({"v": 1, "seen": {}, "last_full_poll": 9e12})


def test_events_tick_that_fails_after_receiving_gets_its_events_back(faulty, instance, proxy, moto_endpoint):
    sqs, queue_url, arn = _event_queue(faulty, moto_endpoint)
    bucket = faulty.add_client("22", sync="on_upload")
    _notify(faulty, bucket, arn)
    put = faulty.upload("22", roster_csv(2))
    due = json.dumps({"v": 1, "seen": {}, "last_full_poll": time.time() - 3601})
    proxy.stop()  # the hourly reconciling poll, after the queue was read, cannot reach S3

    with pytest.raises(S3RequestFailed, match="HeadObject failed for all 1 clients"):
        sensor_tick(faulty, instance, due)
    assert _messages_left(sqs, queue_url) == 2  # S3's test event and the upload's: received, none deleted

    proxy.start()
    _after_visibility_timeout()
    requests, _ = sensor_tick(faulty, instance, due)  # the stored cursor is still the one before the failure
    assert [r.tags["sis/trigger"] for r in requests] == ["s3_event"]  # the event came back and was acted on
    assert requests[0].tags["sis/file_version"].startswith(put["ETag"].strip('"'))


def test_events_tick_whose_result_is_lost_gets_the_same_run_again_and_events_go_once_recorded(
    faulty, instance, moto_endpoint
):
    sqs, queue_url, arn = _event_queue(faulty, moto_endpoint)
    bucket = faulty.add_client("22", sync="on_upload")
    _notify(faulty, bucket, arn)
    put = faulty.upload("22", roster_csv(2))

    lost, _ = sensor_tick(faulty, instance, EVENTS_ONLY)  # evaluated, then the daemon dies: nothing recorded
    assert [r.tags["sis/file_version"].split("@")[0] for r in lost] == [put["ETag"].strip('"')]
    assert _messages_left(sqs, queue_url) == 1  # S3's test event is settled and deleted; the upload's is not

    _after_visibility_timeout()
    requests, cursor = sensor_tick(faulty, instance, EVENTS_ONLY)
    assert [r.run_key for r in requests] == [
        r.run_key for r in lost
    ]  # the same run key: Dagster starts it once

    _after_visibility_timeout()
    assert sensor_tick(faulty, instance, cursor)[0] == []  # back again, now settled by the recorded cursor
    assert _messages_left(sqs, queue_url) == 0


def test_events_delete_failure_neither_fails_the_tick_nor_loses_or_repeats_runs(
    faulty, instance, proxy, moto_endpoint
):
    sqs, queue_url, arn = _event_queue(faulty, moto_endpoint)
    faulty.sqs_endpoint = proxy.url  # the sensor's SQS calls go through the proxy
    bucket = faulty.add_client("22", sync="on_upload")
    stray = f"sis-stray-{faulty.tmp.name[-8:].lower()}".replace(
        "_", "-"
    )  # no client's: its event starts nothing
    faulty.s3.create_bucket(Bucket=stray)
    for name in (bucket, stray):
        _notify(faulty, name, arn)
    faulty.s3.put_object(Bucket=stray, Key="student_feed.csv", Body=roster_csv(1))
    put = faulty.upload("22", roster_csv(2))
    proxy.fail(500, match=sqs_op("DeleteMessageBatch"))

    requests, cursor = sensor_tick(faulty, instance, EVENTS_ONLY)
    assert [r.tags["sis/file_version"].split("@")[0] for r in requests] == [put["ETag"].strip('"')]
    # Settled at once, so deleted in this tick: S3's two test events and the stray upload's event.
    assert proxy.seen("DeleteMessageBatch") == ["500"] * ATTEMPTS

    _after_visibility_timeout()
    requests, cursor = sensor_tick(faulty, instance, cursor)
    assert requests == []
    assert _messages_left(sqs, queue_url) == 4

    proxy.clear()
    _after_visibility_timeout()
    requests, _ = sensor_tick(faulty, instance, cursor)
    assert requests == []
    assert _messages_left(sqs, queue_url) == 0


def _s3_event(bucket: str, put: dict, sequencer: str) -> str:
    record = {
        "eventName": "ObjectCreated:Put",
        "eventTime": "2026-11-23T10:00:00.000Z",
        "s3": {
            "bucket": {"name": bucket},
            "object": {
                "key": "student_feed.csv",
                "eTag": put["ETag"].strip('"'),
                "versionId": put["VersionId"],
                "sequencer": sequencer,
            },
        },
    }
    return json.dumps({"Records": [record]})


def test_events_redelivered_late_do_not_move_the_cursor_back(faulty, instance, moto_endpoint):
    sqs, queue_url, _arn = _event_queue(faulty, moto_endpoint)
    bucket = faulty.add_client("22", sync="on_upload")
    first = faulty.upload("22", roster_csv(2))
    second = faulty.upload("22", roster_csv(3))
    sqs.send_message(QueueUrl=queue_url, MessageBody=_s3_event(bucket, first, "0065A1"))
    _, cursor = sensor_tick(faulty, instance, EVENTS_ONLY)
    sqs.send_message(QueueUrl=queue_url, MessageBody=_s3_event(bucket, second, "0065A2"))
    requests, cursor = sensor_tick(faulty, instance, cursor)
    assert [r.run_key for r in requests] == [f"22:{second['VersionId']}"]

    sqs.send_message(QueueUrl=queue_url, MessageBody=_s3_event(bucket, first, "0065A1"))  # SQS: at least once
    requests, cursor = sensor_tick(faulty, instance, cursor)
    assert requests == []
    assert json.loads(cursor)["seen"]["22"] == second["ETag"].strip('"')

    third = faulty.upload("22", roster_csv(2))  # the first file's bytes again: new content after the second
    sqs.send_message(QueueUrl=queue_url, MessageBody=_s3_event(bucket, third, "0065A3"))
    requests, _ = sensor_tick(faulty, instance, cursor)
    assert [r.run_key for r in requests] == [f"22:{third['VersionId']}"]
