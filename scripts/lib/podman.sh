# shellcheck shell=bash
# Sourced by scripts/image.sh and the image tests: makes every podman (and
# podman-compose) call of the caller work on this kind of machine, through a
# containers.conf under target/podman named by CONTAINERS_CONF:
#   - the runc runtime: crun refuses a hybrid cgroup v1 layout;
#   - default ulimits no higher than the current hard limits (the sandbox may
#     lower limits, never raise them; podman's defaults would, and fail with
#     "setrlimit: Operation not permitted"): nofile ≤ 16384, nproc ≤ 4096;
#   - the netavark network backend (with aardvark-dns), named, not guessed
#     (podman 4.3 picks CNI on a machine that already has containers): CNI
#     gives an `internal: true` network no DNS, so in docker-compose.prod.yml
#     the service could not find `redis` on its internal backend network.
#     Its default network gets 10.90.0.0/16, not podman's 10.88.0.0/16: a
#     machine that ran podman with CNI keeps a cni-podman0 bridge routing
#     10.88.0.0/16, and the host could not reach a container published there
#     ("No route to host").
# PODMAN_LIMITS holds the same limits as flags, for `podman build`, which
# does not read default_ulimits.

nofile=$(ulimit -Hn)
[[ $nofile == unlimited || $nofile -gt 16384 ]] && nofile=16384
nproc=$(ulimit -Hu)
[[ $nproc == unlimited || $nproc -gt 4096 ]] && nproc=4096
# shellcheck disable=SC2034 # used by the scripts that source this one
PODMAN_LIMITS=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")
mkdir -p target/podman
cat >target/podman/containers.conf <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[network]
network_backend = "netavark"
default_subnet = "10.90.0.0/16"

[engine]
runtime = "runc"
CONF
CONTAINERS_CONF=$PWD/target/podman/containers.conf
export CONTAINERS_CONF
unset nofile nproc
