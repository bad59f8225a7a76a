#!/usr/bin/env bash
# expertmesh in the shared side-by-side harness (../shared/bench-gateways), one run:
# direct to the fake upstream, LiteLLM's proxy, the bare FastAPI + httpx relay, expertmesh with
# routing bypassed (model = the expert) and expertmesh routed (the harness's model name is an
# alias of "auto": benchmarks/gateway-auto.yaml). Servers on CPU 1, load generator on CPU 0.
#
#   benchmarks/run_gateway_harness.sh [bench.py options, e.g. --concurrency 1,8 --repeats 2 --tools go]
#
# Results: $GWBENCH_HOME/results/<timestamp>/summary.md (GWBENCH_HOME defaults to /tmp/gwbench).
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${HARNESS:-$REPO/../shared/bench-gateways}"
export GWBENCH_HOME="${GWBENCH_HOME:-/tmp/gwbench}"
[ -x "$REPO/.venv/bin/expertmesh" ] || "$REPO/scripts/install.sh"
# The routed gateway needs a router artifact: train the default once if there is none.
"$REPO/.venv/bin/expertmesh" route "warm-up: is the router trained?" >/dev/null

exec "$HARNESS/run.sh" \
  --gateway-name relay \
  --gateway-cmd "$GWBENCH_HOME/venv-relay/bin/python -m uvicorn --app-dir $HARNESS/gateways minimal_fastapi_relay:app --host 127.0.0.1 --port 8090 --log-level warning --no-access-log" \
  --gateway-url http://127.0.0.1:8090 \
  --gateway-name expertmesh \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway.yaml --port 8080" \
  --gateway-url http://127.0.0.1:8080 \
  --gateway-name expertmesh-auto \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway-auto.yaml --port 8081" \
  --gateway-url http://127.0.0.1:8081 \
  "$@"
