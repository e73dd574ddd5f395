"""S7 peer: a FastStream consumer pipeline on NATS JetStream and PostgreSQL.

Publishes `--messages` JSON events to a stream of its own, then consumes them with a
FastStream subscriber that, per message and in one asyncpg transaction, records the
event id in `eddy_processed_events` (skipping the effect if it was there already) and
writes one `bench_effects` row; the message is acknowledged after the handler
(FastStream's default). `--workers` messages are handled at once. Prints one JSON line:
{"consume_per_sec": ...}, timed from the first message to the last.

The database must already have both tables (eddy-bench creates them).
"""

import argparse
import asyncio
import json
import time
import uuid


async def run(args):
    import asyncpg
    import nats
    from faststream.nats import JStream, NatsBroker, PullSub

    subject = f"fs7.{args.topic}"
    stream_name = f"FS7_{args.topic}"
    nc = await nats.connect(args.url)
    js = nc.jetstream()
    await js.add_stream(name=stream_name, subjects=[subject])
    pending = []
    for i in range(args.messages):
        body = json.dumps(
            {"id": str(uuid.uuid4()), "order_id": f"order-{i % 1000}", "total_cents": 1999 + i}
        ).encode()
        pending.append(js.publish(subject, body))
        if len(pending) == 100:
            await asyncio.gather(*pending)
            pending = []
    if pending:
        await asyncio.gather(*pending)

    pool = await asyncpg.create_pool(args.pg, min_size=2, max_size=args.workers)
    broker = NatsBroker(args.url, logger=None)
    state = {"n": 0, "first": None, "done": asyncio.Event()}

    @broker.subscriber(
        subject,
        stream=JStream(name=stream_name, subjects=[subject], declare=False),
        durable="bench",
        pull_sub=PullSub(batch_size=256),
        max_workers=args.workers,
    )
    async def handle(event: dict):
        if state["first"] is None:
            state["first"] = time.perf_counter()
        async with pool.acquire() as conn:
            async with conn.transaction():
                fresh = await conn.fetchval(
                    "INSERT INTO eddy_processed_events (consumer, event_id, processed_at_us)"
                    " VALUES ('bench', $1, 0) ON CONFLICT DO NOTHING RETURNING 1",
                    event["id"],
                )
                if fresh:
                    await conn.execute(
                        "INSERT INTO bench_effects (event_id, order_id, total_cents)"
                        " VALUES ($1, $2, $3)",
                        event["id"],
                        event["order_id"],
                        event["total_cents"],
                    )
        state["n"] += 1
        if state["n"] >= args.messages:
            state["done"].set()

    await broker.start()
    await asyncio.wait_for(state["done"].wait(), timeout=600)
    consume_per_sec = args.messages / max(time.perf_counter() - state["first"], 1e-9)
    await broker.stop()
    await pool.close()
    await js.delete_stream(stream_name)
    await nc.close()
    return consume_per_sec


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--pg", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=16)
    args = parser.parse_args()
    print(json.dumps({"consume_per_sec": asyncio.run(run(args))}))


if __name__ == "__main__":
    main()
