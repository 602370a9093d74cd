#!/usr/bin/env bash
# Checks the shell scripts of the repository (issue #8's operations scripts
# and every other one). Run by scripts/check-deploy.sh from the repository
# root; exits non-zero if any check fails.
#
#   1. shellcheck (following `source`) on every *.sh under scripts/, the
#      sourced scripts/lib/*.sh, and the fake docker/docker-compose of
#      tests/fixtures/;
#   2. every script has a `set -euo pipefail` line (libraries excepted);
#   3. `--help` of each operations script exits 0 and documents its exit
#      codes; an unknown option exits 64;
#   4. .github/workflows/ci.yml parses as YAML (PyYAML, which the tools venv
#      of scripts/deps.sh has through kubernetes-validate), its test job runs
#      scripts/test.sh, and the image job needs it, runs only for pushes,
#      and pushes to ghcr.io with docker/build-push-action.
#
# The behaviour of the operations scripts (health-check, backup/restore
# round trip with a real Redis, deploy with rollback) is tested by the Rust
# end-to-end tests in tests/tests/ops_scripts.rs, run by `cargo nextest`
# in scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,21s/^# \{0,1\}//p' "$0"
  exit 0
fi

failed=0
fail() {
  echo "ops-scripts: FAIL: $*" >&2
  failed=1
}

mapfile -d '' scripts < <(find scripts -name '*.sh' -type f -print0 | sort -z)
fixtures=(tests/fixtures/fake-docker tests/fixtures/fake-docker-compose)

echo "ops-scripts: shellcheck on ${#scripts[@]} scripts and ${#fixtures[@]} fixtures"
shellcheck --version | sed -n 2p
shellcheck -x "${scripts[@]}" "${fixtures[@]}" || fail "shellcheck"

for f in "${scripts[@]}" "${fixtures[@]}"; do
  [[ $f == scripts/lib/* ]] && continue
  grep -qx 'set -euo pipefail' "$f" || fail "$f has no 'set -euo pipefail' line"
done

ops=(scripts/health-check.sh scripts/deploy.sh scripts/backup.sh scripts/restore.sh
  scripts/verify-backup.sh scripts/make-secrets.sh scripts/image.sh)
for s in "${ops[@]}"; do
  [[ -x $s ]] || fail "$s is not executable"
  if ! out=$("$s" --help 2>&1); then
    fail "$s --help exits non-zero"
    continue
  fi
  grep -q '^usage: ' <<<"$out" || fail "$s --help has no usage line"
  grep -q '^Exit codes:' <<<"$out" || fail "$s --help does not document its exit codes"
  grep -qE '^  64 +bad usage' <<<"$out" || fail "$s --help does not document exit 64"
  rc=0
  "$s" --no-such-option >/dev/null 2>&1 || rc=$?
  ((rc == 64)) || fail "$s --no-such-option exits $rc, not 64"
done

[[ -d target/tools-venv/bin ]] && PATH="$PWD/target/tools-venv/bin:$PATH"
echo "ops-scripts: .github/workflows/ci.yml"
python3 - .github/workflows/ci.yml <<'PY' || fail ".github/workflows/ci.yml"
import sys, yaml

doc = yaml.safe_load(open(sys.argv[1], encoding="utf-8"))
jobs = doc["jobs"]
problems = []
test_runs = [s.get("run", "") for s in jobs["test"]["steps"]]
if not any(r.strip() == "scripts/test.sh" for r in test_runs):
    problems.append("the test job does not run scripts/test.sh")
image = jobs["image"]
if image.get("needs") not in ("test", ["test"]):
    problems.append("the image job does not need the test job")
if "github.event_name == 'push'" not in str(image.get("if", "")):
    problems.append("the image job is not limited to pushes")
uses = {s.get("uses", "").split("@")[0]: s for s in image["steps"]}
push = uses.get("docker/build-push-action", {}).get("with", {})
if push.get("push") is not True:
    problems.append("the image job does not push with docker/build-push-action")
login = uses.get("docker/login-action", {}).get("with", {})
if login.get("registry") != "ghcr.io":
    problems.append("the image job does not log in to ghcr.io")
if image.get("permissions", {}).get("packages") != "write":
    problems.append("the image job lacks packages: write")
for p in problems:
    print("ci.yml:", p, file=sys.stderr)
sys.exit(1 if problems else 0)
PY

if ((failed)); then
  exit 1
fi
echo "ops-scripts: ok (${#ops[@]} operations scripts)"
