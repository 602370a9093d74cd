#!/bin/sh
# Entrypoint of the Alertmanager container: renders monitoring/alertmanager.yml
# with the webhook URL taken from ALERT_WEBHOOK_URL_FILE or ALERT_WEBHOOK_URL
# (Alertmanager does not expand environment variables in its config, and
# webhook `url_file` needs Alertmanager >= 0.26), then execs Alertmanager on
# the rendered file. POSIX sh: it runs in the busybox-based prom/alertmanager
# image.
#
#   ALERT_WEBHOOK_URL_FILE a file holding the http(s) URL that receives every
#                         notification: regular, not world-readable (the
#                         production compose file mounts it as a secret)
#   ALERT_WEBHOOK_URL     the URL itself, when no file is given (one of the
#                         two is required; both is an error)
#   ALERTMANAGER_TEMPLATE the template (default /etc/alertmanager/alertmanager.yml)
#   ALERTMANAGER_RENDERED where to write the rendered config, mode 600
#                         (default /tmp/alertmanager.yml; /tmp should be a tmpfs)
#   ALERTMANAGER_BIN      the Alertmanager binary (default /bin/alertmanager)
#
# Arguments are passed to Alertmanager after --config.file. With
# --render-only the config is rendered and nothing is started (used by
# scripts/checks/monitoring.sh). Exit 64 when the URL is missing, unsafe to
# embed, or its file is refused; 65 when the template has no placeholder.
set -eu

placeholder='https://alert-webhook.invalid/ALERT_WEBHOOK_URL'
template=${ALERTMANAGER_TEMPLATE:-/etc/alertmanager/alertmanager.yml}
rendered=${ALERTMANAGER_RENDERED:-/tmp/alertmanager.yml}
bin=${ALERTMANAGER_BIN:-/bin/alertmanager}

render_only=false
case ${1:-} in
  -h | --help)
    sed -n '2,22s/^# \{0,1\}//p' "$0"
    exit 0
    ;;
  --render-only)
    render_only=true
    shift
    ;;
esac

die() {
  echo "alertmanager-entrypoint: $2" >&2
  exit "$1"
}

# The URL is a secret (chat webhooks carry a token): from a file named by
# ALERT_WEBHOOK_URL_FILE (a compose or Kubernetes secret), or from
# ALERT_WEBHOOK_URL. The file follows the HearTalk service's rules for its
# own secret files: one of the two variables, a regular file (symlinks
# followed), not world-readable, trailing line ends dropped.
url=${ALERT_WEBHOOK_URL:-}
file=${ALERT_WEBHOOK_URL_FILE:-}
if [ -n "$file" ]; then
  [ -z "$url" ] || die 64 "ALERT_WEBHOOK_URL and ALERT_WEBHOOK_URL_FILE are both set: keep one"
  [ -f "$file" ] || die 64 "ALERT_WEBHOOK_URL_FILE=$file: not a regular file"
  [ -r "$file" ] || die 64 "ALERT_WEBHOOK_URL_FILE=$file: not readable by uid $(id -u)"
  mode=$(stat -L -c %a "$file") || die 64 "ALERT_WEBHOOK_URL_FILE=$file: cannot stat"
  case $mode in
    *[4567]) die 64 "ALERT_WEBHOOK_URL_FILE=$file: readable by every user (mode $mode): chmod o-r" ;;
  esac
  # Trailing line ends, any mix of CR and LF, are dropped ($(...) drops
  # the last LFs itself).
  url=$(cat "$file") || die 64 "ALERT_WEBHOOK_URL_FILE=$file: cannot read"
  cr=$(printf '\r')
  lf='
'
  while :; do
    case $url in
      *"$cr" | *"$lf") url=${url%?} ;;
      *) break ;;
    esac
  done
  [ -n "$url" ] || die 64 "ALERT_WEBHOOK_URL_FILE=$file: empty"
  source="the file of ALERT_WEBHOOK_URL_FILE"
else
  source=ALERT_WEBHOOK_URL
fi
case $url in
  http://?* | https://?*) ;;
  *) die 64 "$source must hold an http:// or https:// URL (set ALERT_WEBHOOK_URL_FILE or ALERT_WEBHOOK_URL)" ;;
esac
# The URL goes into a single-quoted YAML scalar: refuse what would break it.
nl='
'
case $url in
  *"'"* | *\\* | *' '* | *"$nl"*)
    die 64 "$source: the URL must not contain quotes, backslashes, spaces or newlines"
    ;;
esac
grep -qF "$placeholder" "$template" \
  || die 65 "$template has no $placeholder placeholder"

umask 077
tmp="$rendered.tmp.$$"
# Plain string replacement (no regex, no sed escaping of & or |).
awk -v p="$placeholder" -v u="$url" '{
  out = ""
  while ((i = index($0, p)) > 0) {
    out = out substr($0, 1, i - 1) u
    $0 = substr($0, i + length(p))
  }
  print out $0
}' "$template" >"$tmp"
mv "$tmp" "$rendered"

if [ "$render_only" = true ]; then
  echo "alertmanager-entrypoint: rendered $rendered"
  exit 0
fi
exec "$bin" --config.file="$rendered" "$@"
