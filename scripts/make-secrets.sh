#!/usr/bin/env bash
# Creates the secret files the production assets read through *_FILE
# variables (issue #17): compose/secrets/ for docker-compose.prod.yml and
# docker-stack.yml, a directory for `kubectl create secret --from-file`, or
# the credential sources of deploy/heartalk.service. Never overwrites an
# existing file, so it is safe to run again: it creates what is missing and
# reports what the service would refuse. With --monitoring (or
# --alert-webhook-url-from) also the files of docker-compose.prod.yml's
# Grafana and Alertmanager. docs/deployment.md "Secrets".
set -euo pipefail

default_owner=65532:65532      # the image's user (Dockerfile USER)
grafana_owner=472:0            # grafana/grafana's user
alertmanager_owner=65534:65534 # prom/alertmanager's user (nobody)

usage() {
  cat <<EOF
usage: scripts/make-secrets.sh [--owner UID:GID] [--byteplus-api-key-from FILE|-]
                               [--monitoring] [--alert-webhook-url-from FILE|-] DIR

Creates DIR (mode 0700) if needed and, in it, every missing file of:
  jwt_secret, heartalk_api_key, redis_password
                    64 random hex characters each (openssl rand -hex 32)
  byteplus_api_key  the provider's key, copied from FILE (or stdin: -)
                    when --byteplus-api-key-from is given
and, with --monitoring or --alert-webhook-url-from (the production compose
file's Grafana and Alertmanager):
  grafana_admin_password
                    64 random hex characters; Grafana's admin password
  alert_webhook_url the URL Alertmanager sends every notification to (a
                    chat webhook carries a token), copied from FILE (or -)
An existing file is never overwritten (a file is written under a temporary
name and linked into place, which fails if the name exists).

New files are written with umask 077. As root they are then given to
UID:GID with mode 0440: by default each to the user of the container that
reads it ($default_owner, the image's user; grafana_admin_password
$grafana_owner, Grafana's; alert_webhook_url $alertmanager_owner, Alertmanager's), all to
--owner UID:GID when given (e.g. --owner 0:0 for systemd credential
sources). Otherwise they stay the caller's with mode 0400 (give them to
the containers' users yourself: sudo chown $default_owner FILE..., or with
rootless podman podman unshare chown $default_owner FILE...).

Then every file is checked as the service checks it: a regular file (after
symlinks), non-empty (whitespace and line ends alone count as empty), not world-readable (mode & 0004 == 0), and as root
readable by UID or GID. Every problem is printed on stderr.

Exit codes:
  0   every file is in place and acceptable
  1   a file is missing, empty, world-readable, unreadable for UID:GID, or
      could not be written
  64  bad usage
EOF
}

die_usage() {
  echo "make-secrets: $* (see --help)" >&2
  exit 64
}

owner=
key_from=
url_from=
monitoring=0
dir=
while (($#)); do
  case $1 in
    -h | --help)
      usage
      exit 0
      ;;
    --owner)
      (($# >= 2)) || die_usage "--owner needs UID:GID"
      owner=$2
      shift 2
      ;;
    --byteplus-api-key-from)
      (($# >= 2)) || die_usage "--byteplus-api-key-from needs FILE or -"
      key_from=$2
      shift 2
      ;;
    --monitoring)
      monitoring=1
      shift
      ;;
    --alert-webhook-url-from)
      (($# >= 2)) || die_usage "--alert-webhook-url-from needs FILE or -"
      url_from=$2
      monitoring=1
      shift 2
      ;;
    --)
      shift
      break
      ;;
    -*) die_usage "unknown option $1" ;;
    *)
      [[ -z $dir ]] || die_usage "one DIR expected"
      dir=$1
      shift
      ;;
  esac
