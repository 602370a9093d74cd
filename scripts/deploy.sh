#!/usr/bin/env bash
# Deploys a new HearTalk image on a single host with docker-compose (or
# podman-compose), and rolls back on its own when the new version is not
# healthy:
#   build heartalk:<version> (or take --image) -> remember the running image
#   under an exact backup tag (written to .deploy/last-backup-tag) -> roll
#   out the new image -> check that the app container now runs exactly that
#   image id -> scripts/health-check.sh with retries -> on failure roll out
#   exactly the recorded backup tag, check again, exit non-zero.
# The compose file must take the app's image from ${HEARTALK_IMAGE} (checked
# before anything changes).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/probe.sh
source scripts/lib/probe.sh

usage() {
  cat <<EOF
usage: scripts/deploy.sh [--tag VERSION | --image IMAGE] [--prod] [--dry-run] [options]

Builds heartalk:VERSION from the repository's Dockerfile (or takes an image
already built, --image), rolls it out with docker-compose or podman-compose
and health-checks it; on failure rolls back to the image that was running
before, under the backup tag recorded for this deployment.

  --tag VERSION       image version to build (default: git describe --always
                      --dirty, else a UTC timestamp); [A-Za-z0-9_.-], max 128
  --image IMAGE       deploy this existing image (e.g. built and pushed by CI)
                      instead of building one; it must be present locally
  --prod              use compose/docker-compose.prod.yml instead of
                      compose/docker-compose.yml
  --file FILE         compose file to use (repeatable; overrides --prod)
  --project-name NAME compose project (passed as -p; default: what compose
                      itself would take: with docker, \$COMPOSE_PROJECT_NAME
                      or the one in the .env beside the first compose file;
                      else, and always with podman-compose, that file's
                      directory name); lower-case [a-z0-9_-]
  --health-url URL    health endpoint to check (default: \$HEALTH_URL, else
                      http://127.0.0.1:HEARTALK_PORT/api/v1/health, and with
                      --prod https://127.0.0.1:HTTPS_PORT/api/v1/health
                      through nginx, certificate name not checked; each port
                      from the environment, else the .env beside the compose
                      file, else 8001 and 443)
  --retries N         health-check tries after each roll-out (default 10)
  --interval SECS     pause between tries (default 3)
  --timeout SECS      limit for each try, > 0 (default 5)
  --stop-timeout SECS podman-compose only: how long the old app container
                      may drain before it is killed (default: the service's
                      stop_grace_period in the compose file, else 10)
  --dry-run           print the commands (and the rollback plan), change nothing
  -h, --help          this text

Environment:
  DOCKER              docker command (default: docker; "podman" with
                      podman-compose)
  DOCKER_COMPOSE      compose command (default: docker-compose; may be
                      "docker compose" or podman-compose)
  DEPLOY_COMPOSE_FLAVOR  docker or podman-compose (default: podman-compose
                      when DOCKER_COMPOSE's command is named podman-compose,
                      else docker)
  HEARTALK_REPOSITORY image repository of built, backup and latest tags
                      (default: heartalk)
  HEARTALK_SERVICE    compose service of the app (default: heartalk)
  DEPLOY_STATE_DIR    state directory (default: .deploy)

