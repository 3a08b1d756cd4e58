#!/usr/bin/env bash
# Sandbox throughput: wrk (2 threads, 32 connections) against `hlbridge sandbox` with a
# file-backed database and rate limits off, then against Stoplight Prism's mock of the official
# contacts spec in the same run, for comparison.
#
#   apt-get install wrk; (optional) npm install --prefix /tmp/prism @stoplight/prism-cli
#   bash bench/sandbox.sh [seconds]
#   SANDBOX_ARGS=--fsync bash bench/sandbox.sh 10   # extra sandbox flags (e.g. flush every commit)
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${1:-10}
PORT=18089
PRISM_PORT=18090
SPEC=../shared/highlevel/openapi/apps/contacts.json
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$WORK"' EXIT

cargo build --release -q -p hlbridge
# shellcheck disable=SC2086 # SANDBOX_ARGS is a list of flags
./target/release/hlbridge sandbox --port $PORT --data "$WORK/sandbox.db" --no-rate-limit ${SANDBOX_ARGS:-} \
  --token bench-token --location-id benchLocation0000001 > "$WORK/info.json" &
for _ in $(seq 50); do [ -s "$WORK/info.json" ] && break; sleep 0.1; done
export TOKEN=bench-token LOCATION_ID=benchLocation0000001
CONTACT_ID=$(curl -s -X POST "http://127.0.0.1:$PORT/contacts/" -H "Authorization: Bearer $TOKEN" \
  -H "Version: 2021-07-28" -H "Content-Type: application/json" \
  -d "{\"locationId\":\"$LOCATION_ID\",\"firstName\":\"Bench\",\"email\":\"bench@bench.test\"}" \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["contact"]["id"])')
export CONTACT_ID

echo "## machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p')"
echo "## hlbridge sandbox GET /contacts/{id} (file-backed, rate limits off)"
wrk -t2 -c32 -d"${DUR}s" --latency -s bench/get_contact.lua "http://127.0.0.1:$PORT"
echo "## hlbridge sandbox POST /contacts/ (file-backed, rate limits off)"
wrk -t2 -c32 -d"${DUR}s" --latency -s bench/post_contact.lua "http://127.0.0.1:$PORT"

PRISM=${PRISM:-/tmp/prism/node_modules/.bin/prism}
if [ -x "$PRISM" ]; then
  "$PRISM" mock -p $PRISM_PORT -v silent "$SPEC" > "$WORK/prism.log" 2>&1 &
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$PRISM_PORT/contacts/x" -H "Authorization: Bearer x" -H "Version: 2021-07-28" && break; sleep 0.2; done
  echo "## Prism mock GET /contacts/{id}"
  wrk -t2 -c32 -d"${DUR}s" --latency -s bench/get_contact.lua "http://127.0.0.1:$PRISM_PORT"
  echo "## Prism mock POST /contacts/"
  wrk -t2 -c32 -d"${DUR}s" --latency -s bench/post_contact.lua "http://127.0.0.1:$PRISM_PORT"
else
  echo "## Prism not installed at $PRISM; skipped the comparison"
fi