done
if (($#)); then
  [[ -z $dir && $# -eq 1 ]] || die_usage "one DIR expected"
  dir=$1
fi
[[ -n $dir ]] || die_usage "DIR expected"
dir=${dir%/}
[[ -n $dir ]] || dir=/

[[ $key_from == - && $url_from == - ]] && die_usage "only one file can come from stdin (-)"

root=0
[[ $(id -u) == 0 ]] && root=1
if [[ -n $owner ]]; then
  [[ $owner =~ ^[0-9]+:[0-9]+$ ]] || die_usage "--owner takes numeric UID:GID, not '$owner'"
  ((root)) || die_usage "--owner needs root (the files stay yours otherwise)"
fi
mode=0400
((root)) && mode=0440

# The UID:GID that must read secret NAME (empty when not root: the files
# stay the caller's).
owner_of() {
  if ((!root)); then
    return
  elif [[ -n $owner ]]; then
    echo "$owner"
  else
    case $1 in
      grafana_admin_password) echo "$grafana_owner" ;;
      alert_webhook_url) echo "$alertmanager_owner" ;;
      *) echo "$default_owner" ;;
    esac
  fi
}

umask 077
command -v openssl >/dev/null || {
  echo "make-secrets: openssl not found" >&2
  exit 1
}
mkdir -p -- "$dir"
problems=0
problem() {
  echo "make-secrets: $*" >&2
  problems=$((problems + 1))
}

# Whether FILE holds nothing but whitespace and line ends: the service
# refuses such a secret as empty.
blank() {
  [[ -z $(tr -d '[:space:]' <"$1" | head -c 1) ]]
}

# Why Alertmanager's entrypoint would refuse the webhook URL in FILE (its
# rules: trailing line ends dropped, http(s), nothing that would break the
# quoted YAML it is written into); nothing when it would take it.
url_problem() {
  local url
  url=$(<"$1")
  while [[ $url == *$'\r' || $url == *$'\n' ]]; do
    url=${url%?}
  done
  if [[ ! $url =~ ^https?://. ]]; then
    echo "does not hold an http:// or https:// URL"
  elif [[ $url == *[\'\\\ ]* || $url == *$'\n'* ]]; then
    echo "holds a quote, backslash, space or line break in the URL"
  fi
}

# Writes stdin to DIR/NAME unless NAME exists: a temporary file in DIR,
# linked into place (link(2) fails on an existing name, so a concurrent run
# or an existing file is never replaced).
tmp=
trap 'if [[ -n $tmp ]]; then rm -f -- "$tmp"; fi' EXIT
install_new() {
  local name=$1 path=$dir/$1
  tmp=$(mktemp "$dir/.$name.XXXXXX")
  if ! cat >"$tmp" || blank "$tmp"; then
    problem "$path: nothing to write (empty, or only whitespace or line ends)"
  else
    chmod "$mode" "$tmp"
    if ((root)); then
      chown "$(owner_of "$name")" "$tmp"
    fi
    if ln -- "$tmp" "$path" 2>/dev/null; then
      echo "make-secrets: created $path"
    elif [[ -e $path ]]; then
      echo "make-secrets: $path exists, kept"
    else
      problem "$path: could not link $tmp into place"
    fi
  fi
  rm -f -- "$tmp"
  tmp=
}

random=(jwt_secret heartalk_api_key redis_password)
((monitoring)) && random+=(grafana_admin_password)
for name in "${random[@]}"; do
  if [[ -e $dir/$name || -L $dir/$name ]]; then
    echo "make-secrets: $dir/$name exists, kept"
  else
    install_new "$name" < <(openssl rand -hex 32)
  fi
done
# copy NAME OPTION FROM: NAME from FROM (a file, or - for stdin).
copy() {
  local name=$1 option=$2 from=$3
  if [[ -e $dir/$name || -L $dir/$name ]]; then
    echo "make-secrets: $dir/$name exists, kept ($option ignored)"
  elif [[ $from == - ]]; then
    install_new "$name"
  elif [[ -f $from && -r $from ]]; then
    install_new "$name" <"$from"
  else
    problem "$option $from: not a readable file"
  fi
}
[[ -z $key_from ]] || copy byteplus_api_key --byteplus-api-key-from "$key_from"
[[ -z $url_from ]] || copy alert_webhook_url --alert-webhook-url-from "$url_from"

# The service's own rules (and, as root, whether the owner can read it).
# The monitoring files are checked when asked for, or when present.
checked=(jwt_secret heartalk_api_key redis_password byteplus_api_key)
for name in grafana_admin_password alert_webhook_url; do
  if ((monitoring)) || [[ -e $dir/$name ]]; then
    checked+=("$name")
  fi
done
for name in "${checked[@]}"; do
  path=$dir/$name
  if [[ ! -e $path ]]; then
    case $name in
      byteplus_api_key) problem "$path is missing: add the provider's key with --byteplus-api-key-from FILE|-" ;;
      alert_webhook_url) problem "$path is missing: add Alertmanager's webhook URL with --alert-webhook-url-from FILE|-" ;;
      *) problem "$path is missing" ;;
    esac
    continue
  fi
  if [[ ! -f $path ]]; then
    problem "$path is not a regular file"
    continue
  fi
  if [[ ! -s $path ]]; then
    problem "$path is empty"
  elif [[ ! -r $path ]]; then
    # Given away already (podman unshare chown ...): the size is all
    # there is to check.
    echo "make-secrets: $path is not readable by you: its content was not checked"
  elif blank "$path"; then
    problem "$path is empty (only whitespace or line ends)"
  elif [[ $name == alert_webhook_url ]] && why=$(url_problem "$path") && [[ -n $why ]]; then
    problem "$path $why (Alertmanager's entrypoint refuses it)"
  fi
  read -r perm uid gid < <(stat -L -c '%a %u %g' -- "$path")
  if (((8#$perm & 8#004) != 0)); then
    problem "$path is world-readable (mode $perm): the service refuses it; chmod 0440 $path"
  fi
  if ((root)); then
    want=$(owner_of "$name")
    want_uid=${want%%:*} want_gid=${want##*:}
    if ! { [[ $uid == "$want_uid" ]] && (((8#$perm & 8#400) != 0)); } \
      && ! { [[ $gid == "$want_gid" ]] && (((8#$perm & 8#040) != 0)); }; then
      problem "$path (owner $uid:$gid, mode $perm) is not readable by $want: chown $want $path"
    fi
  fi
done

if ((problems)); then
  exit 1
fi
if ((!root)); then
  echo "make-secrets: the files are yours (mode 0400): give them to the containers' users (sudo chown $default_owner ..., or podman unshare chown $default_owner ...; grafana_admin_password $grafana_owner, alert_webhook_url $alertmanager_owner)"
fi
echo "make-secrets: $dir is complete"