The compose file must set the app's image from \${HEARTALK_IMAGE} (e.g.
image: \${HEARTALK_IMAGE:-heartalk:dev}), because otherwise neither the
roll-out nor the rollback would change what runs. deploy.sh checks that
first: with docker, in the output of \`config\`; with podman-compose (1.0
has no \`config\`), in the service's image: entry of the compose files.

podman-compose (1.0) does not recreate a container whose image changed
(\`up -d\` starts the old one again), and its --force-recreate also stops
the app's dependencies and kills after 1 s. So with podman-compose,
deploy.sh stops the app container itself (DOCKER stop -t STOP_TIMEOUT, so
in-flight requests drain), removes it, then runs \`up -d\`, which creates
only the missing container. Either way, after each roll-out deploy.sh checks
that every app container (found by its labels com.docker.compose.project and
com.docker.compose.service) runs the new image's id: a roll-out that did not
switch is a failed roll-out. A container is recreated, so the port is closed
for a moment (measured in docs/deployment.md); for no gap at all, use
\`heartalk reload\` inside the container, Swarm or Kubernetes.

State (in DEPLOY_STATE_DIR): last-backup-tag (the exact rollback tag of the
latest deployment), current-tag (the image deployed and healthy), history
(one line per deployment), lock (one deployment at a time).

Manual rollback to the recorded tag:
  HEARTALK_IMAGE=\$(cat .deploy/last-backup-tag) docker-compose -f compose/docker-compose.yml up -d

Exit codes:
  0   deployed and healthy
  1   the new version failed (roll-out, switch or health check) and was rolled
      back to the recorded backup tag, which runs and is healthy again
  2   the new version failed and the rollback failed too, or there was no
      previous version to roll back to: the service may be down
  3   nothing was changed: the compose config (invalid, or not taking the
      image from HEARTALK_IMAGE), the build or --image, the backup tag or the
      lock failed
  64  bad usage
EOF
}

die_usage() {
  echo "deploy: $1 (see --help)" >&2
  exit 64
}
log() { echo "deploy: $*"; }
fail() {
  echo "deploy: $2" >&2
  record "$1" "$2"
  exit "$1"
}

read -r -a compose <<<"${DOCKER_COMPOSE:-docker-compose}"
repository=${HEARTALK_REPOSITORY:-heartalk}
service=${HEARTALK_SERVICE:-heartalk}
state_dir=${DEPLOY_STATE_DIR:-.deploy}
health_url=${HEALTH_URL:-}
flavor=${DEPLOY_COMPOSE_FLAVOR:-}
insecure=()
retries=10
interval=3
timeout=5
stop_timeout=
prod=0
dry_run=0
tag=
image=
project=
paths=()
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --prod) prod=1 && shift ;;
    --dry-run) dry_run=1 && shift ;;
    --tag | --image | --file | --project-name | --health-url | --retries | --interval | --timeout | --stop-timeout)
      (($# >= 2)) || die_usage "$1 needs a value"
      case $1 in
        --tag) tag=$2 ;;
        --image) image=$2 ;;
        --file) paths+=("$2") ;;
        --project-name) project=$2 ;;
        --health-url) health_url=$2 ;;
        --retries) retries=$2 ;;
        --interval) interval=$2 ;;
        --timeout) timeout=$2 ;;
        --stop-timeout) stop_timeout=$2 ;;
      esac
      shift 2
      ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done
# --retries, --interval and --timeout go to scripts/health-check.sh: refused
# here, before anything, if it would refuse them (scripts/lib/probe.sh).
probe_check_options "$retries" "$interval" "$timeout"
[[ -z $stop_timeout || $stop_timeout =~ ^[0-9]+$ ]] \
  || die_usage "--stop-timeout must be a whole number of seconds: $stop_timeout"
((${#compose[@]})) || die_usage "DOCKER_COMPOSE is empty"
if [[ -z $flavor ]]; then
  flavor=docker
  [[ $(basename -- "${compose[0]}") == podman-compose* ]] && flavor=podman-compose
fi
[[ $flavor == docker || $flavor == podman-compose ]] \
  || die_usage "DEPLOY_COMPOSE_FLAVOR must be docker or podman-compose: $flavor"
if [[ $flavor == podman-compose ]]; then
  read -r -a docker <<<"${DOCKER:-podman}"
else
  read -r -a docker <<<"${DOCKER:-docker}"
  [[ -n $stop_timeout ]] && log "--stop-timeout applies to podman-compose only: ignored"
fi
if ((${#paths[@]} == 0)); then
  if ((prod)); then paths=(compose/docker-compose.prod.yml); else paths=(compose/docker-compose.yml); fi
fi
files=()
for f in "${paths[@]}"; do files+=(-f "$f"); done
dotenv=$(dirname -- "${paths[0]}")/.env
# The assignments of NAME in the .env beside the first compose file, as
# raw `NAME=value` lines (an `export ` before them allowed); none: status 1.
dotenv_lines() {
  [[ -f $dotenv ]] && grep -E "^[[:space:]]*(export[[:space:]]+)?$1[[:space:]]*=" "$dotenv"
}
# A setting as compose takes it: the environment's, else the last NAME=value
# of the .env (quotes around the value and a ` #` comment after it dropped),
# else $2.
setting() {
  local value=${!1:-}
  if [[ -z $value ]]; then
    value=$(dotenv_lines "$1" | tail -n 1 | sed -E 's/^[^=]*=[[:space:]]*//; s/[[:space:]]+#.*$//' \
      | tr -d "\"'\r" | sed -E 's/[[:space:]]+$//') || true
  fi
  printf '%s\n' "${value:-$2}"
}
# The project: given, else what compose itself would take (the name is then
# always passed as -p), lower-cased and cut to the characters compose keeps.
# Docker's compose takes COMPOSE_PROJECT_NAME from the environment, else from
# the .env beside the first compose file (.env.example sets it);
# podman-compose 1.0 ignores it in both places and takes the directory name.
# (A top-level `name:` in the compose file is not read: pass --project-name.)
if [[ -z $project ]]; then
  project=
  [[ $flavor == docker ]] && project=$(setting COMPOSE_PROJECT_NAME "")
  if [[ -z $project ]]; then
    project=$(cd "$(dirname -- "${paths[0]}")" 2>/dev/null && basename -- "$PWD") \
      || die_usage "no directory for ${paths[0]}"
  fi
  project=$(tr '[:upper:]' '[:lower:]' <<<"$project" | tr -cd 'a-z0-9_-')
