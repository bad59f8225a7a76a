#!/usr/bin/env bash
# The gateway at an earlier commit against the working tree, in ONE run of the shared harness
# (../shared/bench-gateways): direct to the fake upstream, LiteLLM's proxy, expertmesh at REF and
# expertmesh now, both with routing bypassed (benchmarks/gateway.yaml, model = the expert).
# Servers on CPU 1, load generator on CPU 0; targets interleaved cell by cell.
#
#   benchmarks/run_gateway_compare.sh REF [bench.py options, e.g. --concurrency 1,8 --repeats 2 --tools go]
#
# REF runs from a `git worktree` with this checkout's .venv: a folder of symlinks lays REF's
# top-level folders out as the `expertmesh` package (as the install's package-dir does), and the
# gateway is started from there, so `import expertmesh` finds REF's code before the installed one.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
REF="${1:?usage: $0 REF [bench.py options]}"; shift
HARNESS="${HARNESS:-$REPO/../shared/bench-gateways}"
export GWBENCH_HOME="${GWBENCH_HOME:-/tmp/gwbench}"
[ -x "$REPO/.venv/bin/expertmesh" ] || "$REPO/scripts/install.sh"

OLD="$GWBENCH_HOME/expertmesh-$REF"
if [ ! -d "$OLD/tree" ]; then
  git -C "$REPO" worktree add --detach "$OLD/tree" "$REF" >/dev/null
fi
mkdir -p "$OLD/pkg/expertmesh"
ln -sf "$OLD"/tree/expertmesh/* "$OLD/pkg/expertmesh/"
for folder in cli router experts gateway eval; do ln -sfn "$OLD/tree/$folder" "$OLD/pkg/expertmesh/$folder"; done

exec "$HARNESS/run.sh" \
  --gateway-name "expertmesh-$REF" \
  --gateway-cmd "cd $OLD/pkg && exec $REPO/.venv/bin/python -m expertmesh.cli serve --config $REPO/benchmarks/gateway.yaml --port 8082" \
  --gateway-url http://127.0.0.1:8082 \
  --gateway-name expertmesh \
  --gateway-cmd "cd $REPO && exec .venv/bin/expertmesh serve --config benchmarks/gateway.yaml --port 8080" \
  --gateway-url http://127.0.0.1:8080 \
  "$@"
