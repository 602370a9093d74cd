#!/usr/bin/env bash
# Checks the monitoring/ assets (run by scripts/check-deploy.sh from the repo
# root; needs promtool, amtool, shellcheck and python3 with PyYAML):
#   - prometheus.yml: `promtool check config` (also loads alerts.yml);
#   - alerts.yml: `promtool check rules`, every rule has a routed severity
#     and summary/description annotations, every alert has unit tests;
#   - alerts.test.yml: `promtool test rules`;
#   - alertmanager.yml: `amtool check-config` on the template and on the
#     config rendered by alertmanager-entrypoint.sh with a sample webhook URL
#     (and the entrypoint refuses a missing or unsafe one), and
#     `amtool config routes test`: each severity reaches its receiver;
#   - Grafana: the dashboard is valid JSON (python3 -m json.tool), every
#     panel has queries and uses the provisioned datasource uid, and the
#     provisioning files name a Prometheus datasource and a file provider.
# Expressions are run against a real Prometheus by tests/tests/prometheus_scrape.rs.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,16s/^# \{0,1\}//p' "$0"
  exit 0
fi

fail() {
  echo "monitoring: FAILED: $*" >&2
  exit 1
}
step() { echo "monitoring: $*"; }

for tool in promtool amtool shellcheck python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (scripts/deps.sh installs it)"
done
python3 -c 'import yaml' 2>/dev/null \
  || fail "python3 has no PyYAML (scripts/deps.sh's target/tools-venv provides it)"

m=monitoring
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step "promtool check config"
promtool check config "$m/prometheus.yml"
step "promtool check rules"
promtool check rules "$m/alerts.yml"
step "promtool test rules"
promtool test rules "$m/alerts.test.yml"

step "every rule: severity, annotations, unit tests"
python3 - "$m/alerts.yml" "$m/alerts.test.yml" <<'EOF'
import sys, yaml
rules_file, tests_file = sys.argv[1:]
rules = [r for g in yaml.safe_load(open(rules_file))["groups"] for r in g["rules"]]
tests = yaml.safe_load(open(tests_file))["tests"]
problems = []
for r in rules:
    name = r.get("alert") or r.get("record")
    if "alert" not in r:
        continue
    if r.get("labels", {}).get("severity") not in ("critical", "warning"):
        problems.append(f"{name}: severity must be critical or warning (routed by alertmanager.yml)")
    for key in ("summary", "description"):
        if not r.get("annotations", {}).get(key, "").strip():
            problems.append(f"{name}: no {key} annotation")
cases = [c for t in tests for c in t.get("alert_rule_test", [])]
for name in sorted({r["alert"] for r in rules if "alert" in r}):
    mine = [c for c in cases if c["alertname"] == name]
    fires = {a["exp_labels"].get("severity") for c in mine for a in c.get("exp_alerts") or []}
    severities = {r["labels"]["severity"] for r in rules if r.get("alert") == name}
    if not severities <= fires:
        problems.append(f"{name}: no unit test where the {sorted(severities - fires)} rule fires")
    if not any(not c.get("exp_alerts") for c in mine):
        problems.append(f"{name}: no unit test where it must not fire")
for p in problems:
    print("  " + p, file=sys.stderr)
sys.exit(1 if problems else 0)
EOF

step "amtool check-config (template)"
amtool check-config "$m/alertmanager.yml"
step "alertmanager-entrypoint.sh renders the webhook URL from the environment"
shellcheck "$m/alertmanager-entrypoint.sh"
url='https://hooks.example.com/services/T0/B0/x?token=a&b=c|d'
ALERTMANAGER_TEMPLATE="$m/alertmanager.yml" ALERTMANAGER_RENDERED="$tmp/alertmanager.yml" \
  ALERT_WEBHOOK_URL="$url" sh "$m/alertmanager-entrypoint.sh" --render-only
amtool check-config "$tmp/alertmanager.yml"
grep -qF "url: '$url'" "$tmp/alertmanager.yml" || fail "rendered config lacks the webhook URL"
if grep -q 'alert-webhook.invalid' "$tmp/alertmanager.yml"; then
  fail "rendered config still has the placeholder URL"
fi
for bad in '' 'ftp://example.com/x' "https://example.com/it's"; do
  if ALERTMANAGER_TEMPLATE="$m/alertmanager.yml" ALERTMANAGER_RENDERED="$tmp/bad.yml" \
    ALERT_WEBHOOK_URL="$bad" sh "$m/alertmanager-entrypoint.sh" --render-only 2>/dev/null; then
    fail "alertmanager-entrypoint.sh accepted ALERT_WEBHOOK_URL='$bad'"
  fi