fi
[[ $project =~ ^[a-z0-9][a-z0-9_-]*$ ]] || die_usage "bad --project-name: $project"
compose+=(-p "$project")
if [[ -z $health_url ]]; then
  if ((prod)); then
    # The service port is not published in production: check through nginx,
    # whose certificate names the public host, not 127.0.0.1.
    health_url=https://127.0.0.1:$(setting HTTPS_PORT 443)/api/v1/health
    insecure=(--insecure)
  else
    health_url=http://127.0.0.1:$(setting HEARTALK_PORT 8001)/api/v1/health
  fi
fi
if [[ -n $image ]]; then
  [[ -z $tag ]] || die_usage "--tag and --image together"
  [[ $image =~ ^[A-Za-z0-9][A-Za-z0-9_.:/@-]*$ ]] || die_usage "bad --image: $image"
  new_image=$image
else
  if [[ -z $tag ]]; then
    tag=$(git describe --tags --always --dirty 2>/dev/null || date -u +%Y%m%dT%H%M%SZ)
  fi
  [[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die_usage "bad --tag: $tag"
  [[ $tag == rollback-* ]] && die_usage "--tag rollback-* is reserved for backup tags"
  new_image=$repository:$tag
fi
backup_tag=

# Prints a command as it will run; runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  ((dry_run)) || "$@"
}
# The ids of the app's containers (running or not), by compose's labels,
# which docker-compose, docker compose and podman-compose all set.
# (`compose ps -q SERVICE` would not do: podman-compose 1.0 ignores SERVICE.)
# One-off containers (`compose run`) carry the same labels: Docker's compose
# marks them com.docker.compose.oneoff=True; podman-compose 1.0 only names
# them PROJECT_SERVICE_tmpNNNNN, where a service's are PROJECT_SERVICE_N.
app_containers() {
  local filters=(--filter "label=com.docker.compose.project=$project"
    --filter "label=com.docker.compose.service=$service")
  [[ $flavor == docker ]] && filters+=(--filter label=com.docker.compose.oneoff=False)
  "${docker[@]}" ps -a "${filters[@]}" --format '{{.ID}} {{.Names}}' \
    | while read -r id name; do
      if [[ $flavor == docker || $name =~ ^${project}_${service}_[0-9]+$ ]]; then
        echo "$id"
      fi
    done
}
# podman-compose 1.0's `up -d` starts an existing container again whatever
# its image: stop the app's containers (draining), remove them, so that
# `up -d` creates them from HEARTALK_IMAGE; the other services keep running.
remove_app() {
  local ids id
  if ((dry_run)); then
    echo "+ ${docker[*]} stop -t $stop_timeout <each $service container>"
    echo "+ ${docker[*]} rm <each $service container>"
    return 0
  fi
  ids=$(app_containers) || return 1
  for id in $ids; do
    run "${docker[@]}" stop -t "$stop_timeout" "$id" || return 1
    run "${docker[@]}" rm "$id" || return 1
  done
}
compose_up() {
  if [[ $flavor == podman-compose ]]; then
    remove_app || return 1
  fi
  run env "HEARTALK_IMAGE=$1" "${compose[@]}" "${files[@]}" up -d || return 1
  # nginx resolves the service's name when it starts: a recreated service
  # container has a new address, so restart the proxy with it (production).
  if ((prod)); then
    run env "HEARTALK_IMAGE=$1" "${compose[@]}" "${files[@]}" restart nginx || return 1
  fi
}
# Every app container runs exactly the image $1 names (by id): `up -d` may
# succeed and leave the old version running.
switched() {
  if ((dry_run)); then
    log "(then: check that every $service container runs the image id of $1)"
    return 0
  fi
  # (Compared without a sha256: prefix, which an engine may put on one of
  # the two and not the other.)
  local want ids id got n=0
  want=$("${docker[@]}" image inspect --format '{{.Id}}' "$1") || return 1
  ids=$(app_containers) || return 1
  for id in $ids; do
    got=$("${docker[@]}" inspect --format '{{.Image}}' "$id") || return 1
    if [[ ${got#sha256:} != "${want#sha256:}" ]]; then
      echo "deploy: container $id of $service runs image $got, not $1 ($want)" >&2
      return 1
    fi
    n=$((n + 1))
  done
  if ((n == 0)); then
    echo "deploy: no $service container after the roll-out of $1" >&2
    return 1
  fi
  log "$n $service container(s) run $1 ($want)"
}
healthy() {
  run scripts/health-check.sh --url "$health_url" --retries "$retries" \
    --interval "$interval" --timeout "$timeout" "${insecure[@]}"
}
rollout() { compose_up "$1" && switched "$1" && healthy; }
record() {
  ((dry_run)) && return 0
  printf '%s deployed=%s backup=%s exit=%s %s\n' "$(date -u +%FT%TZ)" "$new_image" \
    "${backup_tag:--}" "$1" "$2" >>"$state_dir/history"
}
# Writes a state file atomically (a reader never sees half of it).
write_state() {
  printf '%s\n' "$2" >"$state_dir/.$1.tmp"
  mv -f "$state_dir/.$1.tmp" "$state_dir/$1"
}

if ((dry_run)); then
  log "dry run: nothing will be changed"
else
  mkdir -p "$state_dir"
  exec 9>"$state_dir/lock"
  flock -n 9 || {
    echo "deploy: another deployment holds $state_dir/lock" >&2
    exit 3
  }
fi

log "deploying $new_image with ${compose[*]} ${files[*]} ($flavor)"
# The compose file must take the image from HEARTALK_IMAGE, or the roll-out
# and the rollback below would both leave the running version as it is.
if [[ $flavor == podman-compose ]]; then
  # No `config` in podman-compose 1.0: read the service's image: and
  # stop_grace_period entries from the files (the last file that sets one
  # wins, as in compose). podman-compose itself runs on python3-yaml.
  log "podman-compose has no \`config\`: checking the image: of $service in ${paths[*]}"
  read -r -d '' read_service <<'PY' || true
import sys
import yaml

service, image, grace = sys.argv[1], "", ""
for path in sys.argv[2:]:
    with open(path, encoding="utf-8") as f:
        doc = yaml.safe_load(f) or {}
    svc = (doc.get("services") or {}).get(service)
    if isinstance(svc, dict):
        image = str(svc.get("image", image))
        grace = str(svc.get("stop_grace_period", grace))
print(image)
print(grace)
PY
  settings=$(python3 -c "$read_service" "$service" "${paths[@]}") \
    || fail 3 "cannot read the compose files ${paths[*]}: nothing changed"
  image_entry=$(sed -n 1p <<<"$settings")
  grace=$(sed -n 2p <<<"$settings")
  # shellcheck disable=SC2016 # the literal text ${HEARTALK_IMAGE...} is sought
  # ${HEARTALK_IMAGE}, ${HEARTALK_IMAGE:-default}, ${HEARTALK_IMAGE:?message}
  # (docker-compose.prod.yml), their forms without the colon, $HEARTALK_IMAGE.
  if [[ ! $image_entry =~ \$(\{HEARTALK_IMAGE([}]|:?[-?])|HEARTALK_IMAGE([^A-Za-z0-9_]|$)) ]]; then
    fail 3 "the compose file does not take the image of $service from \${HEARTALK_IMAGE} (image: ${image_entry:-none}): nothing changed"
  fi
  # podman-compose 1.0 lets the .env beside the first compose file override
  # the environment: a HEARTALK_IMAGE there would pin the image.
  if dotenv_lines HEARTALK_IMAGE >/dev/null; then
    fail 3 "$dotenv sets HEARTALK_IMAGE, which podman-compose puts before the environment (so no roll-out could change the image): remove it from there: nothing changed"
  fi
  if [[ -z $stop_timeout ]]; then
    stop_timeout=10
    if [[ -n $grace && $grace =~ ^(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?$ ]]; then
      stop_timeout=$((${BASH_REMATCH[2]:-0} * 3600 + ${BASH_REMATCH[4]:-0} * 60 + ${BASH_REMATCH[6]:-0}))
    elif [[ -n $grace ]]; then
      log "stop_grace_period '$grace' not understood: the old container gets 10 s to drain"
    fi
  fi
  log "an old $service container gets ${stop_timeout}s to drain (stop -t)"
else
  echo "+ HEARTALK_IMAGE=$new_image ${compose[*]} ${files[*]} config"
  if rendered=$(env "HEARTALK_IMAGE=$new_image" "${compose[@]}" "${files[@]}" config); then
    grep -qF "image: $new_image" <<<"$rendered" \
      || fail 3 "the compose file does not take the image of $service from \${HEARTALK_IMAGE}: nothing changed"
  elif ((!dry_run)); then
    fail 3 "the compose configuration is invalid: nothing changed"
  fi
fi
if [[ -n $image ]]; then
  log "deploying the existing image $image (no build)"
  if ((!dry_run)); then
    "${docker[@]}" image inspect --format '{{.Id}}' "$image" >/dev/null \
      || fail 3 "no image $image here: nothing changed"
  fi
else
  run "${docker[@]}" build -t "$new_image" . || fail 3 "docker build failed: nothing changed"
fi
# The image's HEALTHCHECK is the service's health in the compose files
# (nginx waits for it: depends_on service_healthy). An image built in the
# OCI format (podman's default) has none, and nginx would never start.
if ((!dry_run)); then
  check=$("${docker[@]}" image inspect --format '{{.Config.Healthcheck}}' "$new_image") || check=
  [[ -n $check && $check != "<nil>" ]] \
    || fail 3 "$new_image has no HEALTHCHECK (built in the OCI format? build with \`podman build --format docker\`, as scripts/image.sh does): nothing changed"
fi

# The image of the app container (an image id), if there is one.
# (A dry run without an engine says so in one line, not a traceback.)
if ((dry_run)); then exec 3>/dev/null; else exec 3>&2; fi
previous=
if cid=$(app_containers 2>&3 | head -n 1); then
  if [[ -n $cid ]]; then
    previous=$("${docker[@]}" inspect --format '{{.Image}}' "$cid" 2>&3) \
      || { ((dry_run)) || fail 3 "cannot inspect container $cid: nothing changed"; }
  fi
elif ((dry_run)); then
  log "(cannot list the running containers; the plan below assumes one runs)"
  previous=RUNNING_IMAGE_ID
else
  fail 3 "cannot list the running containers: nothing changed"
fi
if [[ -n $previous ]]; then
  backup_tag=$repository:rollback-$(date -u +%Y%m%dT%H%M%SZ)
  log "remembering the running image $previous as $backup_tag"
  run "${docker[@]}" tag "$previous" "$backup_tag" || fail 3 "cannot tag the running image: nothing changed"
  if ((!dry_run)); then
    # The rollback must not depend on a tag that does not exist: check it.
    got=$("${docker[@]}" image inspect --format '{{.Id}}' "$backup_tag") || got=
    [[ $got == "$previous" ]] || fail 3 "$backup_tag resolves to '${got}', not $previous: nothing changed"
    write_state last-backup-tag "$backup_tag"
  fi
  ((dry_run)) || log "backup tag recorded in $state_dir/last-backup-tag"
else
  log "no $service container: first deployment, nothing to roll back to"
fi

log "rolling out $new_image"
if rollout "$new_image"; then
  run "${docker[@]}" tag "$new_image" "$repository:latest" || true
  ((dry_run)) || write_state current-tag "$new_image"
  if ((dry_run)); then
    log "if $new_image is not healthy, the rollback is:"
  else
    record 0 "healthy"
    log "$new_image is deployed and healthy"
    exit 0
  fi
fi

if [[ -z $backup_tag ]]; then
  ((dry_run)) && exit 0
  fail 2 "$new_image is not healthy and there is no previous version to roll back to"
fi
((dry_run)) || log "$new_image failed: rolling back to $backup_tag"
if rollout "$backup_tag"; then
  run "${docker[@]}" tag "$backup_tag" "$repository:latest" || true
  ((dry_run)) && exit 0
  write_state current-tag "$backup_tag"
  fail 1 "$new_image failed; rolled back to $backup_tag, which is healthy"
fi
((dry_run)) && exit 0
fail 2 "$new_image failed and the rollback to $backup_tag is not healthy either: the service may be down"
