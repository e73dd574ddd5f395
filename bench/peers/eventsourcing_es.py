"""The event-store peer of `eddy-bench eventstore`: Python's `eventsourcing` library on
the same PostgreSQL, with the same workloads — single-event appends with optimistic
concurrency spread over streams by one writer, and loading one aggregate of N events
with and without a snapshot. Prints one JSON line."""

import argparse
import json
import os
import time

parser = argparse.ArgumentParser()
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", default="5432")
parser.add_argument("--user", default="postgres")
parser.add_argument("--dbname", required=True)
parser.add_argument("--appends", type=int, default=3000)
parser.add_argument("--streams", type=int, default=100)
parser.add_argument("--events", type=int, default=10000)
parser.add_argument("--loads", type=int, default=5)
args = parser.parse_args()

os.environ.update(
    {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": args.dbname,
        "POSTGRES_HOST": args.host,
        "POSTGRES_PORT": args.port,
        "POSTGRES_USER": args.user,
        # Trust authentication: any password is accepted; the library wants one set.
        "POSTGRES_PASSWORD": "unused",
        "CREATE_TABLE": "y",
        "IS_SNAPSHOTTING_ENABLED": "y",
    }
)

from eventsourcing.application import Application  # noqa: E402
from eventsourcing.domain import Aggregate, event  # noqa: E402


class Stream(Aggregate):
    @event("Opened")
    def __init__(self):
        self.n = 0

    @event("Stepped")
    def step(self, n: int):
        self.n = n


class Store(Application):
    pass


app = Store()

# Appends: one event per save (one transaction, version checked), round robin over
# the streams, each kept in memory as a writer would between commands.
streams = [Stream() for _ in range(args.streams)]
for s in streams:
    app.save(s)
started = time.perf_counter()
for i in range(args.appends):
    s = streams[i % len(streams)]
    s.step(i)
    app.save(s)
append_secs = time.perf_counter() - started

# Load: one aggregate of `events` events, in saves of 500 events.
big = Stream()
app.save(big)
for i in range(args.events - 1):
    big.step(i)
    if (i + 1) % 500 == 0:
        app.save(big)
app.save(big)


def timed_load():
    times = []
    for _ in range(args.loads):
        t = time.perf_counter()
        loaded = app.repository.get(big.id)
        times.append(time.perf_counter() - t)
        assert loaded.version == args.events, loaded.version
    times.sort()
    return times[len(times) // 2]


load_secs = timed_load()
# A snapshot 100 events before the end, as the Eddy run has it.
app.take_snapshot(big.id, version=args.events - 100)
load_snapshot_secs = timed_load()

print(
    json.dumps(
        {
            "appends_per_sec": args.appends / append_secs,
            "load_ms": load_secs * 1000,
            "load_snapshot_ms": load_snapshot_secs * 1000,
        }
    )
)
