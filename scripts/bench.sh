#!/usr/bin/env bash
# Benchmarks the chat pipeline with wrk against `heartalk run` (release
# build, live mode) in front of the mock Ark server, on 127.0.0.1 only, and
# writes the results to docs/benchmarks.md.
#
#   scripts/bench.sh            # full run (~2.5 minutes)
#   BENCH_SECONDS=3 RUNS=1 scripts/bench.sh   # quick smoke run
#
# Scenarios:
#   1. throughput: POST /api/v1/chat/generate, 50 connections, mock at 0 ms,
#      median of RUNS runs; compared with the Node.js service's 1,120 req/s.
#   2. added latency: 200 connections with the mock at 200 ms; p50/p99
#      through heartalk minus p50/p99 of the mock alone at 200 connections.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
RUNS=${RUNS:-4}
NODE_BASELINE=1120
OUT=${BENCH_OUT:-docs/benchmarks.md}

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi

cargo build --release -q -p heartalk -p heartalk-worker -p heartalk-e2e --bins
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_mock() { # latency_ms → sets MOCK_URL
  local port; port=$(free_port)
  "$BIN/mock-ark" "$port" "$1" >"$WORK/mock.url" &
  PIDS+=($!)
  for _ in $(seq 100); do [[ -s $WORK/mock.url ]] && break; sleep 0.05; done
  MOCK_URL=$(head -1 "$WORK/mock.url")
  MOCK_PORT=$port
}

start_heartalk() { # mock_url → sets SVC_PORT
  SVC_PORT=$(free_port)
  cat >"$WORK/ecosystem.toml" <<TOML
[[apps]]
name = "heartalk"
script = "$PWD/$BIN/heartalk-worker"
instances = "max"
listen = "127.0.0.1:$SVC_PORT"
[apps.env]
AI_PROVIDER_MODE = "live"
BYTEPLUS_API_KEY = "bench-key"
BYTEPLUS_BASE_URL = "$1"
BYTEPLUS_AMI_CHAT_EP = "ep-chat"
BYTEPLUS_AMI_WORK_ASSISTANT_EP = "ep-work"
JWT_SECRET = "bench-secret"
KEYWORDS_CONFIG = "$PWD/config/keywords.json"
RATE_LIMIT_AI_MAX = "1000000000"
RATE_LIMIT_USER_MAX = "1000000000"
LOG_LEVEL = "warn"
TOML
  HEARTALK_LOG=warn "$BIN/heartalk" run -c "$WORK/ecosystem.toml" >"$WORK/heartalk.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 200); do
    curl -sf "http://127.0.0.1:$SVC_PORT/ready" >/dev/null 2>&1 && break
    sleep 0.05
  done
}

TOKEN=$(python3 - <<'PY'
import base64, hashlib, hmac, json, time
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps({"userId": "bench", "exp": int(time.time()) + 86400}).encode())
s = b(hmac.new(b"bench-secret", f"{h}.{p}".encode(), hashlib.sha256).digest())
print(f"{h}.{p}.{s}")
PY
)
export TOKEN
cat >"$WORK/generate.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = '{"messages":[{"role":"user","content":"你好"}]}'
LUA
cat >"$WORK/upstream.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"ep-chat","messages":[{"role":"user","content":"你好"}],"temperature":0.7,"max_tokens":2000,"top_p":1,"frequency_penalty":0,"presence_penalty":0}'
LUA

# wrk → "rps p50_ms p99_ms non2xx errors"
run_wrk() { # connections url script
  local out; out=$(wrk -t2 -c"$1" -d"${SECONDS_PER_RUN}s" --latency -s "$3" "$2")
  echo "$out" >>"$WORK/wrk.log"
  python3 - "$out" <<'PY'
import re, sys
t = sys.argv[1]
if "50%" not in t:
    sys.exit("wrk gave no latency distribution:\n" + t)
def ms(v):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", v)
    if not m:
        sys.exit(f"unexpected wrk latency {v!r} in:\n{t}")
    n, u = float(m.group(1)), m.group(2)
    return {"us": n / 1000, "ms": n, "s": n * 1000, "m": n * 60000}[u]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
p50 = ms(re.search(r"^\s+50%\s+(\S+)$", t, re.M).group(1))
p99 = ms(re.search(r"^\s+99%\s+(\S+)$", t, re.M).group(1))
non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", t).group(1)) if "Non-2xx" in t else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", t)
errors = sum(int(x) for x in m.groups()) if m else 0
print(f"{rps:.0f} {p50:.2f} {p99:.2f} {non2xx} {errors}")
PY
}

