#!/usr/bin/env bash
# Checks that a HearTalk service is up: GET /api/v1/health (API.md §5.1),
# retried, each try bounded by a timeout, and the JSON `data.status` must be
# `healthy` or `degraded` (with HTTP 200). Used by scripts/deploy.sh after a
# roll-out; usable by hand and from cron. Needs curl and python3.
set -euo pipefail
# shellcheck source=scripts/lib/probe.sh
source "$(dirname "$0")/lib/probe.sh"

usage() {
  cat <<EOF
usage: scripts/health-check.sh [--url URL] [--retries N] [--interval SECS] [--timeout SECS] [--insecure]

Probes the HearTalk health endpoint until it is healthy or the tries run out.

  --url URL        endpoint to GET (default: \$HEALTH_URL, else
                   http://127.0.0.1:\${PORT:-8001}/api/v1/health)
  --retries N      tries in all, >= 1 (default 5)
  --interval SECS  pause between tries, may be fractional (default 2)
  --timeout SECS   limit for each try, connection included, > 0 (default 5)
  --insecure       https: do not verify the certificate (checking a local TLS
                   proxy whose certificate names the public host)
  -h, --help       this text

Healthy means HTTP 200 and a JSON body whose data.status is "healthy" or
"degraded" (degraded: the service answers, a component such as Redis or the
provider is impaired). Every failed try is reported on stderr.

Exit codes:
  0   healthy or degraded
  1   the service answered, but not healthy (HTTP 503 "unhealthy", another
      status, a data.status other than healthy/degraded, or a body that is
      not the health JSON) on the last try
  2   unreachable on the last try (connection refused, timeout, DNS)
  64  bad usage
EOF
}

die_usage() {
  echo "health-check: $1 (see --help)" >&2
  exit 64
}

url=${HEALTH_URL:-http://127.0.0.1:${PORT:-8001}/api/v1/health}
retries=5
interval=2
timeout=5
tls=()
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --insecure) tls=(--insecure) && shift ;;
    --url | --retries | --interval | --timeout)
      (($# >= 2)) || die_usage "$1 needs a value"
      case $1 in
        --url) url=$2 ;;
        --retries) retries=$2 ;;
        --interval) interval=$2 ;;
        --timeout) timeout=$2 ;;
      esac
      shift 2
      ;;
    *) die_usage "unknown argument: $1" ;;
  esac
done
probe_check_options "$retries" "$interval" "$timeout"
[[ $url =~ ^https?://[^/]+ ]] || die_usage "--url must be an http:// or https:// URL: $url"

body=$(mktemp)
err=$(mktemp)
trap 'rm -f "$body" "$err"' EXIT

# One try: prints the verdict word (`ok STATUS`, `bad REASON`, `down REASON`).
probe() {
  local code rc=0
  : >"$body"
  code=$(curl --silent --show-error --max-time "$timeout" --output "$body" \
    --write-out '%{http_code}' -H 'Accept: application/json' "${tls[@]}" -- "$url" 2>"$err") || rc=$?
  if ((rc != 0)); then
    echo "down $(head -n 1 "$err" || echo "curl exit $rc")"
    return
  fi
  local status
  status=$(python3 -c '
import json, sys
try:
    doc = json.load(open(sys.argv[1], encoding="utf-8"))
    status = doc["data"]["status"]
    print(status if isinstance(status, str) and status else "<missing>")
except Exception:
    print("<not the health JSON>")
' "$body")
  if [[ $code == 200 && ($status == healthy || $status == degraded) ]]; then
    echo "ok $status"
  else
    echo "bad HTTP $code, data.status $status"
  fi
}

verdict=
for ((try = 1; try <= retries; try++)); do
  verdict=$(probe)
  case $verdict in
    ok\ *)
      echo "health-check: $url is ${verdict#ok } (try $try of $retries)"
      exit 0
      ;;
  esac
  echo "health-check: try $try of $retries: $url: ${verdict#* }" >&2
  ((try < retries)) && sleep "$interval"
done
case $verdict in
  bad\ *) exit 1 ;;
  *) exit 2 ;;
esac
