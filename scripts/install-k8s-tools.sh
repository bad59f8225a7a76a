#!/usr/bin/env bash
# kubectl (with its built-in kustomize), which tests/test_kubernetes.py renders the manifests in
# deploy/kubernetes with, from the machine's apt repositories. Installs only what is missing.
# (The schemas they are validated against come with kubernetes-validate, a test extra.)
set -euo pipefail
if command -v kubectl >/dev/null; then
  echo "k8s tools: $(kubectl version --client 2>/dev/null | head -2 | tr '\n' ' ')"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "k8s tools: installing kubectl"
$SUDO apt-get update -qq || true  # a stale or unreachable list: try the install with what is there
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends kubectl >/dev/null
echo "k8s tools: $(kubectl version --client 2>/dev/null | head -2 | tr '\n' ' ')"
