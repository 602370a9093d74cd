#!/usr/bin/env bash
# Verifies a backup made by scripts/backup.sh: every file its MANIFEST lists
# must be a regular, non-empty file (not a directory, not a symlink) whose
# sha256 matches; no file may be unlisted; archives must decompress and the
# Redis snapshot must be an RDB file. backup.sh runs it before it publishes
# a backup, restore.sh before it restores anything; run it by hand any time.
set -euo pipefail

usage() {
  cat <<EOF
usage: scripts/verify-backup.sh BACKUP_DIR

Checks BACKUP_DIR/MANIFEST (sha256sum format, paths relative to BACKUP_DIR):
  - every line is "<64 hex>  <relative path>", no path twice, none absolute
    or with "..";
  - every listed path is a regular non-empty file (directories, symlinks,
    missing and empty files fail) and its sha256 matches (sha256sum -c);
  - every file under BACKUP_DIR other than MANIFEST is listed;
  - *.tar.gz files pass gzip -t and list with tar; *.rdb files start with
    the RDB magic "REDIS".
Every problem is printed on stderr.

Exit codes:
  0   the backup is complete and intact
  1   a check failed
  64  bad usage
EOF
}

case ${1:-} in
  -h | --help)
    usage
    exit 0
    ;;
  '' | -*)
    echo "verify-backup: BACKUP_DIR expected (see --help)" >&2
    exit 64
    ;;
esac
(($# == 1)) || {
  echo "verify-backup: one BACKUP_DIR expected (see --help)" >&2
  exit 64
}
dir=${1%/}
problems=0
problem() {
  echo "verify-backup: $dir: $*" >&2
  problems=$((problems + 1))
}

if [[ ! -d $dir ]]; then
  echo "verify-backup: $dir is not a directory" >&2
  exit 1
fi
manifest=$dir/MANIFEST
if [[ ! -f $manifest || -L $manifest || ! -s $manifest ]]; then
  echo "verify-backup: $dir: MANIFEST is missing or empty" >&2
  exit 1
fi

declare -A listed=()
line_re='^[0-9a-f]{64} [ *](.+)$'
line_no=0
while IFS= read -r line || [[ -n $line ]]; do
  line_no=$((line_no + 1))
  if [[ ! $line =~ $line_re ]]; then
    problem "MANIFEST line $line_no is not '<sha256>  <path>': $line"
    continue
  fi
  path=${BASH_REMATCH[1]}
  if [[ $path == /* || /$path/ == */../* || /$path/ == */./* ]]; then
    problem "MANIFEST line $line_no: path must be relative and plain: $path"
    continue
  fi
  if [[ -n ${listed[$path]+x} ]]; then
    problem "MANIFEST lists $path twice"
    continue
  fi
  listed[$path]=1
  file=$dir/$path
  if [[ -L $file ]]; then
    problem "$path is a symlink"
  elif [[ -d $file ]]; then
    problem "$path is a directory, not a file"
  elif [[ ! -e $file ]]; then
    problem "$path is missing"
  elif [[ ! -f $file ]]; then
    problem "$path is not a regular file"
  elif [[ ! -s $file ]]; then
    problem "$path is empty"
  else
    case $path in
      *.tar.gz)
        if ! gzip -t -- "$file" 2>/dev/null || ! tar -tzf "$file" >/dev/null 2>&1; then
          problem "$path is not a readable tar.gz archive"
        fi
        ;;
      *.rdb)
        [[ $(head -c 5 -- "$file") == REDIS ]] || problem "$path is not an RDB file (no REDIS magic)"
        ;;
    esac
  fi
done <"$manifest"
((${#listed[@]})) || problem "MANIFEST lists no file"

# Checksums of everything listed (only meaningful once each path is a file).
if ((problems == 0)); then
  if ! failures=$(cd "$dir" && sha256sum --check --strict --quiet MANIFEST 2>&1); then
    while IFS= read -r f; do problem "checksum: $f"; done <<<"$failures"
  fi
fi

# Nothing may be there that the manifest does not vouch for.
while IFS= read -r -d '' entry; do
  rel=${entry#"$dir"/}
  [[ $rel == MANIFEST ]] && continue
  if [[ -z ${listed[$rel]+x} ]]; then
    problem "$rel is not listed in MANIFEST"
  fi
done < <(find "$dir" -mindepth 1 ! -type d -print0)

if ((problems)); then
  echo "verify-backup: $dir: FAILED ($problems problem(s))" >&2
  exit 1
fi
echo "verify-backup: $dir: ok (${#listed[@]} files)"
