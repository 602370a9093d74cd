#!/usr/bin/env bash
# Restores a backup made by scripts/backup.sh. It verifies the whole backup
# first (scripts/verify-backup.sh) and refuses on any mismatch, then
# restores the config files into a directory and the Redis dataset either
# into a live Redis (no restart: the dump is loaded into a private,
# throwaway redis-server and every key is copied over with MIGRATE ... COPY
# REPLACE, TTLs kept) or, for a stopped Redis, as the dump.rdb it will load.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/lib/redis.sh
source "$here/lib/redis.sh"

usage() {
  cat <<EOF
usage: scripts/restore.sh BACKUP_DIR [--target DIR]
                          [--redis-url URL [--redis-flush] | --redis-dir DIR]

Verifies BACKUP_DIR, then restores what is asked (at least one of):

  --target DIR      the config: config/* of the backup goes to DIR/* (so
                    DIR/ecosystem.toml, DIR/config/keywords.json), and env/*
                    to DIR/<name> (config 0644, env 0600). A different existing file is
                    kept as <file>.pre-restore-<time>.
  --redis-url URL   live restore into redis://[user:password@]host[:port]
                    (no restart): the backup's dump.rdb is loaded by a
                    throwaway redis-server on a private Unix socket, which
                    MIGRATEs every key (COPY REPLACE, TTLs kept) into the same
                    database numbers of URL. Keys of the target that are not
                    in the backup stay, unless --redis-flush. Needs
                    redis-server here (same or newer version than the one that
                    wrote the dump, and not newer than the target), the target
                    reachable from here, and a non-TLS, non-cluster target.
  --redis-flush     FLUSHALL the target first, so that it holds exactly the
                    backup's keys afterwards
  --redis-dir DIR   offline restore for a Redis that is stopped: writes
                    DIR/dump.rdb (an existing one is kept as
                    dump.rdb.pre-restore-<time>). Redis loads it at start only
                    if AOF is off: with appendonly yes, start it once with
                    --appendonly no, then CONFIG SET appendonly yes (which
                    writes a new AOF from the loaded data) and restart as usual.
  -h, --help        this text

Exit codes:
  0   restored (and the Redis key counts checked)
  1   the restore failed part-way (the message says what was restored)
  2   the backup did not verify: nothing was restored
  64  bad usage
EOF
}

die_usage() {
  echo "restore: $1 (see --help)" >&2
  exit 64
}
die() {
  echo "restore: $*" >&2
  exit 1
}
log() { echo "restore: $*"; }

backup=
target=
redis_url=
redis_dir=
flush=0
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --redis-flush) flush=1 && shift ;;
    --target | --redis-url | --redis-dir)
      (($# >= 2)) || die_usage "$1 needs a value"
      case $1 in
        --target) target=$2 ;;
        --redis-url) redis_url=$2 ;;
        --redis-dir) redis_dir=$2 ;;
      esac
      shift 2
      ;;
    -*) die_usage "unknown option: $1" ;;
    *)
      [[ -z $backup ]] || die_usage "one BACKUP_DIR only"
      backup=${1%/}
      shift
      ;;
  esac
done
[[ -n $backup ]] || die_usage "BACKUP_DIR expected"
[[ -n $target || -n $redis_url || -n $redis_dir ]] \
  || die_usage "nothing to restore: give --target, --redis-url or --redis-dir"
[[ -n $redis_url && -n $redis_dir ]] && die_usage "--redis-url and --redis-dir together"
((flush)) && [[ -z $redis_url ]] && die_usage "--redis-flush needs --redis-url"
if [[ -n $redis_url ]]; then
  redis_parse_url "$redis_url" || die_usage "bad --redis-url"
  ((REDIS_TLS == 0)) || die_usage "a TLS target cannot be restored live (MIGRATE has no TLS here): use --redis-dir"
fi
[[ -z $redis_dir || -d $redis_dir ]] || die_usage "--redis-dir $redis_dir is not a directory"

# 1. Nothing is touched unless every file of the backup checks out.
if ! "$here/verify-backup.sh" "$backup"; then
  echo "restore: $backup does not verify: nothing restored" >&2
  exit 2
fi
if [[ -n $redis_url || -n $redis_dir ]] && [[ ! -f $backup/redis/dump.rdb ]]; then
  echo "restore: $backup has no redis/dump.rdb: nothing restored" >&2
  exit 2
fi
if [[ -n $target && ! -d $backup/config ]]; then
  echo "restore: $backup has no config/: nothing restored" >&2
  exit 2
fi
# Before anything is written: the live target answers, redis-server is here.
if [[ -n $redis_url ]]; then
  command -v redis-server >/dev/null || die "redis-server is needed here for a live restore: nothing restored"
  pong=$(rcli PING 2>&1) || true
  [[ $pong == PONG ]] || die "target Redis $(redis_display) does not answer PING: ${pong//$'\n'/ }: nothing restored"
fi
stamp=$(date -u +%Y%m%dT%H%M%SZ)

# Installs SRC as DEST atomically; a different DEST is kept aside first.
install_file() {
  local src=$1 dest=$2 mode=${3:-}
  mkdir -p "$(dirname "$dest")"
  if [[ -e $dest ]]; then
    cmp -s -- "$src" "$dest" && return 0
    cp -p -- "$dest" "$dest.pre-restore-$stamp"
  fi
  cp -- "$src" "$dest.restore-tmp"
  [[ -n $mode ]] && chmod "$mode" "$dest.restore-tmp"
  mv -f -- "$dest.restore-tmp" "$dest"
}

# 2. Config.
if [[ -n $target ]]; then
  mkdir -p "$target"
  n=0
  while IFS= read -r -d '' rel; do
    install_file "$backup/config/$rel" "$target/$rel" 644
    n=$((n + 1))
  done < <(find "$backup/config" -type f -printf '%P\0' | sort -z)
  if [[ -d $backup/env ]]; then
    while IFS= read -r -d '' rel; do
      install_file "$backup/env/$rel" "$target/$rel" 600
      n=$((n + 1))
    done < <(find "$backup/env" -type f -printf '%P\0' | sort -z)
  fi
  log "config: $n file(s) restored into $target"
fi

# 3a. Redis, offline.
if [[ -n $redis_dir ]]; then
  install_file "$backup/redis/dump.rdb" "$redis_dir/dump.rdb" 600
  log "redis: $redis_dir/dump.rdb written; start Redis with appendonly no to load it (see --help)"
fi

# 3b. Redis, live: a throwaway server loads the dump and MIGRATEs every key.
# The Lua script runs on that private server: SCAN and MIGRATE see binary
# key names as they are, and the target's password only travels on stdin.
read -r -d '' copy_keys <<'LUA' || true
local host, port, db, user, pass = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local cursor, copied = "0", 0
repeat
  local page = redis.call("SCAN", cursor, "COUNT", 200)
  cursor = page[1]
  if #page[2] > 0 then
    local args = {"MIGRATE", host, port, "", db, 60000, "COPY", "REPLACE"}
    if pass ~= "" then
      if user ~= "" then
        table.insert(args, "AUTH2"); table.insert(args, user)
      else
        table.insert(args, "AUTH")
      end
      table.insert(args, pass)
    end
    table.insert(args, "KEYS")
    for _, k in ipairs(page[2]) do table.insert(args, k) end
    redis.call(unpack(args))
    copied = copied + #page[2]
  end
until cursor == "0"
return copied
LUA

# Quotes a string for redis-cli's line parser (binary-safe: \xHH escapes).
resp_quote() {
  local LC_ALL=C s=$1 out='' c i
  for ((i = 0; i < ${#s}; i++)); do
    c=${s:i:1}
    case $c in
      [[:alnum:]._:@/+=-]) out+=$c ;;
      *) out+=$(printf '\\x%02x' "'$c") ;;
    esac
  done
  printf '"%s"' "$out"
}

if [[ -n $redis_url ]]; then
  scratch=$(mktemp -d)
  cp -- "$backup/redis/dump.rdb" "$scratch/dump.rdb"
  redis-server --port 0 --unixsocket "$scratch/redis.sock" --unixsocketperm 700 \
    --dir "$scratch" --dbfilename dump.rdb --save '' --appendonly no \
    --logfile "$scratch/redis.log" --daemonize no &
  scratch_pid=$!
  trap 'kill "$scratch_pid" 2>/dev/null; wait "$scratch_pid" 2>/dev/null; rm -rf "$scratch"' EXIT
  local_cli() { timeout 600 redis-cli -s "$scratch/redis.sock" "$@"; }
  deadline=$((SECONDS + 300))
  until [[ $(local_cli PING 2>/dev/null) == PONG ]]; do
    kill -0 "$scratch_pid" 2>/dev/null || die "the scratch redis-server could not load the dump: $(tail -n 3 "$scratch/redis.log")"
    ((SECONDS < deadline)) || die "the scratch redis-server did not load the dump within 300 s"
    sleep 0.1
  done
  mapfile -t dbs < <(local_cli INFO keyspace | tr -d '\r' | sed -n 's/^db\([0-9]*\):keys=\([0-9]*\).*/\1 \2/p')
  if ((flush)); then
    [[ $(rcli FLUSHALL) == OK ]] || die "FLUSHALL on the target failed (nothing restored into it)"
    log "redis: target $(redis_display) flushed"
  fi
  sha=$(printf '%s' "$copy_keys" | local_cli -x SCRIPT LOAD)
  [[ $sha =~ ^[0-9a-f]{40}$ ]] || die "cannot load the copy script into the scratch server: $sha"
  total=0
  for entry in "${dbs[@]}"; do
    read -r db count <<<"$entry"
    reply=$(printf 'EVALSHA %s 0 %s %s %s %s %s\n' "$sha" "$(resp_quote "$REDIS_HOST")" \
      "$REDIS_PORT" "$db" "$(resp_quote "$REDIS_USER")" "$(resp_quote "$REDIS_PASSWORD")" \
      | local_cli -n "$db")
    [[ $reply =~ ^[0-9]+$ ]] || die "copying db$db failed after $total key(s): ${reply//"$REDIS_PASSWORD"/***}"
    have=$(rcli -n "$db" DBSIZE)
    if ((flush ? have != count : have < count)); then
      die "db$db: the target holds $have key(s), the backup $count"
    fi
    total=$((total + count))
    log "redis: db$db: $count key(s) restored"
  done
  log "redis: $total key(s) restored into $(redis_display)"
fi
log "done from $backup"
