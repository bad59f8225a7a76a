#!/usr/bin/env bash
# What per-key limits, the decision log and tracing cost the gateway (issue #15), in ONE run of
# the shared harness (../shared/bench-gateways): direct to the fake upstream, LiteLLM's proxy,
# expertmesh with them off (benchmarks/gateway.yaml), expertmesh with them on
# (benchmarks/gateway-observed.yaml: limits in the process, SQLite log with the text, spans
# exported by OTLP to benchmarks/otlp_sink.py), the same without tracing, and (--with-redis) the
# same with the limits in Redis.
# Routing bypassed (model = the expert), as in the other gateway comparisons. Servers (the
# gateways' Redis and OTLP sink included) on CPU 1, load generator on CPU 0.
#
#   benchmarks/run_observability_compare.sh [--with-redis] [bench.py options, e.g. --concurrency 1,8 --repeats 2 --tools go]
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
HARNESS="${HARNESS:-$REPO/../shared/bench-gateways}"
export GWBENCH_HOME="${GWBENCH_HOME:-/tmp/gwbench}"
[ -x "$REPO/.venv/bin/expertmesh" ] || "$REPO/scripts/install.sh"
command -v redis-server >/dev/null || "$REPO/scripts/install-services.sh"
rm -f "$GWBENCH_HOME"/decisions-808*.db*

SINK=".venv/bin/python benchmarks/otlp_sink.py"
REDIS=()
if [ "${1:-}" = "--with-redis" ]; then
  shift
  REDIS=(--gateway-name expertmesh-on-redis
    --gateway-cmd "cd $REPO && (redis-server --port 6390 --bind 127.0.0.1 --save '' --appendonly no >/dev/null &) && ($SINK --port 4319 &) && sleep 0.5 && EXPERTMESH_PORT=8082 EXPERTMESH_OTLP_PORT=4319 EXPERTMESH_REDIS_URL=redis://127.0.0.1:6390/0 exec .venv/bin/expertmesh serve --config benchmarks/gateway-observed.yaml"
    --gateway-url http://127.0.0.1:8082)
fi
exec "$HARNESS/run.sh" \
  --gateway-name expertmesh-off \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway.yaml --port 8080" \
  --gateway-url http://127.0.0.1:8080 \
  --gateway-name expertmesh-on \
  --gateway-cmd "cd $REPO && ($SINK --port 4318 &) && EXPERTMESH_PORT=8081 EXPERTMESH_OTLP_PORT=4318 exec .venv/bin/expertmesh serve --config benchmarks/gateway-observed.yaml" \
  --gateway-url http://127.0.0.1:8081 \
  --gateway-name expertmesh-on-no-tracing \
  --gateway-cmd "cd $REPO && EXPERTMESH_PORT=8083 EXPERTMESH_TRACING=false exec .venv/bin/expertmesh serve --config benchmarks/gateway-observed.yaml" \
  --gateway-url http://127.0.0.1:8083 \
  "${REDIS[@]}" \
  "$@"
