"""S6's peer: cashews (Python) as a two-level cache — its client-side Redis backend, an
in-process memory cache in front of Redis kept coherent by Redis's broadcast
invalidation — under the same workload as eddy-cache in `bench/src/cache.rs`.

1. Tiered run: `--workers` asyncio readers draw keys from the same Zipf distribution and
   read through `cache.get_or_set(key, load)`; the store answers after `--store-ms`.
2. Herd: `--herd` concurrent misses on one cold key over two cache instances (separate
   local caches, one Redis) through cashews' own stampede protection, the `@cache(...,
   lock=True)` decorator. Counts the store loads.

Prints one JSON line last: mean and p99 read latency (µs), reads per second, store loads
and the herd's store loads.
"""

import argparse
import asyncio
import bisect
import functools
import json
import random
import time
import uuid

from cashews import Cache
from cashews.backends.memory import Memory


def zipf_cumulative(n, s):
    total, out = 0.0, []
    for k in range(1, max(n, 1) + 1):
        total += 1.0 / (k**s)
        out.append(total)
    return out


def product(key):
    return {
        "id": key,
        "sku": f"sku-{key}",
        "name": "A product of the benchmark catalog",
        "price_cents": 1250,
        "currency": "EUR",
        "stock": 10,
    }


async def two_level(redis, prefix, l1_entries):
    cache = Cache()
    cache.setup(
        redis,
        client_side=True,
        client_side_prefix=f"{prefix}:",
        local_cache=Memory(size=l1_entries),
    )
    await cache.init()
    return cache


async def main():
    p = argparse.ArgumentParser()
    p.add_argument("--redis", default="redis://127.0.0.1:6379")
    p.add_argument("--keys", type=int, default=4000)
    p.add_argument("--zipf", type=float, default=1.0)
    p.add_argument("--requests", type=int, default=400_000)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--l1-entries", type=int, default=1500)
    p.add_argument("--store-ms", type=int, default=15)
    p.add_argument("--herd", type=int, default=3000)
    a = p.parse_args()

    prefix = f"s6py-{uuid.uuid4().hex}"
    cumulative = zipf_cumulative(a.keys, a.zipf)
    total = cumulative[-1]
    keys = [f"{prefix}:k-{k:04}" for k in range(a.keys)]
    store_loads = 0

    async def load(key):
        nonlocal store_loads
        store_loads += 1
        await asyncio.sleep(a.store_ms / 1000)
        return product(key)

    cache = await two_level(a.redis, prefix, a.l1_entries)
    next_request = 0
    latencies = []

    async def reader():
        nonlocal next_request
        rng = random.Random()
        while next_request < a.requests:
            next_request += 1
            i = bisect.bisect_left(cumulative, rng.uniform(0.0, total))
            key = keys[min(i, a.keys - 1)]
            started = time.perf_counter_ns()
            await cache.get_or_set(key, functools.partial(load, key), expire=300)
            latencies.append(time.perf_counter_ns() - started)

    started = time.perf_counter()
    await asyncio.gather(*(reader() for _ in range(a.workers)))
    elapsed = time.perf_counter() - started
    latencies.sort()
    mean_us = sum(latencies) / len(latencies) / 1000
    p99_us = latencies[int(len(latencies) * 0.99)] / 1000
    tiered_loads = store_loads

    # The herd: two nodes, one Redis, cashews' lock against the stampede.
    a_node = await two_level(a.redis, f"{prefix}-herd", a.l1_entries)
    b_node = await two_level(a.redis, f"{prefix}-herd", a.l1_entries)
    herd_loads = 0

    def cached_on(node):
        @node(ttl="5m", key="herd:{key}", lock=True)
        async def read(key):
            nonlocal herd_loads
            herd_loads += 1
            await asyncio.sleep(max(a.store_ms, 50) / 1000)
            return product(key)

        return read

    read_a, read_b = cached_on(a_node), cached_on(b_node)
    await asyncio.gather(*((read_a if i % 2 == 0 else read_b)(f"{prefix}-herd-key") for i in range(a.herd)))

    for c in (cache, a_node, b_node):
        await c.clear()
        await c.close()
    print(
        json.dumps(
            {
                "peer": "cashews",
                "mean_us": mean_us,
                "p99_us": p99_us,
                "reads_per_sec": a.requests / elapsed,
                "store_loads": tiered_loads,
                "herd_store_loads": herd_loads,
            }
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