echo "== throughput: generate, 50 connections, mock at 0 ms, $RUNS × ${SECONDS_PER_RUN}s"
start_mock 0
start_heartalk "$MOCK_URL"
run_wrk 50 "http://127.0.0.1:$SVC_PORT/api/v1/chat/generate" "$WORK/generate.lua" >/dev/null # warm-up
THROUGHPUT=()
for i in $(seq "$RUNS"); do
  r=$(run_wrk 50 "http://127.0.0.1:$SVC_PORT/api/v1/chat/generate" "$WORK/generate.lua")
  echo "  run $i: $r"
  THROUGHPUT+=("$r")
done
cleanup; PIDS=(); WORK=$(mktemp -d); cp /dev/null "$WORK/wrk.log"
cat >"$WORK/generate.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. os.getenv("TOKEN")
wrk.body = '{"messages":[{"role":"user","content":"你好"}]}'
LUA
cat >"$WORK/upstream.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"ep-chat","messages":[{"role":"user","content":"你好"}],"temperature":0.7,"max_tokens":2000,"top_p":1,"frequency_penalty":0,"presence_penalty":0}'
LUA

echo "== added latency: 200 connections, mock at 200 ms"
start_mock 200
start_heartalk "$MOCK_URL"
run_wrk 200 "http://127.0.0.1:$SVC_PORT/api/v1/chat/generate" "$WORK/generate.lua" >/dev/null # warm-up
MOCK_ALONE=$(run_wrk 200 "http://127.0.0.1:$MOCK_PORT/api/v3/chat/completions" "$WORK/upstream.lua")
THROUGH=$(run_wrk 200 "http://127.0.0.1:$SVC_PORT/api/v1/chat/generate" "$WORK/generate.lua")
echo "  mock alone: $MOCK_ALONE"
echo "  through heartalk: $THROUGH"

python3 - "$OUT" "$NODE_BASELINE" "$SECONDS_PER_RUN" "$MOCK_ALONE" "$THROUGH" "${THROUGHPUT[@]}" <<'PY'
import datetime, os, platform, statistics, subprocess, sys
out, baseline, secs, mock_alone, through, *runs = sys.argv[1:]
baseline = float(baseline)
runs = [list(map(float, r.split())) for r in runs]
rps = [r[0] for r in runs]
med = statistics.median(rps)
ma = list(map(float, mock_alone.split()))
th = list(map(float, through.split()))
cpu = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
rows = "\n".join(f"| {i+1} | {r[0]:.0f} | {r[1]:.2f} | {r[2]:.2f} | {int(r[3])} | {int(r[4])} |" for i, r in enumerate(runs))
text = f"""# Benchmarks

Produced by `scripts/bench.sh` (wrk on 127.0.0.1; release build; `heartalk run` with
`instances = "max"`, live mode in front of the mock Ark server `mock-ark`, which runs on the
same machine and competes for the same cores). Do not edit by hand: re-run the script.

- Date: {datetime.datetime.utcnow().strftime('%Y-%m-%d %H:%M UTC')}, commit `{commit}`
- Machine: {cpu} CPUs, {platform.machine()}, Linux {platform.release()}
- Each run: {secs} s; response cache not built yet, so every request reaches the mock.

## Throughput: `POST /api/v1/chat/generate`, 50 connections, mock at 0 ms

| run | req/s | p50 ms | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|---|
{rows}

Median: **{med:.0f} req/s** = **{med / baseline:.1f}×** the Node.js service's {baseline:.0f} req/s
(target ≥ 10×: {'met' if med >= 10 * baseline else 'NOT met'}).

## Added latency: 200 connections, mock at 200 ms

| path | req/s | p50 ms | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|---|
| mock alone | {ma[0]:.0f} | {ma[1]:.2f} | {ma[2]:.2f} | {int(ma[3])} | {int(ma[4])} |
| through heartalk | {th[0]:.0f} | {th[1]:.2f} | {th[2]:.2f} | {int(th[3])} | {int(th[4])} |

Added by heartalk: **p50 {th[1] - ma[1]:+.2f} ms**, **p99 {th[2] - ma[2]:+.2f} ms**
(targets ≤ 1 ms p50: {'met' if th[1] - ma[1] <= 1 else 'NOT met'}; ≤ 5 ms p99: {'met' if th[2] - ma[2] <= 5 else 'NOT met'}).
"""
# Hand-written analysis below "## Notes" survives a re-run.
notes = ""
if os.path.exists(out):
    old = open(out).read()
    if "\n## Notes" in old:
        notes = old[old.index("\n## Notes"):]
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
open(out, "w").write(text + notes)
print(text)
PY
