#!/usr/bin/env bash
# gateway.workers = 1 vs 2 in the shared harness, routing bypassed and routed, in one run.
# Servers and the Go load generator share both CPUs (a 2-core machine has none to spare), so
# this shows what a second worker buys when the cores are contended, not clean scaling.
#
#   benchmarks/run_gateway_workers.sh [--no-setup] [bench.py options]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${HARNESS:-$REPO/../shared/bench-gateways}"
export GWBENCH_HOME="${GWBENCH_HOME:-/tmp/gwbench}"
cd "$REPO"
"$REPO/.venv/bin/expertmesh" route "warm-up: is the router trained?" >/dev/null
exec "$HARNESS/run.sh" --no-litellm \
  --gateway-name em-w1 --gateway-url http://127.0.0.1:8082 \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway.yaml --port 8082 --workers 1" \
  --gateway-name em-w2 --gateway-url http://127.0.0.1:8083 \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway.yaml --port 8083 --workers 2" \
  --gateway-name em-auto-w1 --gateway-url http://127.0.0.1:8084 \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway-auto.yaml --port 8084 --workers 1" \
  --gateway-name em-auto-w2 --gateway-url http://127.0.0.1:8085 \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway-auto.yaml --port 8085 --workers 2" \
  --server-cpus 0,1 --loadgen-cpus 0,1 --modes nonstream --concurrency 8,32 \
  --tools go --repeats 2 --duration 10 --warmup 2 "$@"
