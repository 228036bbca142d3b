"""moto's server for the benchmarks, with one fix to its SQS receive so `sensor_sqs_1000` measures the sensor.

moto 5 checks each message it hands out against the queue's retention period by calling
`get_queue_attributes`, which rebuilds every attribute of the queue — among them
`ApproximateNumberOfMessages`, a scan of every message with two clock reads each. Receiving a queue of n
messages therefore costs O(n²): 1,000 queued events took 72–114 s to receive from moto alone, against
milliseconds per call on SQS. The fix below reads the one attribute it needs straight from the queue, as SQS
itself would. Its list of visible messages, rebuilt on every receive, read the clock twice per queued
message through `datetime` (2 of the 3 s of 100 receives at 1,000 messages); the second fix reads it once per
receive. Everything else is moto unchanged. Only the benchmark uses it: the tests run moto's server as
shipped (their queues hold a handful of messages).

    python -m benchmarks.moto_server -H 127.0.0.1 -p PORT     # the arguments of `python -m moto.server`
"""

from __future__ import annotations

from typing import Any


def patch_sqs_retention_check() -> None:
    from moto.core.utils import unix_time
    from moto.sqs.models import SQSBackend

    def is_message_valid_based_on_retention_period(self: Any, queue_name: str, message: Any) -> bool:
        retention = int(self.get_queue(queue_name).message_retention_period)
        return retention + message.sent_timestamp / 1000 > unix_time()

    SQSBackend.is_message_valid_based_on_retention_period = is_message_valid_based_on_retention_period


def patch_sqs_visible_messages() -> None:
    from moto.core.utils import unix_time_millis
    from moto.sqs.models import Queue

    def messages(self: Any) -> list[Any]:
        now = unix_time_millis()  # once per receive, not twice per queued message
        return [m for m in self._messages if now > m.visible_at and not now < m.delayed_until]

    Queue.messages = property(messages)


def main() -> None:
    from moto.server import main as moto_main

    patch_sqs_retention_check()
    patch_sqs_visible_messages()
    moto_main()


if __name__ == "__main__":
    main()
