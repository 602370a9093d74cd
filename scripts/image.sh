#!/usr/bin/env bash
# Builds the HearTalk image from the repository's Dockerfile with podman, on
# a machine that reaches no image registry (docs/deployment.md "Podman").
#
#   scripts/image.sh [--tag NAME]      # default NAME: localhost/heartalk:dev
#
# First it makes local stand-ins for the Dockerfile's two base images, tagged
# with the exact names the Dockerfile uses (and one for the compose files'
# Redis), each built once and reused until its recipe (or the host's Rust
# toolchain or CA bundle) changes:
#   - docker.io/library/rust:1-bookworm: Debian bookworm (mmdebstrap) with the
#     build tools, and the host's Rust toolchain laid out as the official image
#     does (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, on PATH);
#   - gcr.io/distroless/cc-debian12:nonroot: Debian's libc6, libgcc-s1 and
#     ca-certificates, the nonroot user 65532, no shell, no package manager;
#   - docker.io/library/redis:7.2-alpine, for the compose files: Debian's
#     redis-server and redis-tools (Redis 7.0), protected mode off as upstream.
# The first two carry this machine's CA bundle (/etc/ssl/certs/ca-certificates.crt):
# the package registries answer from inside a container only with it.
#
# podman runs with the runc runtime (crun refuses this machine's cgroup
# layout) and explicit ulimits no higher than the current hard limits (the
# sandbox cannot raise them). The last line printed is the image's name.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
usage: scripts/image.sh [--tag NAME]

Builds the image from Dockerfile with podman (default NAME: localhost/heartalk:dev),
first making local stand-ins for its base images (rust:1-bookworm and
gcr.io/distroless/cc-debian12:nonroot), each once. Prints the image's name last.

Exit codes:
  0   built
  1   a step failed (its output says which)
  64  bad usage
