#!/usr/bin/env bash
# Checks the deployment assets: runs every scripts/checks/*.sh in order
# (linters and consistency checks for the Dockerfile, compose, Kubernetes,
# monitoring and the shell scripts, including their --help) and fails if any
# fails. The behaviour tests of the operations scripts are Rust end-to-end
# tests (tests/tests/ops_scripts.rs), run by nextest.
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
