#!/usr/bin/env bash
# Instructions per request of a benchmark server (`eddy-bench serve --kind raw|eddy`)
# answering S1's GET /orders/{id}, counted by valgrind's callgrind after a warm-up:
# repeatable on a noisy box, where CPU time per request moves by ±15 % between runs.
# Needs valgrind and wrk (Debian packages) and a release build of eddy-bench.
#   bench/scripts/http-instructions.sh raw eddy
set -euo pipefail
# (Not EDDY_*: the servers read EDDY_* variables as their configuration.)
bin="${BENCH_BIN:-target/release/eddy-bench}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for kind in "$@"; do
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out/$kind.cg" \
    "$bin" serve --kind "$kind" --port 0 >"$out/$kind.log" 2>&1 &
  server=$!
  for _ in $(seq 1 120); do grep -q listening "$out/$kind.log" && break; sleep 0.5; done
  port=$(awk '/listening on/{print $3}' "$out/$kind.log")
  wrk -t1 -c32 -d3s "http://127.0.0.1:$port/orders/1" >/dev/null
  callgrind_control -i on "$server" >/dev/null
  requests=$(wrk -t1 -c32 -d15s "http://127.0.0.1:$port/orders/1" | awk '/requests in/{print $1}')
  callgrind_control -i off "$server" >/dev/null
  callgrind_control -d "$server" >/dev/null 2>&1
  sleep 1
  kill "$server"; wait "$server" 2>/dev/null || true
  instructions=$(grep -h '^totals:' "$out/$kind.cg".* | awk '{s+=$2} END {print s}')
  echo "$kind: $requests requests, $((instructions / requests)) instructions per request"
done
