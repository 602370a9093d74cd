#!/usr/bin/env bash
# Builds the HearTalk image from the repository's Dockerfile with podman, on
# a machine that reaches no image registry (docs/deployment.md "Podman").
#
#   scripts/image.sh [--tag NAME]      # default NAME: localhost/heartalk:dev
#
# First it makes local stand-ins for the Dockerfile's two base images, tagged
# with the exact names the Dockerfile uses (and for the compose files'
# Redis, nginx, Prometheus and Alertmanager), each built once and reused
# until its recipe (or the host's Rust toolchain or CA bundle) changes:
#   - docker.io/library/rust:1-bookworm: Debian bookworm (mmdebstrap) with the
#     build tools, and the host's Rust toolchain laid out as the official image
#     does (RUSTUP_HOME=/usr/local/rustup, CARGO_HOME=/usr/local/cargo, on PATH);
#   - gcr.io/distroless/cc-debian12:nonroot: Debian's libc6, libgcc-s1,
#     ca-certificates, base-files, netbase and tzdata, the nonroot user 65532,
#     no shell, no package manager;
#   - docker.io/library/redis:7.2-alpine, for the compose files: Debian's
#     redis-server and redis-tools (Redis 7.0), protected mode off and an
#     entrypoint that drops to the redis user, as upstream's;
#   - docker.io/library/nginx:1.27-alpine, docker.io/prom/prometheus:v2.53.2 and
#     docker.io/prom/alertmanager:v0.27.0, for docker-compose.prod.yml: Debian's
#     nginx 1.22, prometheus 2.42 and prometheus-alertmanager 0.25 with busybox's
#     wget, at the official images' paths and users. Grafana has no Debian
#     package: there is no stand-in for grafana/grafana.
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
gcr.io/distroless/cc-debian12:nonroot) and for the compose files' Redis, nginx,
Prometheus and Alertmanager images from Debian packages, each once. Prints the
image's name last.

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
NGINX_IMAGE=docker.io/library/nginx:1.27-alpine
PROMETHEUS_IMAGE=docker.io/prom/prometheus:v2.53.2
ALERTMANAGER_IMAGE=docker.io/prom/alertmanager:v0.27.0
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

# Makes stand-in IMAGE from Debian $SUITE: mmdebstrap VARIANT with PACKAGES
# (comma-separated), HOOK run on the root filesystem as its HOOK_KIND hook
# (extract or customize), then `podman import` with the remaining arguments
# (--change ...) and the label KEY that current() compares.
#   make_standin IMAGE KEY VARIANT PACKAGES HOOK_KIND HOOK [--change C]...
make_standin() {
  local image=$1 key=$2 variant=$3 pkgs=$4 hook_kind=$5 hook=$6
  shift 6
  log "making $image (Debian $SUITE, $variant: ${pkgs//,/ })"
  mmdebstrap --quiet --variant="$variant" --include="$pkgs" "--$hook_kind-hook=$hook" "$SUITE" - \
    | podman import "$@" --change "LABEL heartalk.standin=$key" - "$image" >/dev/null
}

# What each stand-in is made from: a change to it (or to the toolchain or the
# CA bundle) makes a new stand-in. The hooks read these variables.
toolchain_dir=$(rustc --print sysroot)
toolchain=$(basename "$toolchain_dir")
ca_sum=$(sha256sum "$HOST_CA" | cut -c1-16)
export HEARTALK_HOST_CA=$HOST_CA HEARTALK_TOOLCHAIN=$toolchain HEARTALK_TOOLCHAIN_DIR=$toolchain_dir
# Where the official images have busybox's wget (the compose health checks);
# $1 is the hook's root filesystem.
# shellcheck disable=SC2016
wget_hook='mkdir -p "$1/usr/local/bin" && ln -sf /bin/busybox "$1/usr/local/bin/wget"'
path_env='ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

