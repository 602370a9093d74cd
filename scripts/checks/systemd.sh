#!/usr/bin/env bash
# Checks deploy/heartalk.service (issue #16). Run by scripts/check-deploy.sh
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
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,15s/^# \{0,1\}//p' "$0"
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
echo "systemd: all checks passed"
