#!/usr/bin/env bash
# Runs every check and every test of the project, on a fresh machine too:
# installs what the tests need when it is missing (scripts/deps.sh), then
# runs fmt, clippy, builds the container image with podman (scripts/image.sh),
# the whole nextest suite (unit tests and end-to-end tests with real
# processes, sockets, signals, Redis, nginx, Prometheus and the image run
# in podman), and
# the deployment-asset checks (scripts/check-deploy.sh: linters and script
# tests).
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/deps.sh
source scripts/deps.sh

# A clean run writes about 4 GB under target/ and, on a fresh machine,
# about 4 GB of images under podman's storage. Too little room shows up
# late, as a linker's "No space left on device": say it first.
target=${CARGO_TARGET_DIR:-target}
mkdir -p "$target"
read -r free_kib mount < <(df -Pk "$target" | awk 'NR == 2 { print $4, $6 }')
if ((free_kib < 10 * 1024 * 1024)); then
  echo "test.sh: warning: only $((free_kib / 1024 / 1024)) GiB free on $mount; a clean run needs about 10 GiB" >&2
fi

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the end-to-end tests run the built binaries)"
cargo build --workspace --bins --locked
echo "== the image (scripts/image.sh: podman, from the real Dockerfile)"
HEARTALK_IMAGE=$(scripts/image.sh | tail -n 1)
export HEARTALK_IMAGE
echo "== cargo nextest"
cargo nextest run --workspace --locked --profile ci "$@"
echo "== deployment assets"
scripts/check-deploy.sh
