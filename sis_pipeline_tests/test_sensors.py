"""`sis_upload_sensor` evaluated by Dagster against moto's S3 and SQS over HTTP (PRODUCT.md §7)."""

from __future__ import annotations

import json

import boto3

from sis_pipeline.assets import ALL_ASSETS, PREVIEW_ASSETS
from sis_pipeline_tests.orchestration_support import roster_csv, sensor_tick


def test_one_upload_gives_exactly_one_run_request_and_a_second_tick_none(harness, dagster_instance):
    harness.add_client("22", sync="on_upload")
    put = harness.upload("22", roster_csv(3))
    requests, cursor = sensor_tick(harness, dagster_instance)
    assert [r.partition_key for r in requests] == ["22"]
    assert requests[0].run_key == f"22:{put['VersionId']}"
    again, _ = sensor_tick(harness, dagster_instance, cursor)
    assert again == []


def test_clients_without_an_upload_request_nothing(harness, dagster_instance):
    harness.add_client("22")
    requests, _ = sensor_tick(harness, dagster_instance)
    assert requests == []


def test_same_bytes_uploaded_again_start_no_run(harness, dagster_instance):
    harness.add_client("22", sync="on_upload")
    harness.upload("22", roster_csv(3))
    _, cursor = sensor_tick(harness, dagster_instance)
    harness.upload("22", roster_csv(3))
    assert sensor_tick(harness, dagster_instance, cursor)[0] == []


def test_overwrite_gives_a_new_request_even_in_the_same_second(harness, dagster_instance):
    harness.add_client("22", sync="on_upload")
    harness.upload("22", roster_csv(3))
    _, cursor = sensor_tick(harness, dagster_instance)
    second = harness.upload("22", roster_csv(4))  # same second as the first, most likely: no timestamps used
    requests, _ = sensor_tick(harness, dagster_instance, cursor)
    assert [r.run_key for r in requests] == [f"22:{second['VersionId']}"]


def test_overwrite_of_unversioned_bucket_is_noticed_by_etag(harness, dagster_instance):
    harness.add_client("22", sync="on_upload", versioned=False)
    harness.upload("22", roster_csv(3))
    _, cursor = sensor_tick(harness, dagster_instance)
    second = harness.upload("22", roster_csv(5))
    requests, _ = sensor_tick(harness, dagster_instance, cursor)
    assert len(requests) == 1
    assert requests[0].run_key.startswith(f"22:{second['ETag'].strip(chr(34))}@")


def test_cursor_survives_a_restart_as_plain_json(harness, dagster_instance):
    harness.add_client("22", sync="on_upload")
    harness.upload("22", roster_csv(3))
    _, cursor = sensor_tick(harness, dagster_instance)
    restored = json.loads(json.dumps(json.loads(cursor)))  # what the instance stores and hands back
    assert sensor_tick(harness, dagster_instance, json.dumps(restored))[0] == []


def test_on_upload_clients_get_the_full_graph_and_others_a_preview(harness, dagster_instance):
    harness.add_client("22", sync="on_upload")
    harness.add_client("41", sync="weekly")
    harness.add_client("57", sync="on_upload", auto_sync_enabled=False)
    for client in ("22", "41", "57"):
        harness.upload(client, roster_csv(2))
    requests, _ = sensor_tick(harness, dagster_instance)
    selection = {r.partition_key: set(r.asset_selection) for r in requests}
    assert selection == {"22": set(ALL_ASSETS), "41": set(PREVIEW_ASSETS), "57": set(PREVIEW_ASSETS)}


def test_run_request_pins_the_version_that_triggered_it(harness, dagster_instance):
    harness.add_client("22", sync="on_upload")
    put = harness.upload("22", roster_csv(2))
    requests, _ = sensor_tick(harness, dagster_instance)
    assert requests[0].run_config["ops"]["sis_import"]["config"]["version_id"] == put["VersionId"]


def _events_harness(harness, moto_endpoint):
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint, region_name="us-east-1")
    queue_url = sqs.create_queue(QueueName=f"uploads-{harness.tmp.name[-10:]}".replace("_", "-"))["QueueUrl"]
    arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    harness.queue_url = queue_url
    return sqs, queue_url, arn


def test_events_mode_reads_s3_notifications_from_sqs(harness, dagster_instance, moto_endpoint):
    sqs, queue_url, arn = _events_harness(harness, moto_endpoint)
    harness.add_client("22", sync="on_upload")
    harness.add_client("41")
    for client in ("22", "41"):
        harness.s3.put_bucket_notification_configuration(
            Bucket=harness.bucket(client),
            NotificationConfiguration={
                "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
            },
        )
    put22 = harness.upload("22", roster_csv(2))
    put41 = harness.upload("41", roster_csv(3))
    # The first tick also reconciles by polling; drop that so only events can produce requests.
    cursor = json.dumps({"v": 1, "seen": {}, "last_full_poll": 9e12})
    requests, cursor = sensor_tick(harness, dagster_instance, cursor)
    assert sorted(r.tags["sis/client"] for r in requests) == ["22", "41"]
    # Polling later finds the same content and starts nothing more: both modes agree on what is new.
    cursor_after = json.loads(cursor)
    assert cursor_after["seen"] == {"22": put22["ETag"].strip('"'), "41": put41["ETag"].strip('"')}
    # No message is visible, so the next tick requests nothing. (Messages that started runs are deleted when
    # they come back after the visibility timeout, once the tick is recorded: see test_faults_s3.)
    attributes = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
    assert attributes["Attributes"]["ApproximateNumberOfMessages"] == "0"
    assert sensor_tick(harness, dagster_instance, cursor)[0] == []


def test_events_mode_takes_only_the_latest_of_several_uploads_per_client(
    harness, dagster_instance, moto_endpoint
):
    _sqs, _queue_url, arn = _events_harness(harness, moto_endpoint)
    harness.add_client("22", sync="on_upload")
    harness.s3.put_bucket_notification_configuration(
        Bucket=harness.bucket("22"),
        NotificationConfiguration={
            "QueueConfigurations": [{"QueueArn": arn, "Events": ["s3:ObjectCreated:*"]}]
        },
    )
    harness.upload("22", roster_csv(2))
    last = harness.upload("22", roster_csv(3))
    cursor = json.dumps({"v": 1, "seen": {}, "last_full_poll": 9e12})
    requests, _cursor = sensor_tick(harness, dagster_instance, cursor)
    assert len(requests) == 1
    assert json.loads(_cursor)["seen"]["22"] == last["ETag"].strip('"')
