#!/usr/bin/env bash
# Installs the benchmark peers locally (nothing global): FastAPI + uvicorn + httpx and
# FastStream (NATS and Kafka), asyncpg, cashews + redis and eventsourcing (PostgreSQL) into bench/.venv, fastify + undici into
# bench/peers/node/node_modules. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/uvicorn ]; then
  python3 -m venv .venv
  .venv/bin/pip install --quiet fastapi uvicorn httpx
fi
if ! .venv/bin/python -c 'import faststream.nats, faststream.kafka, asyncpg' 2>/dev/null; then
  .venv/bin/pip install --quiet 'faststream[nats,kafka]' asyncpg
fi
if ! .venv/bin/python -c 'import cashews, redis' 2>/dev/null; then
  .venv/bin/pip install --quiet cashews redis
fi
if ! .venv/bin/python -c 'import eventsourcing.postgres' 2>/dev/null; then
  .venv/bin/pip install --quiet 'eventsourcing[postgres]'
fi
if [ ! -d peers/node/node_modules/fastify ]; then
  (cd peers/node && npm install --silent --no-audit --no-fund)
fi
echo "peers ready: $(.venv/bin/python -c 'import fastapi, uvicorn; import importlib.metadata as m; print("fastapi", fastapi.__version__, "uvicorn", uvicorn.__version__, "faststream", m.version("faststream"))'), fastify $(node -p 'require("./peers/node/node_modules/fastify/package.json").version')"