EOF
}
tag=localhost/heartalk:dev
while (($#)); do
  case $1 in
    --tag) [[ -n ${2:-} ]] || { usage >&2; exit 64; }; tag=$2; shift 2 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "image.sh: unknown argument: $1" >&2; usage >&2; exit 64 ;;
  esac
done

RUST_IMAGE=docker.io/library/rust:1-bookworm
RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
REDIS_IMAGE=docker.io/library/redis:7.2-alpine
BUILDER_CACHE=localhost/heartalk-builder:cache
HOST_CA=/etc/ssl/certs/ca-certificates.crt
SUITE=bookworm

# shellcheck source=scripts/lib/podman.sh
source scripts/lib/podman.sh

log() { echo "image.sh: $*" >&2; }

# The stand-in named $1 is current when its label matches $2.
current() {
  [[ $(podman image inspect --format '{{index .Labels "heartalk.standin"}}' "$1" 2>/dev/null) == "$2" ]]
}

# What each stand-in is made from: a change to it (or to the toolchain or the
# CA bundle) makes a new stand-in.
toolchain_dir=$(rustc --print sysroot)
toolchain=$(basename "$toolchain_dir")
rust_pkgs="build-essential,pkg-config,ca-certificates,curl,git,cmake,perl,libssl-dev"
runtime_pkgs="libc6,libgcc-s1,ca-certificates,base-files,netbase,tzdata"
ca_sum=$(sha256sum "$HOST_CA" | cut -c1-16)
rust_key="v1-$(rustc --version | tr ' ' _)-${rust_pkgs//,/+}-$ca_sum"
runtime_key="v3-${runtime_pkgs//,/+}-$ca_sum"
redis_pkgs="redis-server,redis-tools"
redis_key="v1-${redis_pkgs//,/+}"

make_runtime() {
  log "making $RUNTIME_IMAGE (Debian $SUITE: ${runtime_pkgs//,/ })"
  local hook
  # Only the listed packages are unpacked (no maintainer scripts, no shell;
  # with the extract variant only extract hooks run, so that is the hook);
  # distroless's users and groups, its writable /tmp, the host's CA bundle.
  hook=$(cat <<'HOOK'
set -e
r=$1
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$r/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"$r/etc/group"
mkdir -p "$r/home/nonroot" "$r/tmp" "$r/root" "$r/etc/ssl/certs"
chown 65532:65532 "$r/home/nonroot"; chmod 700 "$r/home/nonroot" "$r/root"; chmod 1777 "$r/tmp"
cp "$HEARTALK_HOST_CA" "$r/etc/ssl/certs/ca-certificates.crt"
for s in bin/sh bin/bash bin/dash usr/bin/sh usr/bin/bash usr/bin/dash; do rm -f "$r/$s"; done
HOOK
)
  HEARTALK_HOST_CA=$HOST_CA mmdebstrap --quiet --variant=extract --include="$runtime_pkgs" \
    --extract-hook="$hook" "$SUITE" - \
    | podman import \
      --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
      --change "LABEL heartalk.standin=$runtime_key" \
      - "$RUNTIME_IMAGE" >/dev/null
}

make_rust() {
  log "making $RUST_IMAGE (Debian $SUITE + the host's $toolchain)"
  local hook
  # The toolchain without its documentation, rustup and its proxies, as in
  # the official image; the host's CA bundle for cargo's downloads.
  hook=$(cat <<'HOOK'
set -e
r=$1
mkdir -p "$r/usr/local/rustup/toolchains/$HEARTALK_TOOLCHAIN" "$r/usr/local/cargo/bin"
tar -C "$HEARTALK_TOOLCHAIN_DIR" --exclude=./share/doc -cf - . \
  | tar -C "$r/usr/local/rustup/toolchains/$HEARTALK_TOOLCHAIN" -xf -
cp "$(command -v rustup)" "$r/usr/local/cargo/bin/rustup"
for p in cargo rustc rustdoc cargo-clippy clippy-driver cargo-fmt rustfmt; do
  ln -sf rustup "$r/usr/local/cargo/bin/$p"
done
printf 'version = "12"\ndefault_toolchain = "%s"\nprofile = "minimal"\n' "$HEARTALK_TOOLCHAIN" \
  >"$r/usr/local/rustup/settings.toml"
chmod -R a+rwX "$r/usr/local/cargo" "$r/usr/local/rustup"
cp "$HEARTALK_HOST_CA" "$r/etc/ssl/certs/ca-certificates.crt"
HOOK
)
  HEARTALK_HOST_CA=$HOST_CA HEARTALK_TOOLCHAIN=$toolchain HEARTALK_TOOLCHAIN_DIR=$toolchain_dir \
    mmdebstrap --quiet --variant=apt --include="$rust_pkgs" \
    --customize-hook="$hook" "$SUITE" - \
    | podman import \
      --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
      --change 'ENV CARGO_HOME=/usr/local/cargo' \
      --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change "ENV RUST_VERSION=${toolchain%%-*}" \
      --change 'WORKDIR /' \
      --change "LABEL heartalk.standin=$rust_key" \
      - "$RUST_IMAGE" >/dev/null
}

make_redis() {
  log "making $REDIS_IMAGE (Debian $SUITE: ${redis_pkgs//,/ }; the compose files' Redis)"
  local hook
  # The official image compiles protected mode off (a container's clients
  # are never on its loopback); Debian's binary has it on, so `redis-server`
  # on PATH is a wrapper that turns it off. /data is the working directory.
  hook=$(cat <<'HOOK'
set -e
r=$1
mkdir -p "$r/data" "$r/usr/local/bin"
printf '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n' >"$r/usr/local/bin/redis-server"
chmod 755 "$r/usr/local/bin/redis-server"
HOOK
)
  mmdebstrap --quiet --variant=apt --include="$redis_pkgs" --customize-hook="$hook" "$SUITE" - \
    | podman import \
      --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
      --change 'WORKDIR /data' --change 'EXPOSE 6379' \
      --change 'CMD ["redis-server"]' \
      --change "LABEL heartalk.standin=$redis_key" \
      - "$REDIS_IMAGE" >/dev/null
}

current "$RUNTIME_IMAGE" "$runtime_key" || make_runtime
current "$REDIS_IMAGE" "$redis_key" || make_redis
current "$RUST_IMAGE" "$rust_key" || make_rust

log "building $tag from Dockerfile"
started=$(date +%s)
# --pull=never: the bases are the stand-ins above, never a registry's;
# --format docker: the OCI format has no HEALTHCHECK (podman drops it).
build=(podman build "${PODMAN_LIMITS[@]}" --pull=never --network host --format docker
  --layers --file Dockerfile)
# The builder stage is tagged too, so that its layers (the compiled
# dependencies above all) are an ancestor of a named image: `podman image
# prune` below then drops the previous builds' layers but keeps that cache.
"${build[@]}" --target builder --tag "$BUILDER_CACHE" . >&2
"${build[@]}" --tag "$tag" . >&2
podman image prune --force >/dev/null
log "built $tag in $(( $(date +%s) - started )) s"
echo "$tag"
