#!/usr/bin/env bash
# Fires the lag-growth alert for real: starts the shop with its payments consumer held back
# (one handler at a time, a slow payment provider), a real Prometheus scraping it with
# ops/prometheus/alerts.yml, sends orders faster than payments can take them, and waits
# until Prometheus reports ConsumerLagGrowing firing. Exits 0 when it fires, 1 when it
# does not within the time limit (printing what Prometheus and GET /lag said).
#
#   ops/check-alerts.sh                 # from the repository root; about 2 minutes
#   ALERT_FOR=keep ops/check-alerts.sh  # the rules' own `for` (5 minutes): about 6 minutes
#
# Needs `prometheus` on the PATH (Debian's prometheus package; .ci/run installs it) and
# builds the shop (debug) unless SHOP_BIN names a binary. Uses ports 18080, 18081 and
# 19090 on 127.0.0.1 (SHOP_PORT, PROVIDER_PORT, PROMETHEUS_PORT) and a temporary directory.
#
# What is changed from the shipped files, and why:
# - the rule expressions are the shipped ones; only each rule's `for` becomes ALERT_FOR
#   (default 30s), so the check takes minutes, not the 5 minutes the rule waits in
#   production — `ALERT_FOR=keep` runs the file as shipped;
# - the scrape and evaluation intervals are 2 s, and the lag monitor samples every 2 s and
#   judges GROWING over 10 s (lag.interval_secs, lag.judge_span_secs), for the same reason.
set -euo pipefail
cd "$(dirname "$0")/.."

ALERT_FOR=${ALERT_FOR:-30s}
SHOP_PORT=${SHOP_PORT:-18080}
PROVIDER_PORT=${PROVIDER_PORT:-18081}
PROMETHEUS_PORT=${PROMETHEUS_PORT:-19090}
TIME_LIMIT_SECS=${TIME_LIMIT_SECS:-$([ "$ALERT_FOR" = keep ] && echo 600 || echo 240)}

command -v prometheus >/dev/null || {
  echo "prometheus is not on the PATH: apt-get install prometheus (.ci/run does)" >&2
  exit 1
}
command -v jq >/dev/null || { echo "jq is not on the PATH" >&2; exit 1; }

if [ -z "${SHOP_BIN:-}" ]; then
  cargo build -q -p shop
  SHOP_BIN=target/debug/shop
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The shipped rules, with `for` changed as said above.
if [ "$ALERT_FOR" = keep ]; then
  cp ops/prometheus/alerts.yml "$work/alerts.yml"
else
  sed -E "s/^( +)for: .*/\1for: $ALERT_FOR/" ops/prometheus/alerts.yml >"$work/alerts.yml"
fi
cat >"$work/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  evaluation_interval: 2s
rule_files:
  - alerts.yml
scrape_configs:
  - job_name: eddy
    static_configs:
      - targets: ["127.0.0.1:$SHOP_PORT"]
EOF

echo "== starting the shop on 127.0.0.1:$SHOP_PORT, payments held back"
EDDY_DATA_DIR="$work/data" \
  EDDY_SERVER__LISTEN="127.0.0.1:$SHOP_PORT" \
  EDDY_PROVIDER__LISTEN="127.0.0.1:$PROVIDER_PORT" \
  EDDY_PROVIDER__LATENCY_MS=200 \
  EDDY_PROVIDER__DECLINE_RATE=0 \
  EDDY_CONSUMER__CONCURRENCY=1 \
  EDDY_LAG__INTERVAL_SECS=2 \
  EDDY_LAG__JUDGE_SPAN_SECS=10 \
  EDDY_LAG__WINDOW_LEN_MAX=30 \
  "$SHOP_BIN" >"$work/shop.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do
  curl -sf "127.0.0.1:$SHOP_PORT/health/ready" >/dev/null && break
  sleep 0.5
done
curl -sf "127.0.0.1:$SHOP_PORT/health/ready" >/dev/null || {
  echo "the shop did not become ready:" >&2
  tail -20 "$work/shop.log" >&2
  exit 1
}

echo "== starting Prometheus on 127.0.0.1:$PROMETHEUS_PORT"
prometheus --config.file="$work/prometheus.yml" --storage.tsdb.path="$work/tsdb" \
  --web.listen-address="127.0.0.1:$PROMETHEUS_PORT" >"$work/prometheus.log" 2>&1 &
pids+=($!)

# Orders at 20 a second; payments takes about 5 (one 200 ms charge at a time).
echo "== placing orders at 20/s"
"$SHOP_BIN" demo --target "http://127.0.0.1:$SHOP_PORT" --rate 20 --read-ratio 0 \
  --duration-secs "$TIME_LIMIT_SECS" --quiet >"$work/demo.log" 2>&1 &
pids+=($!)

deadline=$((SECONDS + TIME_LIMIT_SECS))
prometheus_api="http://127.0.0.1:$PROMETHEUS_PORT/api/v1"
while [ "$SECONDS" -lt "$deadline" ]; do
  firing=$(curl -sf "$prometheus_api/alerts" |
    jq -r '.data.alerts[] | select(.labels.alertname == "ConsumerLagGrowing" and .state == "firing")
           | "\(.labels.group) on \(.labels.topic): \(.annotations.summary)"' 2>/dev/null || true)
  if [ -n "$firing" ]; then
    echo "== ConsumerLagGrowing is firing after ${SECONDS}s:"
    echo "$firing"
    exit 0
  fi
  sleep 2
done

echo "ConsumerLagGrowing did not fire within ${TIME_LIMIT_SECS}s" >&2
echo "-- Prometheus alerts:" >&2
curl -s "$prometheus_api/alerts" | jq -c '.data.alerts[] | {alert: .labels.alertname, state, group: .labels.group, topic: .labels.topic}' >&2 || true
echo "-- GET /lag:" >&2
curl -s "127.0.0.1:$SHOP_PORT/lag" | jq -c '.groups[] | {group, status, lag_messages}' >&2 || true
echo "-- shop log:" >&2
tail -20 "$work/shop.log" >&2
exit 1
