#!/usr/bin/env bash
# Checks the deployment assets: runs every scripts/checks/*.sh in order
# (linters for the Dockerfile, compose, Kubernetes, monitoring and shell
# scripts, and the tests of the operations scripts) and fails if any fails.
# Expects the tools of scripts/deps.sh (scripts/test.sh sources it first).
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  echo "usage: scripts/check-deploy.sh   (runs scripts/checks/*.sh; exit 1 if any fails)"
  exit 0
fi
[[ -d target/tools-venv/bin ]] && PATH="$PWD/target/tools-venv/bin:$PATH"
failed=()
shopt -s nullglob
for check in scripts/checks/*.sh; do
  echo "-- $check"
  if ! bash "$check"; then
    failed+=("$check")
  fi
done
if ((${#failed[@]})); then
  echo "check-deploy: FAILED: ${failed[*]}" >&2
  exit 1
fi
echo "check-deploy: all checks passed"
