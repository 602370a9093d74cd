#!/usr/bin/env bash
# Creates the secret files the production assets read through *_FILE
# variables (issue #17): compose/secrets/ for docker-compose.prod.yml and
# docker-stack.yml, a directory for `kubectl create secret --from-file`, or
# the credential sources of deploy/heartalk.service. Never overwrites an
# existing file, so it is safe to run again: it creates what is missing and
# reports what the service would refuse. docs/deployment.md "Secrets".
set -euo pipefail

default_owner=65532:65532 # the image's user (Dockerfile USER)

usage() {
  cat <<EOF
usage: scripts/make-secrets.sh [--owner UID:GID] [--byteplus-api-key-from FILE|-] DIR

Creates DIR (mode 0700) if needed and, in it, every missing file of:
  jwt_secret, heartalk_api_key, redis_password
                    64 random hex characters each (openssl rand -hex 32)
  byteplus_api_key  the provider's key, copied from FILE (or stdin: -)
                    when --byteplus-api-key-from is given
An existing file is never overwritten (a file is written under a temporary
name and linked into place, which fails if the name exists).

New files are written with umask 077. As root they are then given to
UID:GID (default $default_owner, the image's user; e.g. --owner 0:0 for
systemd credential sources) with mode 0440; otherwise they stay the
caller's with mode 0400 (give them to the container's user yourself:
sudo chown $default_owner FILE..., or with rootless podman
podman unshare chown $default_owner FILE...).

Then every file is checked as the service checks it: a regular file (after
symlinks), non-empty (line ends alone count as empty), not world-readable (mode & 0004 == 0), and as root
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

root=0
[[ $(id -u) == 0 ]] && root=1
if [[ -n $owner ]]; then
  [[ $owner =~ ^[0-9]+:[0-9]+$ ]] || die_usage "--owner takes numeric UID:GID, not '$owner'"
  ((root)) || die_usage "--owner needs root (the files stay yours otherwise)"
elif ((root)); then
  owner=$default_owner
fi
mode=0400
[[ -n $owner ]] && mode=0440

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

# Whether FILE holds nothing but line ends: the service drops trailing line
# ends, so such a file is an empty secret to it (and refused).
blank() {
  [[ -z $(tr -d '\r\n' <"$1" | head -c 1) ]]
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
    problem "$path: nothing to write (empty, or only line ends)"
  else
    chmod "$mode" "$tmp"
    if [[ -n $owner ]]; then
      chown "$owner" "$tmp"
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

for name in jwt_secret heartalk_api_key redis_password; do
  if [[ -e $dir/$name || -L $dir/$name ]]; then
    echo "make-secrets: $dir/$name exists, kept"
  else
    install_new "$name" < <(openssl rand -hex 32)
  fi
done
if [[ -n $key_from ]]; then
  if [[ -e $dir/byteplus_api_key || -L $dir/byteplus_api_key ]]; then
    echo "make-secrets: $dir/byteplus_api_key exists, kept (--byteplus-api-key-from ignored)"
  elif [[ $key_from == - ]]; then
    install_new byteplus_api_key
  elif [[ -f $key_from && -r $key_from ]]; then
    install_new byteplus_api_key <"$key_from"
  else
    problem "--byteplus-api-key-from $key_from: not a readable file"
  fi
fi

# The service's own rules (and, as root, whether the owner can read it).
for name in jwt_secret heartalk_api_key redis_password byteplus_api_key; do
  path=$dir/$name
  if [[ ! -e $path ]]; then
    if [[ $name == byteplus_api_key ]]; then
      problem "$path is missing: add the provider's key with --byteplus-api-key-from FILE|-"
    else
      problem "$path is missing"
    fi
    continue
  fi
  if [[ ! -f $path ]]; then
    problem "$path is not a regular file"
    continue
  fi
  if blank "$path"; then
    problem "$path is empty (or only line ends)"
  fi
  read -r perm uid gid < <(stat -L -c '%a %u %g' -- "$path")
  if (((8#$perm & 8#004) != 0)); then
    problem "$path is world-readable (mode $perm): the service refuses it; chmod 0440 $path"
  fi
  if [[ -n $owner ]]; then
    want_uid=${owner%%:*} want_gid=${owner##*:}
    if ! { [[ $uid == "$want_uid" ]] && (((8#$perm & 8#400) != 0)); } \
      && ! { [[ $gid == "$want_gid" ]] && (((8#$perm & 8#040) != 0)); }; then
      problem "$path (owner $uid:$gid, mode $perm) is not readable by $owner: chown $owner $path"
    fi
  fi
done

if ((problems)); then
  exit 1
fi
if ((!root)); then
  echo "make-secrets: the files are yours (mode 0400): give them to the container's user (sudo chown $default_owner ..., or podman unshare chown $default_owner ...)"
fi
echo "make-secrets: $dir is complete"
