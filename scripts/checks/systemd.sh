#!/usr/bin/env bash
# Checks deploy/heartalk.service (issues #16, #17). Run by scripts/check-deploy.sh
# from the repository root; exits non-zero on the first failure.
#
#   1. `systemd-analyze verify` passes on the unit. verify also checks that
#      every Exec*= program exists, so it runs on a copy whose
#      /usr/local/bin/ paths point at this build's binaries (the only change),
#      with this build's man pages on MANPATH for Documentation=man:heartalk(1).
#   2. The settings the supervisor's behaviour relies on hold: Type=notify
#      with NotifyAccess=main and a WatchdogSec, KillMode=mixed (SIGTERM to
#      the supervisor alone, which drains), TimeoutStopSec above the shipped
#      config's kill_timeout plus the log flush, TimeoutStartSec (which bounds
#      ExecReload) above `heartalk reload`'s wait, ExecReload through `heartalk reload` (it waits
#      for the outcome), and the log and runtime directories of the shipped
#      config made writable by LogsDirectory= and RuntimeDirectory=.
#   3. Secrets are systemd credentials: no Environment= gives a secret's
#      value, every *_FILE variable is %d/ID with a matching
#      LoadCredential=ID:/etc/heartalk/credentials/ID (and every credential
#      is read through one), JWT_SECRET_FILE, HEARTALK_API_KEY_FILE and
#      BYTEPLUS_API_KEY_FILE are set; the optional Redis pair (shipped
#      commented out) passes verify and the same rules once uncommented.
#      verify does not read credential files: no secret is needed here.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,22s/^# \{0,1\}//p' "$0"
  exit 0
fi

unit=deploy/heartalk.service
config=deploy/ecosystem.container.toml
fail() { echo "systemd: FAIL: $*" >&2; exit 1; }
step() { echo "systemd: $*"; }

command -v systemd-analyze >/dev/null || fail "systemd-analyze missing (scripts/deps.sh installs systemd)"
[[ -x target/debug/heartalk && -x target/debug/heartalk-worker ]] || fail "build first (cargo build --workspace --bins)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s#/usr/local/bin/#$PWD/target/debug/#g" "$unit" >"$tmp/heartalk.service"
# Documentation=man:heartalk(1): verify runs `man`; the pages are this
# build's (`heartalk man --dir`, as the install steps do).
target/debug/heartalk man --dir "$tmp/man/man1"
step "systemd-analyze verify $unit"
if ! out=$(MANPATH="$tmp/man" systemd-analyze verify "$tmp/heartalk.service" 2>&1); then
  echo "$out" >&2
  fail "systemd-analyze verify"
fi
# verify also reports problems it does not fail on (unknown keys, bad values).
if [[ -n $out ]]; then
  echo "$out" >&2
  fail "systemd-analyze verify printed warnings"
fi

value() { sed -n "s/^$1=//p" "$unit" | tail -n1; }
seconds() { # 45 / 45s / 2min -> seconds
  local v=$1
  case $v in
    *min) echo $((${v%min} * 60)) ;;
    *ms) echo 0 ;;
    *s) echo "${v%s}" ;;
    *) echo "$v" ;;
  esac
}
step "settings the drain and the notify protocol rely on"
[[ $(value Type) == notify ]] || fail "Type=notify expected"
[[ $(value NotifyAccess) == main ]] || fail "NotifyAccess=main expected"
[[ -n $(value WatchdogSec) ]] || fail "WatchdogSec= expected"
[[ $(value KillMode) == mixed ]] || fail "KillMode=mixed expected"
[[ $(value ExecReload) == "/usr/local/bin/heartalk reload "* ]] || fail "ExecReload through heartalk reload"
kill_timeout=$(sed -n 's/^kill_timeout = "\([0-9]*\)s".*/\1/p' "$config" | head -n1)
stop=$(seconds "$(value TimeoutStopSec)")
[[ -n $kill_timeout ]] || fail "no kill_timeout in $config"
# After the drain the supervisor gives worker pipes 10 s and the log file 30 s.
((stop > kill_timeout + 40)) || fail "TimeoutStopSec ($stop s) must exceed kill_timeout ($kill_timeout s) + 40 s of log flushing"
start=$(seconds "$(value TimeoutStartSec)")
((start > 600)) || fail "TimeoutStartSec ($start s) bounds ExecReload: it must exceed heartalk reload's 600 s wait"
grep -q '^control_socket = "/run/heartalk/' "$config" || fail "$config's control socket is not under RuntimeDirectory=heartalk"
grep -q '^dir = "/var/log/heartalk"' "$config" || fail "$config's log dir is not LogsDirectory=heartalk"
[[ $(value RuntimeDirectory) == heartalk && $(value LogsDirectory) == heartalk ]] || fail "RuntimeDirectory/LogsDirectory=heartalk expected"
[[ $(value ProtectSystem) == strict && $(value NoNewPrivileges) == yes ]] || fail "hardening expected"

