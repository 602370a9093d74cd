#!/usr/bin/env bash
# Deploys a new HearTalk image on a single Docker host with docker-compose,
# and rolls back on its own when the new version is not healthy:
#   build heartalk:<version> -> remember the running image under an exact
#   backup tag (written to .deploy/last-backup-tag) -> `up -d` with the new
#   image -> scripts/health-check.sh with retries -> on failure `up -d` with
#   exactly the recorded backup tag, check again, exit non-zero.
# The compose file must take the app's image from ${HEARTALK_IMAGE} (checked
# before anything changes).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/probe.sh
source scripts/lib/probe.sh

usage() {
  cat <<EOF
usage: scripts/deploy.sh [--tag VERSION] [--prod] [--dry-run] [options]

Builds heartalk:VERSION from the repository's Dockerfile, rolls it out with
docker-compose and health-checks it; on failure rolls back to the image that
was running before, under the backup tag recorded for this deployment.

  --tag VERSION       image version (default: git describe --always --dirty,
                      else a UTC timestamp); [A-Za-z0-9_.-], max 128
  --prod              use compose/docker-compose.prod.yml instead of
                      compose/docker-compose.yml
  --file FILE         compose file to use (repeatable; overrides --prod)
  --health-url URL    health endpoint to check (default: \$HEALTH_URL, else
                      http://127.0.0.1:\${HEARTALK_PORT:-8001}/api/v1/health,
                      and with --prod https://127.0.0.1/api/v1/health through
                      nginx, certificate name not checked)
  --retries N         health-check tries after each roll-out (default 10)
  --interval SECS     pause between tries (default 3)
  --timeout SECS      limit for each try, > 0 (default 5)
  --dry-run           print the commands (and the rollback plan), change nothing
  -h, --help          this text

Environment:
  DOCKER              docker command (default: docker)
  DOCKER_COMPOSE      compose command (default: docker-compose; may be
                      "docker compose")
  HEARTALK_REPOSITORY image repository (default: heartalk)
  HEARTALK_SERVICE    compose service of the app (default: heartalk)
  DEPLOY_STATE_DIR    state directory (default: .deploy)

The compose file must set the app's image from \${HEARTALK_IMAGE} (e.g.
image: \${HEARTALK_IMAGE:-heartalk:dev}); deploy.sh checks that with
\`config\` first, because otherwise neither the roll-out nor the rollback
would change what runs.

State (in DEPLOY_STATE_DIR): last-backup-tag (the exact rollback tag of the
latest deployment), current-tag (the image deployed and healthy), history
(one line per deployment), lock (one deployment at a time).

Manual rollback to the recorded tag:
  HEARTALK_IMAGE=\$(cat .deploy/last-backup-tag) docker-compose -f compose/docker-compose.yml up -d

Exit codes:
  0   deployed and healthy
  1   the new version failed (roll-out or health check) and was rolled back
      to the recorded backup tag, which is healthy again
  2   the new version failed and the rollback failed too, or there was no
      previous version to roll back to: the service may be down
  3   nothing was changed: the compose config (invalid, or not taking the
      image from HEARTALK_IMAGE), the build, the backup tag or the lock failed
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

read -r -a docker <<<"${DOCKER:-docker}"
read -r -a compose <<<"${DOCKER_COMPOSE:-docker-compose}"
repository=${HEARTALK_REPOSITORY:-heartalk}
service=${HEARTALK_SERVICE:-heartalk}
state_dir=${DEPLOY_STATE_DIR:-.deploy}
health_url=${HEALTH_URL:-}
insecure=()
retries=10
interval=3
timeout=5
prod=0
dry_run=0
tag=
files=()
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --prod) prod=1 && shift ;;
    --dry-run) dry_run=1 && shift ;;
    --tag | --file | --health-url | --retries | --interval | --timeout)
      (($# >= 2)) || die_usage "$1 needs a value"
      case $1 in
        --tag) tag=$2 ;;
        --file) files+=(-f "$2") ;;
        --health-url) health_url=$2 ;;
        --retries) retries=$2 ;;
        --interval) interval=$2 ;;
        --timeout) timeout=$2 ;;
      esac
      shift 2
      ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done
# --retries, --interval and --timeout go to scripts/health-check.sh: refused
# here, before anything, if it would refuse them (scripts/lib/probe.sh).
probe_check_options "$retries" "$interval" "$timeout"
((${#docker[@]})) || die_usage "DOCKER is empty"
((${#compose[@]})) || die_usage "DOCKER_COMPOSE is empty"
if ((${#files[@]} == 0)); then
  if ((prod)); then files=(-f compose/docker-compose.prod.yml); else files=(-f compose/docker-compose.yml); fi
fi
if [[ -z $health_url ]]; then
  if ((prod)); then
    # The service port is not published in production: check through nginx,
    # whose certificate names the public host, not 127.0.0.1.
    health_url=https://127.0.0.1/api/v1/health
    insecure=(--insecure)
  else
    health_url=http://127.0.0.1:${HEARTALK_PORT:-8001}/api/v1/health
  fi
fi
if [[ -z $tag ]]; then
  tag=$(git describe --tags --always --dirty 2>/dev/null || date -u +%Y%m%dT%H%M%SZ)
fi
[[ $tag =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$ ]] || die_usage "bad --tag: $tag"
[[ $tag == rollback-* ]] && die_usage "--tag rollback-* is reserved for backup tags"

new_image=$repository:$tag
backup_tag=

# Prints a command as it will run; runs it unless --dry-run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  ((dry_run)) || "$@"
}
compose_up() {
  run env "HEARTALK_IMAGE=$1" "${compose[@]}" "${files[@]}" up -d
  # nginx resolves the service's name when it starts: a recreated service
  # container has a new address, so restart the proxy with it (production).
  if ((prod)); then
    run env "HEARTALK_IMAGE=$1" "${compose[@]}" "${files[@]}" restart nginx
  fi
}
healthy() {
  run scripts/health-check.sh --url "$health_url" --retries "$retries" \
    --interval "$interval" --timeout "$timeout" "${insecure[@]}"
}
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

log "deploying $new_image with ${compose[*]} ${files[*]}"
# The compose file must take the image from HEARTALK_IMAGE, or the roll-out
# and the rollback below would both leave the running version as it is.
echo "+ HEARTALK_IMAGE=$new_image ${compose[*]} ${files[*]} config"
if rendered=$(env "HEARTALK_IMAGE=$new_image" "${compose[@]}" "${files[@]}" config); then
  grep -qF "image: $new_image" <<<"$rendered" \
    || fail 3 "the compose file does not take the image of $service from \${HEARTALK_IMAGE}: nothing changed"
elif ((!dry_run)); then
  fail 3 "the compose configuration is invalid: nothing changed"
fi
run "${docker[@]}" build -t "$new_image" . || fail 3 "docker build failed: nothing changed"

# The image of the running app container (an image id, sha256:...), if any.
# (A dry run without an engine says so in one line, not a traceback.)
if ((dry_run)); then exec 3>/dev/null; else exec 3>&2; fi
previous=
if cid=$("${compose[@]}" "${files[@]}" ps -q "$service" 2>&3 | head -n 1); then
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
  log "no running $service container: first deployment, nothing to roll back to"
fi

log "rolling out $new_image"
if compose_up "$new_image" && healthy; then
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
if compose_up "$backup_tag" && healthy; then
  run "${docker[@]}" tag "$backup_tag" "$repository:latest" || true
  ((dry_run)) && exit 0
  write_state current-tag "$backup_tag"
  fail 1 "$new_image failed; rolled back to $backup_tag, which is healthy"
fi
((dry_run)) && exit 0
fail 2 "$new_image failed and the rollback to $backup_tag is not healthy either: the service may be down"