# gcr.io/distroless/cc-debian12:nonroot. Only the listed packages are
# unpacked (no maintainer scripts, no shell; with the extract variant only
# extract hooks run, so that is the hook); distroless's users and groups,
# its writable /tmp, the host's CA bundle.
runtime_pkgs="libc6,libgcc-s1,ca-certificates,base-files,netbase,tzdata"
runtime_key="v3-${runtime_pkgs//,/+}-$ca_sum"
runtime_hook=$(cat <<'HOOK'
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
current "$RUNTIME_IMAGE" "$runtime_key" \
  || make_standin "$RUNTIME_IMAGE" "$runtime_key" extract "$runtime_pkgs" extract "$runtime_hook" \
    --change 'USER 65532:65532' --change 'WORKDIR /home/nonroot' --change "$path_env" \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt'

# docker.io/library/redis:7.2-alpine, for the compose files: Debian's Redis
# 7.0. The official image compiles protected mode off (a container's clients
# are never on its loopback); Debian's binary has it on, so `redis-server` on
# PATH is a wrapper that turns it off (after the caller's arguments, so it
# also overrides a config that turns it on, which no compose file here does). Its docker-entrypoint.sh does what
# upstream's does: leading options mean redis-server; as root it gives the
# working directory (/data) to the redis user and re-runs itself as that
# user (setpriv where upstream has gosu); umask 0077.
redis_pkgs="redis-server,redis-tools"
redis_key="v2-${redis_pkgs//,/+}"
redis_hook=$(cat <<'HOOK'
set -e
r=$1
mkdir -p "$r/data" "$r/usr/local/bin"
printf '#!/bin/sh\nexec /usr/bin/redis-server "$@" --protected-mode no\n' >"$r/usr/local/bin/redis-server"
printf '%s\n' '#!/bin/sh' 'set -e' \
  'case $1 in -* | *.conf) set -- redis-server "$@" ;; esac' \
  'if [ "$1" = redis-server ] && [ "$(id -u)" = 0 ]; then' \
  '  find . \! -user redis -exec chown redis {} +' \
  '  exec setpriv --reuid=redis --regid=redis --init-groups "$0" "$@"' \
  'fi' \
  '[ "$(umask)" = 0022 ] && umask 0077' \
  'exec "$@"' >"$r/usr/local/bin/docker-entrypoint.sh"
chmod 755 "$r/usr/local/bin/redis-server" "$r/usr/local/bin/docker-entrypoint.sh"
HOOK
)
current "$REDIS_IMAGE" "$redis_key" \
  || make_standin "$REDIS_IMAGE" "$redis_key" apt "$redis_pkgs" customize "$redis_hook" \
    --change "$path_env" --change 'WORKDIR /data' --change 'EXPOSE 6379' \
    --change 'ENTRYPOINT ["docker-entrypoint.sh"]' --change 'CMD ["redis-server"]'

# nginx:1.27-alpine, for docker-compose.prod.yml: Debian's nginx 1.22
# (compose/nginx.conf is written for >= 1.22), logging to the container's
# stdout and stderr as the official image does, `nginx -g 'daemon off;'`,
# stopped by SIGQUIT (graceful).
nginx_pkgs="nginx,busybox"
nginx_key="v1-${nginx_pkgs//,/+}"
nginx_hook=$(cat <<'HOOK'
set -e
r=$1
mkdir -p "$r/var/cache/nginx"
ln -sf /dev/stdout "$r/var/log/nginx/access.log"
ln -sf /dev/stderr "$r/var/log/nginx/error.log"
HOOK
)
current "$NGINX_IMAGE" "$nginx_key" \
  || make_standin "$NGINX_IMAGE" "$nginx_key" apt "$nginx_pkgs" customize "$nginx_hook; $wget_hook" \
    --change "$path_env" --change 'EXPOSE 80' --change 'STOPSIGNAL SIGQUIT' \
    --change 'CMD ["nginx", "-g", "daemon off;"]'

# prom/prometheus and prom/alertmanager, for docker-compose.prod.yml:
# Debian's prometheus 2.42 and prometheus-alertmanager 0.25 at the official
# images' paths (/bin/prometheus, /bin/alertmanager), as their user (nobody)
# with their data directories and default arguments.
prometheus_pkgs="prometheus,busybox"
prometheus_key="v1-${prometheus_pkgs//,/+}"
current "$PROMETHEUS_IMAGE" "$prometheus_key" \
  || make_standin "$PROMETHEUS_IMAGE" "$prometheus_key" apt "$prometheus_pkgs" customize \
    "mkdir -p \"\$1/prometheus\" && chown 65534:65534 \"\$1/prometheus\"; $wget_hook" \
    --change "$path_env" --change 'USER 65534:65534' --change 'WORKDIR /prometheus' \
    --change 'EXPOSE 9090' --change 'ENTRYPOINT ["/bin/prometheus"]' \
    --change 'CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/prometheus"]'

alertmanager_pkgs="prometheus-alertmanager,busybox"
alertmanager_key="v1-${alertmanager_pkgs//,/+}"
alertmanager_hook=$(cat <<'HOOK'
set -e
r=$1
mkdir -p "$r/alertmanager" "$r/etc/alertmanager"
chown 65534:65534 "$r/alertmanager"
ln -sf prometheus-alertmanager "$r/usr/bin/alertmanager"
HOOK
)
current "$ALERTMANAGER_IMAGE" "$alertmanager_key" \
  || make_standin "$ALERTMANAGER_IMAGE" "$alertmanager_key" apt "$alertmanager_pkgs" customize \
    "$alertmanager_hook; $wget_hook" \
    --change "$path_env" --change 'USER 65534:65534' --change 'WORKDIR /alertmanager' \
    --change 'EXPOSE 9093' --change 'ENTRYPOINT ["/bin/alertmanager"]' \
    --change 'CMD ["--config.file=/etc/alertmanager/alertmanager.yml", "--storage.path=/alertmanager"]'

# docker.io/library/rust:1-bookworm: the build tools, and the host's
# toolchain without its documentation, rustup and its proxies, as in the
# official image; the host's CA bundle for cargo's downloads.
rust_pkgs="build-essential,pkg-config,ca-certificates,curl,git,cmake,perl,libssl-dev"
rust_key="v1-$(rustc --version | tr ' ' _)-${rust_pkgs//,/+}-$ca_sum"
rust_hook=$(cat <<'HOOK'
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
current "$RUST_IMAGE" "$rust_key" \
  || make_standin "$RUST_IMAGE" "$rust_key" apt "$rust_pkgs" customize "$rust_hook" \
    --change 'ENV RUSTUP_HOME=/usr/local/rustup' \
    --change 'ENV CARGO_HOME=/usr/local/cargo' \
    --change 'ENV PATH=/usr/local/cargo/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "ENV RUST_VERSION=${toolchain%%-*}" \
    --change 'WORKDIR /'

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
