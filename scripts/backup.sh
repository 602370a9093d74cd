#!/usr/bin/env bash
# Backs up a HearTalk deployment into one timestamped directory: the config
# (ecosystem.toml and every file under config/, an env file if given), a
# tar.gz of the log directory, a consistent Redis snapshot, an INFO.txt and
# a MANIFEST of sha256 sums. The backup is built under a temporary name,
# verified with scripts/verify-backup.sh, and only then renamed into place;
# older backups are pruned by age with --keep-days.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib/redis.sh
source "$here/lib/redis.sh"

usage() {
  cat <<EOF
usage: scripts/backup.sh [--dest DIR] [--config DIR] [--env-file FILE] [--logs DIR | --no-logs]
                         [--redis-url URL [--redis-method rdb|bgsave] | --no-redis]
                         [--keep-days N]

Writes DEST/heartalk-backup-<UTC yyyymmddThhmmssZ>/ containing
  config/ecosystem.toml, config/config/...   the config (paths kept)
  env/<name>                                 the --env-file (mode 0600)
  logs.tar.gz                                the log directory
  redis/dump.rdb                             the Redis dataset (RDB)
  INFO.txt                                   what was backed up, from where
  MANIFEST                                   sha256 of every file above
The directory is mode 0700 (it holds secrets and user data).

  --dest DIR         where backups go (default: \$BACKUP_DEST, else backups)
  --config DIR       directory with ecosystem.toml and config/ (default: .)
  --env-file FILE    also keep this env file (secrets!)
  --logs DIR         log directory to archive (default: CONFIG/logs if it exists)
  --no-logs          no logs archive
  --redis-url URL    redis://[user:password@]host[:port][/db] (default: \$REDIS_URL;
                     without either, no Redis snapshot is taken)
  --redis-method M   rdb (default): \`redis-cli --rdb\`, which makes the server
                     write a fresh snapshot and streams it over the connection;
                     works against a remote, password-protected Redis (it needs
                     the SYNC command, which some managed services disable).
                     bgsave: BGSAVE, wait until it has finished (LASTSAVE moves,
                     rdb_bgsave_in_progress:0, rdb_last_bgsave_status:ok), then
                     copy CONFIG GET dir/dbfilename: the Redis data directory
                     must be readable on this host.
  --redis-timeout S  longest wait for the snapshot (default 300)
  --no-redis         no Redis snapshot even if REDIS_URL is set
  --keep-days N      afterwards, delete DEST/heartalk-backup-* older than N days
                     (age from the timestamp in the name; N >= 1)
  -h, --help         this text

Exit codes:
  0   backup written and verified (and old ones pruned)
  1   failed: a file, the logs archive, the Redis snapshot or the
      verification; nothing is left under the final name
  64  bad usage
EOF
}

die_usage() {
  echo "backup: $1 (see --help)" >&2
  exit 64
}
die() {
  echo "backup: $*" >&2
  exit 1
}
log() { echo "backup: $*"; }

dest=${BACKUP_DEST:-backups}
config_dir=.
env_file=
logs=
logs_given=0
no_logs=0
redis_url=${REDIS_URL:-}
redis_method=rdb
redis_timeout=300
keep_days=
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --no-logs) no_logs=1 && shift ;;
    --no-redis) redis_url= && shift ;;
    --dest | --config | --env-file | --logs | --redis-url | --redis-method | --redis-timeout | --keep-days)
      (($# >= 2)) || die_usage "$1 needs a value"
      case $1 in
        --dest) dest=$2 ;;
        --config) config_dir=$2 ;;
        --env-file) env_file=$2 ;;
        --logs) logs=$2 && logs_given=1 ;;
        --redis-url) redis_url=$2 ;;
        --redis-method) redis_method=$2 ;;
        --redis-timeout) redis_timeout=$2 ;;
        --keep-days) keep_days=$2 ;;
      esac
      shift 2
      ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done
[[ $redis_method == rdb || $redis_method == bgsave ]] || die_usage "--redis-method must be rdb or bgsave"
[[ $redis_timeout =~ ^[1-9][0-9]*$ ]] || die_usage "--redis-timeout must be a whole number of seconds"
[[ -z $keep_days || $keep_days =~ ^[1-9][0-9]*$ ]] || die_usage "--keep-days must be a whole number >= 1"
((no_logs && logs_given)) && die_usage "--logs and --no-logs together"
[[ -d $config_dir ]] || die_usage "--config $config_dir is not a directory"
[[ -f $config_dir/ecosystem.toml ]] || die_usage "no ecosystem.toml in $config_dir"
[[ -z $env_file || -f $env_file ]] || die_usage "--env-file $env_file is not a file"
if [[ -n $redis_url ]]; then
  redis_parse_url "$redis_url" || die_usage "bad --redis-url"
fi
if ((!no_logs)) && [[ -z $logs ]]; then
  [[ -d $config_dir/logs ]] && logs=$config_dir/logs
fi
[[ -z $logs || -d $logs ]] || die_usage "--logs $logs is not a directory"

# Fail before writing anything when Redis is not reachable.
if [[ -n $redis_url ]]; then
  pong=$(rcli PING 2>&1) || true
  [[ $pong == PONG ]] || die "Redis $(redis_display) does not answer PING: ${pong//$'\n'/ }"
fi

umask 077
mkdir -p "$dest"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
name=heartalk-backup-$stamp
[[ -e $dest/$name ]] && name=$name-$$
work=$dest/.tmp-$name
final=$dest/$name
mkdir "$work"
# A failed run leaves nothing that looks like a backup.
trap 'rm -rf "$work"' EXIT

# Copies one file into the backup, refusing names the manifest cannot hold.
keep() {
  local src=$1 rel=$2
  [[ $rel == *[$'\n'\\]* ]] && die "unsupported file name (newline or backslash): $rel"
  if [[ ! -s $src ]]; then
    log "warning: skipping empty file $src"
    return 0
  fi
  mkdir -p "$(dirname "$work/$rel")"
  cp -- "$src" "$work/$rel"
}

# 1. Config: ecosystem.toml and everything under config/, paths kept.
keep "$config_dir/ecosystem.toml" config/ecosystem.toml
n_config=1
if [[ -d $config_dir/config ]]; then
  while IFS= read -r -d '' f; do
    keep "$config_dir/config/$f" "config/config/$f"
    n_config=$((n_config + 1))
  done < <(find "$config_dir/config" -type f -printf '%P\0' | sort -z)
else
  log "warning: no $config_dir/config directory (keywords.json)"
fi
if [[ -n $env_file ]]; then
  keep "$env_file" "env/$(basename "$env_file")"
  chmod 600 "$work/env/$(basename "$env_file")" 2>/dev/null || true
fi
log "config: $n_config file(s)${env_file:+ + $(basename "$env_file")}"

# 2. Logs. GNU tar exits 1 when a file changed while it was read (the
#    supervisor keeps writing): the archive is still valid, so only warn.
if [[ -n $logs ]]; then
  logs_abs=$(cd "$logs" && pwd)
  rc=0
  tar -C "$(dirname "$logs_abs")" -czf "$work/logs.tar.gz" "$(basename "$logs_abs")" || rc=$?
  ((rc == 0)) || ((rc == 1)) || die "tar of $logs failed (exit $rc)"
  ((rc == 0)) || log "warning: some log files changed while they were archived"
  log "logs: $logs -> logs.tar.gz ($(du -h "$work/logs.tar.gz" | cut -f1))"
else
  log "logs: none"
fi

# 3. Redis.
redis_info=none
snapshot_bgsave() {
  local before now reply info last deadline=$((SECONDS + redis_timeout))
  before=$(rcli LASTSAVE) || return 1
  # LASTSAVE counts seconds: wait until the server's clock is past it, so
  # that the end of our save is visible as a change.
  while now=$(rcli TIME | head -n 1) && ((now <= before)); do
    ((SECONDS < deadline)) || return 1
    sleep 0.1
  done
  while :; do
    reply=$(rcli BGSAVE 2>&1) || true
    [[ $reply == *"Background saving started"* ]] && break
    if [[ $reply != *"in progress"* ]]; then
      echo "backup: BGSAVE refused: $reply" >&2
      return 1
    fi
    # Another save (or an AOF rewrite) runs: it may predate our data, so
    # wait for it and start our own.
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
  while :; do
    info=$(rcli INFO persistence | tr -d '\r')
    last=$(rcli LASTSAVE)
    if [[ $info == *rdb_bgsave_in_progress:0* ]] && ((last > before)); then
      [[ $info == *rdb_last_bgsave_status:ok* ]] || {
        echo "backup: BGSAVE failed on the server (rdb_last_bgsave_status)" >&2
        return 1
      }
      break
    fi
    if ((SECONDS >= deadline)); then
      echo "backup: BGSAVE did not finish within ${redis_timeout}s" >&2
      return 1
    fi
    sleep 0.2
  done
  local dir file
  dir=$(rcli CONFIG GET dir | sed -n 2p)
  file=$(rcli CONFIG GET dbfilename | sed -n 2p)
  if [[ ! -r $dir/$file ]]; then
    echo "backup: $dir/$file is not readable here; use --redis-method rdb for a remote Redis" >&2
    return 1
  fi
  cp -- "$dir/$file" "$work/redis/dump.rdb"
}
snapshot_rdb() {
  local out
  out=$(RCLI_TIMEOUT=$redis_timeout rcli --rdb "$work/redis/dump.rdb" 2>&1) || {
    echo "backup: redis-cli --rdb failed: $out" >&2
    return 1
  }
}
if [[ -n $redis_url ]]; then
  version=$(rcli INFO server | tr -d '\r' | sed -n 's/^redis_version://p')
  keyspace=$(rcli INFO keyspace | tr -d '\r' | grep '^db' | paste -sd' ' || true)
  mkdir -p "$work/redis"
  "snapshot_$redis_method" || die "no Redis snapshot from $(redis_display)"
  [[ -s $work/redis/dump.rdb && $(head -c 5 "$work/redis/dump.rdb") == REDIS ]] \
    || die "the Redis snapshot is not an RDB file"
  redis_info="$(redis_display) (redis $version, method $redis_method, ${keyspace:-empty})"
  log "redis: $redis_info -> redis/dump.rdb ($(du -h "$work/redis/dump.rdb" | cut -f1))"
else
  log "redis: none (no --redis-url or REDIS_URL)"
fi

# 4. What this is, then the manifest of every file.
{
  echo "created: $(date -u +%FT%TZ)"
  echo "host: $(hostname 2>/dev/null || echo unknown)"
  echo "config: $(cd "$config_dir" && pwd)"
  echo "env file: ${env_file:-none}"
  echo "logs: ${logs:-none}"
  echo "redis: $redis_info"
  echo "heartalk commit: $(git -C "$here/.." rev-parse --short HEAD 2>/dev/null || echo unknown)"
} >"$work/INFO.txt"
manifest=$(cd "$work" && find . -type f -printf '%P\0' | sort -z | xargs -0 sha256sum --)
printf '%s\n' "$manifest" >"$work/MANIFEST"

"$here/verify-backup.sh" "$work" >/dev/null || die "the new backup does not verify; nothing kept"
mv "$work" "$final"
trap - EXIT
log "written and verified: $final ($(du -sh "$final" | cut -f1))"

# 5. Retention, by the timestamp in the name (not mtime, which copies reset).
if [[ -n $keep_days ]]; then
  cutoff=$(($(date -u +%s) - keep_days * 86400))
  while IFS= read -r -d '' old; do
    base=$(basename "$old")
    [[ $base =~ ^heartalk-backup-([0-9]{8})T([0-9]{2})([0-9]{2})([0-9]{2})Z(-[0-9]+)?$ ]] || continue
    d=${BASH_REMATCH[1]}
    when=$(date -u -d "${d:0:4}-${d:4:2}-${d:6:2} ${BASH_REMATCH[2]}:${BASH_REMATCH[3]}:${BASH_REMATCH[4]}" +%s) || continue
    if ((when < cutoff)) && [[ $old != "$final" ]]; then
      rm -rf -- "$old"
      log "retention: deleted $base (older than $keep_days days)"
    fi
  done < <(find "$dest" -mindepth 1 -maxdepth 1 -type d -name 'heartalk-backup-*' -print0)
fi
