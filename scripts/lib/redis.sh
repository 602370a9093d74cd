# shellcheck shell=bash
# shellcheck disable=SC2034 # REDIS_* are read by the scripts that source this
# Redis connection helpers shared by scripts/backup.sh and scripts/restore.sh
# (sourced, not run). `redis_parse_url URL` sets the REDIS_* variables below
# from redis://[user[:password]@]host[:port][/db] (rediss:// adds --tls;
# user and password may be percent-encoded); `rcli ARGS...` runs redis-cli
# against that server. The password goes through REDISCLI_AUTH, never argv,
# so it does not show in `ps`.

REDIS_HOST=
REDIS_PORT=
REDIS_USER=
REDIS_PASSWORD=
REDIS_DB=0
REDIS_TLS=0

# Decodes %XX escapes (and nothing else).
redis_urldecode() {
  local s=${1//\\/\\\\}
  printf '%b' "${s//%/\\x}"
}

# Parses a Redis URL into REDIS_*; returns 1 (with a message) if malformed.
redis_parse_url() {
  local re='^(rediss?)://(([^:@/]*)(:([^@/]*))?@)?(\[[0-9A-Fa-f:.]+\]|[^]:/@[]+)(:([0-9]{1,5}))?(/([0-9]{1,2})?)?$'
  if [[ ! $1 =~ $re ]]; then
    local shown=$1
    [[ $shown == *@* ]] && shown="${shown%%://*}://***@${shown##*@}"
    echo "bad Redis URL (expected redis://[user:password@]host[:port][/db]): $shown" >&2
    return 1
  fi
  REDIS_TLS=0
  [[ ${BASH_REMATCH[1]} == rediss ]] && REDIS_TLS=1
  REDIS_USER=$(redis_urldecode "${BASH_REMATCH[3]}")
  REDIS_PASSWORD=$(redis_urldecode "${BASH_REMATCH[5]}")
  REDIS_HOST=${BASH_REMATCH[6]}
  REDIS_HOST=${REDIS_HOST#[}
  REDIS_HOST=${REDIS_HOST%]}
  REDIS_PORT=${BASH_REMATCH[8]:-6379}
  REDIS_DB=${BASH_REMATCH[10]:-0}
  # redis://secret@host: a lone user part is the password (redis-cli -u does the same).
  if [[ -n $REDIS_USER && -z ${BASH_REMATCH[4]} ]]; then
    REDIS_PASSWORD=$REDIS_USER
    REDIS_USER=
  fi
  if ((REDIS_PORT < 1 || REDIS_PORT > 65535)); then
    echo "bad Redis URL: port $REDIS_PORT" >&2
    return 1
  fi
}

# The server as it may be printed: no credentials.
redis_display() { echo "$REDIS_HOST:$REDIS_PORT"; }

# redis-cli against the parsed server, killed after $RCLI_TIMEOUT seconds
# (default 60) so that a hung server cannot hang the script.
rcli() {
  local args=(-h "$REDIS_HOST" -p "$REDIS_PORT")
  [[ -n $REDIS_USER ]] && args+=(--user "$REDIS_USER")
  ((REDIS_TLS)) && args+=(--tls)
  if [[ -n $REDIS_PASSWORD ]]; then
    REDISCLI_AUTH=$REDIS_PASSWORD timeout "${RCLI_TIMEOUT:-60}" \
      redis-cli --no-auth-warning "${args[@]}" "$@"
  else
    timeout "${RCLI_TIMEOUT:-60}" redis-cli "${args[@]}" "$@"
  fi
}
