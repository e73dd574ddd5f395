"""S5 peer: publish and consume through FastStream, the same shape as eddy-bench's runs.

Publishes `--messages` payloads of `--size` bytes in groups of `--batch` (each group sent
concurrently, then every acknowledgement awaited), then consumes them all with a fresh
subscriber (acknowledged after the handler, FastStream's default) and prints one JSON
line: {"publish_per_sec": ..., "consume_per_sec": ...}. The consume clock starts at the
first message, as in eddy-bench.

    python faststream_s5.py --broker nats --url nats://127.0.0.1:4222 --topic t1 ...
"""

import argparse
import asyncio
import json
import time


class Counter:
    """Counts handled messages; `done` is set at the last one."""

    def __init__(self, expected):
        self.expected = expected
        self.n = 0
        self.first = None
        self.done = asyncio.Event()

    def hit(self):
        if self.first is None:
            self.first = time.perf_counter()
        self.n += 1
        if self.n >= self.expected:
            self.done.set()


async def publish_all(args, publish_one):
    """Publishes in groups of `--batch` sent at once; returns messages per second."""
    payload = b"x" * args.size
    started = time.perf_counter()
    sent = 0
    while sent < args.messages:
        n = min(args.batch, args.messages - sent)
        await asyncio.gather(*[publish_one(payload, i) for i in range(n)])
        sent += n
    return args.messages / (time.perf_counter() - started)


async def consume_all(broker, counter):
    """Starts the subscribers and waits for every message; returns messages per second."""
    await broker.start()
    await asyncio.wait_for(counter.done.wait(), timeout=120)
    rate = counter.expected / max(time.perf_counter() - counter.first, 1e-9)
    await broker.stop()
    return rate


async def run_nats(args):
    import nats
    from faststream.nats import JStream, NatsBroker, PullSub

    subject = f"fs.{args.topic}"
    stream = f"FS_{args.topic}"
    broker = NatsBroker(args.url, logger=None)
    counter = Counter(args.messages)

    @broker.subscriber(
        subject,
        stream=JStream(name=stream, subjects=[subject], declare=False),
        durable="bench",
        pull_sub=PullSub(batch_size=256),
    )
    async def handle(body: bytes):
        counter.hit()

    # The stream must exist before publishing; the subscriber starts afterwards.
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    await js.add_stream(name=stream, subjects=[subject])
    await broker.connect()
    publish = await publish_all(
        args, lambda payload, i: broker.publish(payload, subject, stream=stream)
    )
    consume = await consume_all(broker, counter)
    await js.delete_stream(stream)
    await nc.close()
    return publish, consume


async def run_kafka(args):
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from faststream.kafka import KafkaBroker

    topic = f"fs-{args.topic}"
    # acks=all as Eddy; not idempotent: tansu refuses aiokafka's idempotent producer.
    broker = KafkaBroker(args.url, logger=None, acks="all")
    counter = Counter(args.messages)

    @broker.subscriber(topic, group_id=f"bench-{args.topic}", auto_offset_reset="earliest")
    async def handle(body: bytes):
        counter.hit()

    admin = AIOKafkaAdminClient(bootstrap_servers=args.url)
    await admin.start()
    await admin.create_topics(
        [NewTopic(topic, num_partitions=args.partitions, replication_factor=1)]
    )
    await broker.connect()
    publish = await publish_all(
        args, lambda payload, i: broker.publish(payload, topic, key=f"k{i % 64}".encode())
    )
    consume = await consume_all(broker, counter)
    await admin.delete_topics([topic])
    await admin.close()
    return publish, consume


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--broker", choices=["nats", "kafka"], required=True)
    parser.add_argument("--url", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    runner = run_nats if args.broker == "nats" else run_kafka
    publish, consume = asyncio.run(runner(args))
    print(json.dumps({"publish_per_sec": publish, "consume_per_sec": consume}))


if __name__ == "__main__":
    main()