done
step "alertmanager-entrypoint.sh takes the URL from ALERT_WEBHOOK_URL_FILE, by the service's file rules"
render_file() { # FILE [VAR=VALUE...]: renders with ALERT_WEBHOOK_URL_FILE=FILE
  local file=$1
  shift
  env ALERTMANAGER_TEMPLATE="$m/alertmanager.yml" ALERTMANAGER_RENDERED="$tmp/file.yml" \
    ALERT_WEBHOOK_URL_FILE="$file" "$@" sh "$m/alertmanager-entrypoint.sh" --render-only
}
printf '%s\r\n\r\n' "$url" >"$tmp/webhook-url"
chmod 0440 "$tmp/webhook-url"
ln -s "$tmp/webhook-url" "$tmp/webhook-link"
render_file "$tmp/webhook-link" >/dev/null || fail "alertmanager-entrypoint.sh refused a 0440 URL file behind a symlink"
grep -qF "url: '$url'" "$tmp/file.yml" || fail "the config rendered from the file lacks the webhook URL (line ends kept?)"
amtool check-config "$tmp/file.yml" >/dev/null
refused() { # WHY SAYS FILE [VAR=VALUE...]: refused (exit 64) with SAYS in the message
  local why=$1 says=$2 code=0
  shift 2
  render_file "$@" >/dev/null 2>"$tmp/refused.err" || code=$?
  ((code == 64)) || fail "alertmanager-entrypoint.sh: a URL file $why: exit $code, not 64"
  grep -qF -- "$says" "$tmp/refused.err" \
    || fail "alertmanager-entrypoint.sh: a URL file $why: the message lacks '$says': $(cat "$tmp/refused.err")"
}
refused "with ALERT_WEBHOOK_URL set too" "both set" "$tmp/webhook-url" ALERT_WEBHOOK_URL="$url"
refused "missing" "not a regular file" "$tmp/no-such-file"
refused "that is a directory" "not a regular file" "$tmp"
printf '\n\r\n' >"$tmp/webhook-blank"
chmod 0400 "$tmp/webhook-blank"
refused "of line ends only" ": empty" "$tmp/webhook-blank"
printf '%s\n' "https://example.com/a b" >"$tmp/webhook-space"
chmod 0400 "$tmp/webhook-space"
refused "with a space in the URL" "the file of ALERT_WEBHOOK_URL_FILE: the URL must not contain" "$tmp/webhook-space"
chmod 0444 "$tmp/webhook-url"
refused "readable by every user" "readable by every user" "$tmp/webhook-url"
chmod 0440 "$tmp/webhook-url"
step "amtool config routes test"
route_is() {
  local want=$1
  shift
  amtool config routes test --config.file="$tmp/alertmanager.yml" \
    --verify.receivers="$want" "$@" 2>/dev/null >/dev/null \
    || fail "alert {$*} is not routed to $want"
}
route_is webhook-critical severity=critical alertname=InstanceDown instance=heartalk:8001
route_is webhook-warning severity=warning alertname=HighMemoryUsage instance=heartalk:8001
route_is webhook-warning alertname=SomethingWithoutSeverity

step "Grafana dashboard and provisioning"
python3 -m json.tool "$m/grafana/dashboards/heartalk.json" >/dev/null \
  || fail "$m/grafana/dashboards/heartalk.json is not valid JSON"
python3 - "$m/grafana" <<'EOF'
import json, sys, yaml
root = sys.argv[1]
problems = []
ds = yaml.safe_load(open(f"{root}/provisioning/datasources/prometheus.yml"))["datasources"]
prom = [d for d in ds if d.get("type") == "prometheus"]
if len(prom) != 1 or not prom[0].get("uid") or not prom[0].get("url"):
    problems.append("datasources/prometheus.yml: want one prometheus datasource with a uid and url")
uid = prom[0].get("uid") if prom else None
providers = yaml.safe_load(open(f"{root}/provisioning/dashboards/heartalk.yml"))["providers"]
if not any(p.get("type") == "file" and p.get("options", {}).get("path") for p in providers):
    problems.append("dashboards/heartalk.yml: want a file provider with options.path")
dash = json.load(open(f"{root}/dashboards/heartalk.json"))
if not dash.get("uid") or not dash.get("title"):
    problems.append("heartalk.json: dashboard needs a uid and a title")
ids, panels = set(), []
def walk(ps):
    for p in ps:
        panels.append(p)
        walk(p.get("panels", []))
walk(dash.get("panels", []))
for p in panels:
    title = p.get("title", "?")
    if p.get("id") in ids:
        problems.append(f"panel {title!r}: duplicate id {p.get('id')}")
    ids.add(p.get("id"))
    if "gridPos" not in p:
        problems.append(f"panel {title!r}: no gridPos")
    if p.get("type") == "row":
        continue
    targets = p.get("targets") or []
    if not targets:
        problems.append(f"panel {title!r}: no queries")
    refs = [t.get("refId") for t in targets]
    if len(set(refs)) != len(refs) or None in refs:
        problems.append(f"panel {title!r}: refIds missing or repeated")
    for d in [p.get("datasource")] + [t.get("datasource") for t in targets]:
        if not d or d.get("uid") != uid:
            problems.append(f"panel {title!r}: datasource {d} is not the provisioned uid {uid!r}")
    for t in targets:
        if not t.get("expr", "").strip():
            problems.append(f"panel {title!r}: target {t.get('refId')} has no expr")
for v in dash.get("templating", {}).get("list", []):
    if v.get("type") == "query" and (v.get("datasource") or {}).get("uid") != uid:
        problems.append(f"variable {v.get('name')}: not on the provisioned datasource")
for p in problems:
    print("  " + p, file=sys.stderr)
print(f"  {len(panels)} panels, {sum(len(p.get('targets') or []) for p in panels)} queries")
sys.exit(1 if problems else 0)
EOF

echo "monitoring: all checks passed"