step "secrets as systemd credentials"
# Checks one unit file; prints every problem, returns 1 if any.
check_credentials() {
  local file=$1 bad=0 value name id path
  local -a assignments
  local -A creds=() used=()
  while IFS= read -r value; do
    id=${value%%:*} path=${value#*:}
    if [[ $path != "/etc/heartalk/credentials/$id" ]]; then
      echo "systemd: LoadCredential=$value: expected $id:/etc/heartalk/credentials/$id" >&2
      bad=1
    fi
    creds[$id]=1
  done < <(sed -n 's/^LoadCredential=//p' "$file")
  while read -ra assignments; do
    for value in "${assignments[@]}"; do
      name=${value%%=*}
      if [[ $name == *_FILE ]]; then
        id=${value#*=}
        id=${id#%d/}
        if [[ ${value#*=} != "%d/$id" || -z ${creds[$id]+x} ]]; then
          echo "systemd: Environment=$value: a *_FILE must be %d/ID of a LoadCredential=ID" >&2
          bad=1
        fi
        used[$id]=1
      elif [[ $name =~ (SECRET|PASSWORD|PASSWD|API_KEY|TOKEN|CREDENTIAL) ]]; then
        echo "systemd: Environment=$name=...: a secret's value in the unit (use a credential and ${name}_FILE)" >&2
        bad=1
      fi
    done
  done < <(sed -n 's/^Environment=//p' "$file")
  for id in "${!creds[@]}"; do
    if [[ -z ${used[$id]+x} ]]; then
      echo "systemd: LoadCredential=$id is not read through any *_FILE" >&2
      bad=1
    fi
  done
  for name in JWT_SECRET_FILE HEARTALK_API_KEY_FILE BYTEPLUS_API_KEY_FILE; do
    if ! grep -q "^Environment=$name=%d/" "$file"; then
      echo "systemd: Environment=$name=%d/... missing" >&2
      bad=1
    fi
  done
  return "$bad"
}
check_credentials "$unit" || fail "secrets in $unit"
# The optional Redis pair, uncommented: it must verify and pass the same rules.
if ! grep -q '^#LoadCredential=redis_password:' "$unit" || ! grep -q '^#Environment=REDIS_PASSWORD_FILE=' "$unit"; then
  fail "$unit: the commented-out redis_password credential and REDIS_PASSWORD_FILE lines are missing"
fi
mkdir "$tmp/with-redis"
sed -e 's/^#\(LoadCredential=redis_password:\)/\1/' -e 's/^#\(Environment=REDIS_PASSWORD_FILE=\)/\1/' \
  "$tmp/heartalk.service" >"$tmp/with-redis/heartalk.service"
if ! out=$(MANPATH="$tmp/man" systemd-analyze verify "$tmp/with-redis/heartalk.service" 2>&1) || [[ -n $out ]]; then
  echo "$out" >&2
  fail "systemd-analyze verify with the Redis credential uncommented"
fi
check_credentials "$tmp/with-redis/heartalk.service" || fail "secrets in $unit with the Redis credential uncommented"
echo "systemd: all checks passed"
