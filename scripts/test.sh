#!/usr/bin/env bash
# Runs every check and every test of the project, on a fresh machine too:
# installs what the tests need when it is missing, then runs fmt, clippy and
# the whole nextest suite (unit tests and end-to-end tests with real
# processes, sockets and signals).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Debian packages the end-to-end tests use: taskset/unshare/setpriv
# (util-linux), curl, and promtool (prometheus).
need=()
command -v taskset >/dev/null || need+=(util-linux)
command -v unshare >/dev/null || need+=(util-linux)
command -v curl >/dev/null || need+=(curl)
command -v setpriv >/dev/null || need+=(util-linux)
# promtool checks the fleet-wide /metrics exposition.
command -v promtool >/dev/null || need+=(prometheus)
if ((${#need[@]})); then
  echo "test.sh: installing ${need[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the end-to-end tests run the built binaries)"
cargo build --workspace --bins --locked
echo "== cargo nextest"
cargo nextest run --workspace --locked --profile ci "$@"
