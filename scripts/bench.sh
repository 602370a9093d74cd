#!/usr/bin/env bash
# Benchmarks on 127.0.0.1 only, with wrk; each mode rewrites its own section
# of docs/benchmarks.md (the hand-written "## Notes" stay).
#
#   scripts/bench.sh [all|pipeline|cache|reload|operator|rotation|memory|metrics|logs|hang|streams|image]   (default: all, ~12 minutes)
#   BENCH_SECONDS=3 RUNS=1 scripts/bench.sh pipeline  # quick smoke run
#
# pipeline  POST /api/v1/chat/generate through `heartalk run` (release, live mode)
#           in front of the mock Ark server: throughput at 50 connections with the
#           mock at 0 ms (median of RUNS runs, vs the Node.js service's 1,120 req/s),
#           and added latency at 200 connections with the mock at 200 ms (medians of
#           RUNS warm runs), beside the floor: the same through `bare-proxy` (the
#           worker's HTTP stack with no pipeline).
# cache     the response-cache hit path at 50 connections (target ≥ 30k req/s,
#           p99 ≤ 5 ms), and coalescing under a thundering herd of identical
#           requests against a mock at 500 ms.
# reload    the PM2 measurement's shape: wrk for 30 s at 50 connections, 3 SIGHUP
#           reloads; failed requests (PM2: 182 resets).
# operator  the same load while `heartalk restart` and `heartalk scale` 4, 1, file
#           run one after another; failed requests.
# rotation  the JWT secret and HEARTALK_API_KEY rotated in their files (mode 0400,
#           one secret a line) under wrk load, 3 phases of ROTATION_SECONDS (20) at 50
#           connections, `heartalk reload` ROTATION_RELOAD_AT (8) s into each: clients
#           on old, files old+new; clients on old and new, files new+old; clients on
#           new, files new. Failed requests (target 0), reload exit codes, and the old
#           secret and key refused at the end.
# memory    a worker growing 5 MB/s with max_memory = 150M under wrk load: failed
#           requests, detection delay after crossing, peak RSS vs the limit
#           (PM2: a 150 MB limit reached 270 MB).
# metrics   fleet-wide /metrics scrape latency with 16 workers (target < 50 ms).
# logs      throughput cost of request logging and the supervisor's CPU share.
# streams   STREAMS (default 10,000) chat streams open at once (POST /api/v1/chat/stream,
#           live mode, mock sending one SSE frame per second, cache off): KB per open
#           stream, memory given back after, time to first byte, all completed?
# image     the image scripts/image.sh builds from the Dockerfile (podman): its size,
#           its base's, and the time from `podman run` to the first passing
#           `podman healthcheck run` (IMAGE_RUNS runs, default 5), run as
#           tests/tests/image_run.rs runs it.
# hang      wrk 25 s at 50 connections on /health while one of 2 workers is
#           SIGSTOPped for 15 s: with `watchdog = "2s"` and with the watchdog off
#           (failed requests, worst latency, time to replacement).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=${1:-all}
case $MODE in
  -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  all | pipeline | cache | reload | operator | rotation | memory | metrics | logs | hang | streams | image) ;;
  *) echo "usage: scripts/bench.sh [all|pipeline|cache|reload|operator|rotation|memory|metrics|logs|hang|streams|image]" >&2; exit 64 ;;
esac
SECONDS_PER_RUN=${BENCH_SECONDS:-10}
RUNS=${RUNS:-4}
NODE_BASELINE=1120
OUT=${BENCH_OUT:-docs/benchmarks.md}
REPORT=scripts/bench_report.py

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v wrk >/dev/null; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
fi

cargo build --release -q -p heartalk -p heartalk-worker -p heartalk-e2e --bins
# Where cargo put them: CARGO_TARGET_DIR when set (relative to here, as cargo reads it).
BIN=$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/release
WORK=$(mktemp -d)
PIDS=()
stop_all() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap 'stop_all; rm -rf "$WORK"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_mock() { # latency_ms [chunk_delay_ms] → MOCK_URL, MOCK_PORT
  MOCK_PORT=$(free_port)
  "$BIN/mock-ark" "$MOCK_PORT" "$1" "${2:-0}" >"$WORK/mock.url" &
  PIDS+=($!)
  for _ in $(seq 100); do [[ -s $WORK/mock.url ]] && break; sleep 0.05; done
  MOCK_URL=$(head -1 "$WORK/mock.url")
}

start_heartalk() { # config-body → SVC_PORT, SUP_PID; logs in $WORK/heartalk.log
  SVC_PORT=$(free_port)
  local config=$1
  # Our own control socket, so a benchmark never meets (or is refused by)
  # a supervisor already running on the default path.
  if [[ $config != *"[supervisor]"* ]]; then
    config=$(printf '[supervisor]\ncontrol_socket = "%s"\n\n%s' "$WORK/ctl-$SVC_PORT.sock" "$config")
  fi
  printf '%s\n' "$config" | sed "s/@PORT@/$SVC_PORT/" >"$WORK/ecosystem.toml"
  HEARTALK_LOG=info "$BIN/heartalk" run -c "$WORK/ecosystem.toml" >"$WORK/heartalk.log" 2>&1 &
  SUP_PID=$!
  PIDS+=("$SUP_PID")
  for _ in $(seq 200); do
    grep -q '"event":"fleet_ready"' "$WORK/heartalk.log" 2>/dev/null && return
    sleep 0.05
  done
  echo "heartalk did not become ready:" >&2
  cat "$WORK/heartalk.log" >&2
  exit 1
}

stop_heartalk() { # stops the supervisor started last (the mock keeps running)
  kill -TERM "$SUP_PID"; wait "$SUP_PID" 2>/dev/null || true
  local p keep=()
  for p in "${PIDS[@]}"; do [[ $p == "$SUP_PID" ]] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

worker_pids() { # control-socket → the first app's worker pids, comma-separated, slot 0 first
  "$BIN/heartalk" status --json --socket "$1" |
    python3 -c 'import json,sys; print(",".join(str(w["pid"]) for w in json.load(sys.stdin)["apps"][0]["workers"]))'
}

rss_bytes() { # pid → its resident set in bytes
  awk -v page="$(getconf PAGESIZE)" '{print $2 * page}' "/proc/$1/statm"
}

live_config() { # mock_url [cache: true|false (default false)]
  cat <<TOML
[[apps]]
name = "heartalk"
script = "$BIN/heartalk-worker"
instances = "max"
listen = "127.0.0.1:@PORT@"
kill_timeout = "20s"
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
RATE_LIMIT_STREAM_MAX = "1000000000"
LOG_LEVEL = "warn"
CACHE_ENABLED = "${2:-false}"
TOML
}

mint_jwt() { # secret claims-json → an HS256 token
  python3 - "$1" "$2" <<'PY'
import base64, hashlib, hmac, json, sys
b = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
h = b(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
p = b(json.dumps(json.loads(sys.argv[2])).encode())
print(f"{h}.{p}.{b(hmac.new(sys.argv[1].encode(), f'{h}.{p}'.encode(), hashlib.sha256).digest())}")
PY
}
TOKEN=$(mint_jwt bench-secret "{\"userId\": \"bench\", \"exp\": $(($(date +%s) + 86400))}")
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

run_wrk() { # connections seconds url [script] → JSON on stdout
  local script=()
  [[ -n ${4:-} ]] && script=(-s "$4")
  local threads=$(( $1 < 2 ? $1 : 2 ))
  wrk -t"$threads" -c"$1" -d"$2s" --latency "${script[@]}" "$3" | python3 "$REPORT" wrk
}

header() {
  python3 - <<PY
import datetime, platform, subprocess
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
print(f"_{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, commit \`{commit}\`, {cpus} CPUs, Linux {platform.release()}._")
PY
}

bench_pipeline() {
  echo "== pipeline: throughput, 50 connections, mock at 0 ms, $RUNS × ${SECONDS_PER_RUN}s"
  start_mock 0
  start_heartalk "$(live_config "$MOCK_URL")"
  local url="http://127.0.0.1:$SVC_PORT/api/v1/chat/generate"
  run_wrk 50 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" >/dev/null # warm-up
  : >"$WORK/runs.jsonl"
  for _ in $(seq "$RUNS"); do
    run_wrk 50 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" | tee -a "$WORK/runs.jsonl"
  done
  stop_all
  echo "== pipeline: added latency, 200 connections, mock at 200 ms, $RUNS × ${SECONDS_PER_RUN}s per path"
  start_mock 200
  start_heartalk "$(live_config "$MOCK_URL")"
  url="http://127.0.0.1:$SVC_PORT/api/v1/chat/generate"
  # The mock alone first, then heartalk warmed up and measured back to back:
  # measured right after 10 s of idling (the mock-alone runs), the workers'
  # first bursts run on cold caches and freshly faulted memory, which is a
  # cold start, not the steady added latency the target is about.
  : >"$WORK/alone.jsonl"
  : >"$WORK/through.jsonl"
  for _ in $(seq "$RUNS"); do
    run_wrk 200 "$SECONDS_PER_RUN" "http://127.0.0.1:$MOCK_PORT/api/v3/chat/completions" "$WORK/upstream.lua" | tee -a "$WORK/alone.jsonl"
  done
  run_wrk 200 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" >/dev/null # warm-up
  for _ in $(seq "$RUNS"); do
    run_wrk 200 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" | tee -a "$WORK/through.jsonl"
  done
  kill -TERM "$SUP_PID"
  wait "$SUP_PID" || true
  # The floor: the same HTTP stack with no pipeline (tests/src/bin/bare-proxy.rs),
  # one process per CPU like the workers, same mock, same load.
  echo "== pipeline: the same through bare-proxy (hyper + reqwest, no pipeline)"
  local bare_port
  bare_port=$(free_port)
  for _ in $(seq "$(nproc)"); do
    "$BIN/bare-proxy" "$bare_port" "$MOCK_URL/chat/completions" &
    PIDS+=($!)
  done
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$bare_port/" && break
    sleep 0.05
  done
  : >"$WORK/bare.jsonl"
  run_wrk 200 "$SECONDS_PER_RUN" "http://127.0.0.1:$bare_port/" "$WORK/generate.lua" >/dev/null # warm-up
  for _ in $(seq "$RUNS"); do
    run_wrk 200 "$SECONDS_PER_RUN" "http://127.0.0.1:$bare_port/" "$WORK/generate.lua" | tee -a "$WORK/bare.jsonl"
  done
  stop_all
  {
    header
    python3 - "$WORK/runs.jsonl" "$WORK/alone.jsonl" "$WORK/through.jsonl" "$NODE_BASELINE" "$SECONDS_PER_RUN" "$WORK/bare.jsonl" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
alones = [json.loads(l) for l in open(sys.argv[2])]
throughs = [json.loads(l) for l in open(sys.argv[3])]
base, secs = float(sys.argv[4]), sys.argv[5]
bares = [json.loads(l) for l in open(sys.argv[6])]
med = statistics.median(r["rps"] for r in runs)
median = lambda rs, k: statistics.median(r[k] for r in rs)
print(f"""
## Chat pipeline

Release build, `instances = "max"`, live mode in front of `mock-ark` (same machine, same
cores); {secs} s per run; response cache off (`CACHE_ENABLED=false`), so every request
reaches the mock (the cache-hit path is the `cache` section).

**Throughput**, `POST /api/v1/chat/generate`, 50 connections, mock at 0 ms:

| run | req/s | p50 ms | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|---|""")
for i, r in enumerate(runs, 1):
    print(f"| {i} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']} | {r['errors']} |")
print(f"""
Median **{med:.0f} req/s** = **{med / base:.1f}×** the Node.js service's {base:.0f} req/s
(target ≥ 10×: {'met' if med >= 10 * base else 'NOT met'}).

**Added latency**, 200 connections, mock at 200 ms: {len(alones)} runs of the mock alone,
then a {secs} s warm-up through heartalk and {len(throughs)} runs through it; then the
same through `bare-proxy`, the worker's HTTP stack (hyper server, pooled reqwest client,
one process per CPU) forwarding with no pipeline at all — the floor on this machine:

| path | run | req/s | p50 ms | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|---|---|""")
for name, rs in (("mock alone", alones), ("through heartalk", throughs), ("through bare-proxy", bares)):
    for i, r in enumerate(rs, 1):
        print(f"| {name} | {i} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']} | {r['errors']} |")
p50 = median(throughs, "p50") - median(alones, "p50")
p99 = median(throughs, "p99") - median(alones, "p99")
worst = max(r["p99"] for r in throughs) - median(alones, "p99")
floor50 = median(bares, "p50") - median(alones, "p50")
floor99 = median(bares, "p99") - median(alones, "p99")
print(f"""
Added (median through − median alone): **p50 {p50:+.2f} ms**, **p99 {p99:+.2f} ms**
(targets ≤ 1 ms p50: {'met' if p50 <= 1 else 'NOT met'}; ≤ 5 ms p99: {'met' if p99 <= 5 else 'NOT met'}).
Worst single run: p99 {worst:+.2f} ms. The bare proxy adds p50 {floor50:+.2f} ms, p99 {floor99:+.2f} ms
(worst run {max(r["p99"] for r in bares) - median(alones, "p99"):+.2f} ms) on its own
(target {'met' if floor99 <= 5 else 'NOT met'} by the floor itself); HearTalk minus the bare proxy:
p50 {p50 - floor50:+.2f} ms, p99 {p99 - floor99:+.2f} ms (the spread between runs is several ms).""")
PY
  } | python3 "$REPORT" section "$OUT" pipeline
}

bench_cache() {
  echo "== cache: hit path, 50 connections, $RUNS × ${SECONDS_PER_RUN}s"
  start_mock 0
  start_heartalk "$(live_config "$MOCK_URL" true)"
  local url="http://127.0.0.1:$SVC_PORT/api/v1/chat/generate"
  run_wrk 50 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" >/dev/null # warm-up (first one fills the cache)
  : >"$WORK/cache.jsonl"
  for _ in $(seq "$RUNS"); do
    run_wrk 50 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" | tee -a "$WORK/cache.jsonl"
  done
  curl -s "http://127.0.0.1:$SVC_PORT/metrics" >"$WORK/cache.metrics"
  stop_all
  echo "== cache: thundering herds against a mock at 500 ms (workers share a Redis)"
  start_mock 500
  REDIS_PORT=$(free_port)
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --dir "$WORK" >"$WORK/redis.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do redis-cli -p "$REDIS_PORT" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  start_heartalk "$(live_config "$MOCK_URL" true)
REDIS_URL = \"redis://127.0.0.1:$REDIS_PORT/0\""
  python3 - "$SVC_PORT" "$TOKEN" >"$WORK/herd.json" <<'PY'
import http.client, json, statistics, sys, threading, time
port, token = int(sys.argv[1]), sys.argv[2]
HERD, ROUNDS = 200, 5
def metric(name, label):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    total = 0.0
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
rounds = []
for r in range(ROUNDS):
    body = json.dumps({"messages": [{"role": "user", "content": f"herd {r} {time.time()}"}]})
    before = metric("ai_upstream_requests_total", 'outcome="success"')
    lat, statuses, kinds = [], [], {}
    barrier = threading.Barrier(HERD)
    lock = threading.Lock()
    def one():
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        barrier.wait()
        t = time.perf_counter()
        c.request("POST", "/api/v1/chat/generate", body,
                  {"Content-Type": "application/json", "Authorization": "Bearer " + token})
        resp = c.getresponse(); resp.read()
        with lock:
            lat.append((time.perf_counter() - t) * 1000)
            statuses.append(resp.status)
            k = resp.getheader("x-cache"); kinds[k] = kinds.get(k, 0) + 1
    ts = [threading.Thread(target=one) for _ in range(HERD)]
    for t in ts: t.start()
    for t in ts: t.join()
    time.sleep(2.5)  # let the supervisor scrape the workers
    calls = metric("ai_upstream_requests_total", 'outcome="success"') - before
    lat.sort()
    rounds.append({"calls": calls, "ok": statuses.count(200), "kinds": kinds,
                   "p50": statistics.median(lat), "p99": lat[int(0.99 * (len(lat) - 1))]})
print(json.dumps({"herd": HERD, "rounds": rounds}))
PY
  stop_all
  {
    header
    python3 - "$WORK/cache.jsonl" "$WORK/herd.json" "$WORK/cache.metrics" "$SECONDS_PER_RUN" "$(nproc)" <<'PY'
import json, re, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
herd = json.load(open(sys.argv[2]))
metrics = open(sys.argv[3]).read()
secs, cpus = sys.argv[4], sys.argv[5]
def count(result):
    return sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
               if l.startswith("ai_cache_requests_total{") and 'cache="response"' in l and f'result="{result}"' in l)
med = statistics.median(r["rps"] for r in runs)
p99 = statistics.median(r["p99"] for r in runs)
print(f"""
## Response cache

Release build, `instances = "max"`, live mode in front of `mock-ark`, response cache on.
The same `POST /api/v1/chat/generate` body every time, so after the first request every
answer is an L1 (in-process) hit; {secs} s per run, 50 connections:

| run | req/s | p50 ms | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|---|""")
for i, r in enumerate(runs, 1):
    print(f"| {i} | {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} | {r['non2xx']} | {r['errors']} |")
print(f"""
Median **{med:.0f} req/s**, median p99 **{p99:.2f} ms** (targets ≥ 30,000 req/s:
{'met' if med >= 30000 else 'NOT met'}; p99 ≤ 5 ms: {'met' if p99 <= 5 else 'NOT met'}). Response-cache
lookups over the whole run: {count('hit'):.0f} hits, {count('miss'):.0f} misses.

**Thundering herd**: {herd['herd']} identical requests released at once (a fresh question each
round), mock at 500 ms, {cpus} workers sharing a local Redis (`REDIS_URL`): within a worker
requests join its flight, across workers the first worker's Redis claim makes the others
wait for its answer, so the floor is one upstream call per herd:

| round | upstream calls | 200s | X-Cache | p50 ms | p99 ms |
|---|---|---|---|---|---|""")
for i, r in enumerate(herd["rounds"], 1):
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(r["kinds"].items()))
    print(f"| {i} | {r['calls']:.0f} | {r['ok']} | {kinds} | {r['p50']:.0f} | {r['p99']:.0f} |")
PY
  } | python3 "$REPORT" section "$OUT" cache
}

bench_reload() {
  echo "== reload: 30 s at 50 connections, 3 reloads"
  start_mock 0
  start_heartalk "$(live_config "$MOCK_URL")"
  local url="http://127.0.0.1:$SVC_PORT/api/v1/chat/generate"
  (for t in 7.5 7.5 7.5; do sleep "$t"; kill -HUP "$SUP_PID"; done) &
  local hups=$!
  run_wrk 50 30 "$url" "$WORK/generate.lua" >"$WORK/reload.json"
  wait "$hups"
  local committed rolled
  committed=$(grep -c '"event":"reload_committed"' "$WORK/heartalk.log" || true)
  rolled=$(grep -c '"event":"reload_rolled_back"' "$WORK/heartalk.log" || true)
  stop_all
  {
    header
    python3 - "$WORK/reload.json" "$committed" "$rolled" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
failed = r["non2xx"] + r["errors"]
print(f"""
## Reload under load

`POST /api/v1/chat/generate` (live mode, mock at 0 ms), wrk 30 s at 50 keep-alive
connections, SIGHUP at 7.5 s, 15 s and 22.5 s; every reload replaces every worker.

| requests | req/s | p99 ms | reloads committed | rolled back | non-2xx | socket errors |
|---|---|---|---|---|---|---|
| {r['requests']} | {r['rps']:.0f} | {r['p99']:.2f} | {sys.argv[2]} | {sys.argv[3]} | {r['non2xx']} | {r['errors']} |

Failed requests: **{failed}** (PM2 on this machine: 182 connection resets in 3 reloads;
target 0: {'met' if failed == 0 else 'NOT met'}).""")
PY
  } | python3 "$REPORT" section "$OUT" reload
}

bench_operator() {
  echo "== operator: 30 s at 50 connections; restart, scale 4, scale 1, scale file"
  start_mock 0
  start_heartalk "$(live_config "$MOCK_URL")"
  local url="http://127.0.0.1:$SVC_PORT/api/v1/chat/generate"
  local sock="$WORK/ctl-$SVC_PORT.sock"
  (
    sleep 6; "$BIN/heartalk" restart heartalk --socket "$sock" >"$WORK/op1.out" 2>&1; echo "restart $?" >"$WORK/op.codes"
    sleep 4; "$BIN/heartalk" scale heartalk 4 --socket "$sock" >"$WORK/op2.out" 2>&1; echo "scale-4 $?" >>"$WORK/op.codes"
    sleep 4; "$BIN/heartalk" scale heartalk 1 --socket "$sock" >"$WORK/op3.out" 2>&1; echo "scale-1 $?" >>"$WORK/op.codes"
    sleep 4; "$BIN/heartalk" scale heartalk file --socket "$sock" >"$WORK/op4.out" 2>&1; echo "scale-file $?" >>"$WORK/op.codes"
  ) &
  local ops=$!
  run_wrk 50 30 "$url" "$WORK/generate.lua" >"$WORK/operator.json"
  wait "$ops"
  stop_all
  {
    header
    python3 - "$WORK/operator.json" "$WORK/op.codes" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
codes = dict(line.split() for line in open(sys.argv[2]))
failed = r["non2xx"] + r["errors"]
verbs = ", ".join(f"`{k}` exit {v}" for k, v in codes.items())
print(f"""
## Restart and scale under load

`POST /api/v1/chat/generate` (live mode, mock at 0 ms), wrk 30 s at 50 keep-alive
connections; `heartalk restart heartalk` at 6 s, then `heartalk scale heartalk 4`, `1` and
`file` 4 s after each previous verb returned (each waits until every slot serves).

| requests | req/s | p99 ms | non-2xx | socket errors |
|---|---|---|---|---|
| {r['requests']} | {r['rps']:.0f} | {r['p99']:.2f} | {r['non2xx']} | {r['errors']} |

Verbs: {verbs}. Failed requests: **{failed}** (target 0: {'met' if failed == 0 else 'NOT met'}).""")
PY
  } | python3 "$REPORT" section "$OUT" operator
}

write_secret_file() { # path line... → the file replaced in one rename, one secret a line, mode 0400
  local path=$1
  shift
  (umask 077 && printf '%s\n' "$@" >"$path.new")
  chmod 0400 "$path.new"
  mv -f "$path.new" "$path"
}


rotation_creds() { # label secret api-key → "label user-token service-token api-key" (rotation.lua)
  local now user service
  now=$(date +%s)
  user=$(mint_jwt "$2" "{\"userId\": \"bench-$1\", \"exp\": $((now + 3600))}")
  service=$(mint_jwt "$2" "{\"service\": \"ai-service\", \"iat\": $now, \"exp\": $((now + 300))}")
  printf '%s %s %s %s' "$1" "$user" "$service" "$3"
}

bench_rotation() {
  local secs=${ROTATION_SECONDS:-20} at=${ROTATION_RELOAD_AT:-8}
  echo "== rotation: JWT secret and API key rotated in files under load, 3 × ${secs}s at 50 connections, a reload ${at}s into each"
  local old=bench-rotation-old-secret new=bench-rotation-new-secret
  local old_key=bench-rotation-old-key new_key=bench-rotation-new-key
  local jwt_file=$WORK/jwt_secret key_file=$WORK/heartalk_api_key
  write_secret_file "$jwt_file" "$old"
  write_secret_file "$key_file" "$old_key"
  # How busy the machine is with other work before we start (2 s of /proc/stat).
  python3 - >"$WORK/rotation-busy.txt" <<'PY'
import time
def busy():
    v = [int(x) for x in open("/proc/stat").readline().split()[1:]]
    return sum(v) - v[3] - v[4], sum(v)
b0, t0 = busy(); time.sleep(2); b1, t1 = busy()
print(f"{(b1 - b0) / max(t1 - t0, 1) * 100:.0f}")
PY
  start_mock 0
  start_heartalk "$(cat <<TOML
[[apps]]
name = "heartalk"
script = "$BIN/heartalk-worker"
instances = 2
listen = "127.0.0.1:@PORT@"
kill_timeout = "20s"
[apps.env]
AI_PROVIDER_MODE = "live"
BYTEPLUS_API_KEY = "bench-key"
BYTEPLUS_BASE_URL = "$MOCK_URL"
BYTEPLUS_AMI_CHAT_EP = "ep-chat"
BYTEPLUS_AMI_WORK_ASSISTANT_EP = "ep-work"
JWT_SECRET_FILE = "$jwt_file"
HEARTALK_API_KEY_FILE = "$key_file"
KEYWORDS_CONFIG = "$PWD/config/keywords.json"
RATE_LIMIT_MAX_REQUESTS = "100000000"
RATE_LIMIT_USER_MAX = "100000000"
RATE_LIMIT_AI_MAX = "100000000"
RATE_LIMIT_ADMIN_MAX = "100000000"
RATE_LIMIT_STREAM_MAX = "100000000"
LOG_LEVEL = "warn"
TOML
)"
  local sock=$WORK/ctl-$SVC_PORT.sock base="http://127.0.0.1:$SVC_PORT"
  # Each wrk thread alternates a user request and an internal one, cycling
  # through ROT_CREDS; done() writes the requests sent per credential and the
  # responses per status to ROT_STATUS_OUT.
  cat >"$WORK/rotation.lua" <<'LUA'
local reqs, labels, i = {}, {}, 0
sent, statuses = {}, {}
function init(args)
  for entry in string.gmatch(os.getenv("ROT_CREDS"), "[^|]+") do
    local label, user, service, key = string.match(entry, "^(%S+) (%S+) (%S+) (%S+)$")
    reqs[#reqs + 1] = wrk.format("GET", "/api/v1/translate/languages",
      { ["Authorization"] = "Bearer " .. user })
    reqs[#reqs + 1] = wrk.format("GET", "/internal/api/v1/test",
      { ["Authorization"] = "Bearer " .. service, ["X-API-Key"] = key })
    labels[#labels + 1] = label
    labels[#labels + 1] = label
  end
end
function request()
  i = i % #reqs + 1
  sent[labels[i]] = (sent[labels[i]] or 0) + 1
  return reqs[i]
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
local threads = {}
function setup(thread)
  threads[#threads + 1] = thread
end
function done(summary, latency, requests)
  local s, c = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("sent")) do s[k] = (s[k] or 0) + v end
    for k, v in pairs(t:get("statuses")) do c[k] = (c[k] or 0) + v end
  end
  local parts = {}
  for k, v in pairs(s) do parts[#parts + 1] = string.format('"%s": %d', k, v) end
  local codes = {}
  for k, v in pairs(c) do codes[#codes + 1] = string.format('"%d": %d', k, v) end
  local f = assert(io.open(os.getenv("ROT_STATUS_OUT"), "w"))
  f:write('{"sent": {' .. table.concat(parts, ", ") .. '}, "statuses": {' .. table.concat(codes, ", ") .. '}}\n')
  f:close()
end
LUA
  local c_old c_new
  c_old=$(rotation_creds old "$old" "$old_key")
  c_new=$(rotation_creds new "$new" "$new_key")
  local phase creds labels before reloader code p gone new_user
  local -a jwt_lines key_lines
  for phase in 1 2 3; do
    case $phase in
      1) creds=$c_old; labels=old; jwt_lines=("$old" "$new"); key_lines=("$old_key" "$new_key") ;;
      2) creds="$c_old|$c_new"; labels="old and new"; jwt_lines=("$new" "$old"); key_lines=("$new_key" "$old_key") ;;
      3) creds=$c_new; labels=new; jwt_lines=("$new"); key_lines=("$new_key") ;;
    esac
    echo "-- phase $phase: clients with the $labels secret and key; ${at}s in, the files become: ${jwt_lines[*]}"
    before=$(worker_pids "$sock")
    (
      sleep "$at"
      write_secret_file "$jwt_file" "${jwt_lines[@]}"
      write_secret_file "$key_file" "${key_lines[@]}"
      t0=$(date +%s.%N)
      rc=0
      timeout 120 "$BIN/heartalk" reload --socket "$sock" >"$WORK/reload-$phase.out" 2>&1 || rc=$?
      echo "$rc $t0 $(date +%s.%N)" >"$WORK/reload-$phase.txt"
    ) &
    reloader=$!
    ROT_CREDS=$creds ROT_STATUS_OUT=$WORK/rotation-$phase.status \
      run_wrk 50 "$secs" "$base/" "$WORK/rotation.lua" | tee "$WORK/rotation-$phase.json"
    wait "$reloader"
    read -r code _ <"$WORK/reload-$phase.txt"
    # The workers of the previous files gone before the next credentials are
    # used (the reload replaced them; they drain their connections).
    gone=no
    for _ in $(seq 200); do
      gone=yes
      for p in ${before//,/ }; do kill -0 "$p" 2>/dev/null && gone=no; done
      [[ $gone == yes ]] && break
      sleep 0.1
    done
    echo "$gone" >"$WORK/gone-$phase.txt"
    if [[ $code != 0 ]]; then
      echo "phase $phase: heartalk reload exit $code, the rotation stops here:" >&2
      cat "$WORK/reload-$phase.out" >&2
      break
    fi
  done
  # The drop took effect: the old secret and the old key are refused, the new ones served.
  local now old_user new_service
  now=$(date +%s)
  read -r _ new_user _ _ <<<"$c_new"
  old_user=$(mint_jwt "$old" "{\"userId\": \"bench-old\", \"exp\": $((now + 3600))}")
  new_service=$(mint_jwt "$new" "{\"service\": \"ai-service\", \"iat\": $now, \"exp\": $((now + 300))}")
  {
    curl -s -o "$WORK/final-1.body" -w '%{http_code}\n' -H "Authorization: Bearer $old_user" "$base/api/v1/translate/languages"
    curl -s -o "$WORK/final-2.body" -w '%{http_code}\n' -H "Authorization: Bearer $new_service" -H "X-API-Key: $old_key" "$base/internal/api/v1/test"
    curl -s -o "$WORK/final-3.body" -w '%{http_code}\n' -H "Authorization: Bearer $new_user" "$base/api/v1/translate/languages"
  } >"$WORK/final.codes"
  stop_all
  {
    header
    python3 - "$WORK" "$secs" "$at" "$(nproc)" <<'PY'
import json, os, sys
w, secs, at, cpus = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
files = {1: "`old` → `old⏎new`", 2: "`old⏎new` → `new⏎old`", 3: "`new⏎old` → `new`"}
rows, failed, statuses, done = [], 0, {}, 0
for phase in (1, 2, 3):
    if not os.path.exists(f"{w}/rotation-{phase}.status"):
        continue
    done += 1
    r = json.load(open(f"{w}/rotation-{phase}.json"))
    s = json.load(open(f"{w}/rotation-{phase}.status"))
    code, t0, t1 = open(f"{w}/reload-{phase}.txt").read().split()
    gone = open(f"{w}/gone-{phase}.txt").read().strip()
    sent = " + ".join(f"{k} {v:,}" for k, v in sorted(s["sent"].items(), key=lambda kv: kv[0] != "old"))
    for k, v in s["statuses"].items():
        statuses[k] = statuses.get(k, 0) + v
    failed += r["non2xx"] + r["errors"]
    rows.append(f"| {phase} | {sent} | {files[phase]} | {r['requests']:,} | {r['rps']:.0f} | {r['p99']:.2f} "
                f"| {r['non2xx']} | {r['errors']} | {code} ({float(t1) - float(t0):.1f} s) | {gone} |")
print(f"""
## Secret rotation under load

The JWT secret and `HEARTALK_API_KEY` rotated with the steps of docs/configuration.md
("Rotating the JWT secret"), each kept in one file (`JWT_SECRET_FILE`, `HEARTALK_API_KEY_FILE`,
mode 0400) of one secret a line, the first signing or sent, every line accepted (instead of
a `_PREVIOUS` variable), while wrk runs at 50 keep-alive connections: live mode (mock at
0 ms), 2 workers, rate limits out of the way. Every request alternates
`GET /api/v1/translate/languages` with a user token and `GET /internal/api/v1/test` with a
service token and `X-API-Key`, cycling through the phase's credentials (secret and key, old
or new). Three phases of {secs} s; {at} s into
each, both files are replaced (one rename) and `heartalk reload` runs (it returns once the
reload committed or failed); the next phase starts once the replaced workers are gone.

| phase | requests sent with | files at the reload | requests | req/s | p99 ms | non-2xx | socket errors | reload exit (took) | old workers gone |
|---|---|---|---|---|---|---|---|---|---|""")
print("\n".join(rows))
codes = ", ".join(f"{k} × {v:,}" for k, v in sorted(statuses.items()))
print(f"""
Phase 3 is after the longest token lifetime: no client holds the old secret or key any more.
Responses by status: {codes}. Failed requests over the {done} phases: **{failed:,}**
(target 0: {'met' if failed == 0 and done == 3 else 'NOT met'}).""")
if done < 3:
    print(f"\nThe reload of phase {done} did not commit: the rotation stopped there.")
final = open(f"{w}/final.codes").read().split()
def code_of(n):
    try:
        return json.load(open(f"{w}/final-{n}.body")).get("code")
    except (OSError, ValueError, AttributeError):
        return None
ok = final[0] == "401" and final[1] == "401" and final[2] == "200"
print(f"""
After the last reload: a user token signed with the old secret → {final[0]} `{code_of(1)}`, the
old API key on the internal path → {final[1]} `{code_of(2)}`, a token signed with the new
secret → {final[2]} (expected 401, 401, 200: the old secret and key are dropped:
{'yes' if ok else 'NO'}).""")
busy = int(open(f"{w}/rotation-busy.txt").read())
if busy >= 15:
    print(f"""
The machine was busy with other work (its {cpus} CPUs {busy} % used in the 2 s before the run),
so req/s and p99 are noisy; the point of this section is the failed requests.""")
else:
    print(f"\nOther work on the machine before the run: {busy} % of its {cpus} CPUs.")
PY
  } | python3 "$REPORT" section "$OUT" rotation
}

bench_memory() {
  echo "== memory: worker growing 5 MB/s, max_memory = 150M, 40 s under load"
  start_heartalk "$(cat <<TOML
[[apps]]
name = "grower"
script = "$BIN/test-worker"
args = ["grow=5"]
instances = 1
listen = "127.0.0.1:@PORT@"
max_memory = "150M"
kill_timeout = "10s"
TOML
)"
  python3 "$REPORT" sample "$BIN/test-worker" 41 "$WORK/rss.json" &
  local sampler=$!
  run_wrk 50 40 "http://127.0.0.1:$SVC_PORT/" >"$WORK/memory.json"
  wait "$sampler"
  grep '"event":"memory_replace"' "$WORK/heartalk.log" >"$WORK/replace.jsonl" || true
  stop_all
  {
    header
    python3 - "$WORK/memory.json" "$WORK/rss.json" "$WORK/replace.jsonl" <<'PY'
import datetime, json, sys
r = json.load(open(sys.argv[1]))
series = json.load(open(sys.argv[2]))
limit = 150 * 2**20
events = [json.loads(l) for l in open(sys.argv[3]) if l.strip()]
delays, peaks = [], []
for e in events:
    pid = str(e["pid"])
    at = datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
    crossed = next((t for t, rss in series.get(pid, []) if rss > limit), None)
    if crossed is not None:
        delays.append(at - crossed)
    peaks.append(max((rss for _, rss in series.get(pid, [])), default=0))
failed = r["non2xx"] + r["errors"]
worst_delay = max(delays, default=float("nan"))
worst_peak = max(peaks, default=0) / limit
print(f"""
## Memory limit

`test-worker grow=5` (memory grows 5 MiB/s whatever the load; PM2 polls every 30 s, so at
this rate its check alone allows 150 MB of overshoot), `max_memory = "150M"`, default
`memory_check_interval` (1 s) and `memory_strikes` (2); wrk 40 s at 50 connections on
`GET /`; the RSS of every worker sampled every 10 ms.

| requests | replacements | worst detection delay | mean delay | worst peak / limit | non-2xx | socket errors |
|---|---|---|---|---|---|---|
| {r['requests']} | {len(events)} | {worst_delay:.2f} s | {sum(delays) / max(len(delays), 1):.2f} s | {worst_peak * 100:.0f} % | {r['non2xx']} | {r['errors']} |

Targets: 0 failed requests ({'met' if failed == 0 else 'NOT met'}), detection ≤ 2 s after
crossing ({'met' if delays and worst_delay <= 2 else 'NOT met'}), peak ≤ 110 % of the limit
({'met' if peaks and worst_peak <= 1.10 else 'NOT met'}). PM2: 180 %.""")
PY
  } | python3 "$REPORT" section "$OUT" memory
}

bench_metrics() {
  echo "== metrics: fleet-wide scrape with 16 workers"
  local admin; admin=$(free_port)
  start_heartalk "$(cat <<TOML
[supervisor]
metrics_listen = "127.0.0.1:$admin"
control_socket = "$WORK/ctl.sock"

[[apps]]
name = "heartalk"
script = "$BIN/heartalk-worker"
instances = 16
listen = "127.0.0.1:@PORT@"
[apps.env]
SIMULATED_LATENCY_MS = "0"
KEYWORDS_CONFIG = "$PWD/config/keywords.json"
LOG_LEVEL = "warn"
TOML
)"
  # some traffic so every worker has series to report
  wrk -t2 -c32 -d3s "http://127.0.0.1:$SVC_PORT/health" >/dev/null
  run_wrk 1 10 "http://127.0.0.1:$admin/metrics" >"$WORK/scrape.json"
  curl -s "http://127.0.0.1:$admin/metrics" >"$WORK/scrape.txt"
  stop_all
  {
    header
    python3 - "$WORK/scrape.json" "$WORK/scrape.txt" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
text = open(sys.argv[2]).read()
series = sum(1 for l in text.splitlines() if l and not l.startswith("#"))
print(f"""
## Fleet-wide metrics scrape

16 workers (`heartalk-worker`, simulated mode) after 3 s of traffic; `GET /metrics` on
`[supervisor] metrics_listen`, one connection, 10 s: each scrape fetches all 16 workers'
expositions over their Unix sockets, merges them with the retired totals and renders
({len(text)} bytes, {series} series).

| scrapes/s | p50 ms | p99 ms |
|---|---|---|
| {r['rps']:.0f} | {r['p50']:.2f} | {r['p99']:.2f} |

Target: a scrape under 50 ms with 16 workers ({'met' if r['p99'] < 50 else 'NOT met'} at p99).""")
PY
  } | python3 "$REPORT" section "$OUT" metrics
}

bench_logs() {
  echo "== logs: generate at 50 connections, request logging on vs off"
  start_mock 0
  for level in warn info; do
    start_heartalk "$(live_config "$MOCK_URL" | sed "s/LOG_LEVEL = \"warn\"/LOG_LEVEL = \"$level\"/")"
    local url="http://127.0.0.1:$SVC_PORT/api/v1/chat/generate"
    run_wrk 50 3 "$url" "$WORK/generate.lua" >/dev/null # warm-up
    local before after
    before=$(awk '{print $14 + $15}' "/proc/$SUP_PID/stat")
    : >"$WORK/logs-$level.jsonl"
    for _ in $(seq "$RUNS"); do
      run_wrk 50 "$SECONDS_PER_RUN" "$url" "$WORK/generate.lua" | tee -a "$WORK/logs-$level.jsonl"
    done
    after=$(awk '{print $14 + $15}' "/proc/$SUP_PID/stat")
    echo "$before $after $(getconf CLK_TCK)" >"$WORK/cpu-$level.txt"
    du -sb "$WORK/logs" | cut -f1 >"$WORK/bytes-$level.txt" 2>/dev/null || echo 0 >"$WORK/bytes-$level.txt"
    stop_heartalk
    rm -rf "$WORK/logs"
  done
  stop_all
  {
    header
    python3 - "$WORK" "$SECONDS_PER_RUN" "$RUNS" <<'PY'
import json, statistics, sys
w, secs, runs = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
# Per level: the median run by throughput (runs are noisy on a shared 2-core VM).
def median_run(lvl):
    rs = sorted((json.loads(l) for l in open(f"{w}/logs-{lvl}.jsonl")), key=lambda r: r["rps"])
    return rs[(len(rs) - 1) // 2]
r = {lvl: median_run(lvl) for lvl in ("warn", "info")}
def cpu(lvl):
    b, a, hz = open(f"{w}/cpu-{lvl}.txt").read().split()
    return (float(a) - float(b)) / float(hz) / (secs * runs) * 100
off, on = r["warn"]["rps"], r["info"]["rps"]
cost = (off - on) / off * 100
sup_on = cpu("info")
per_10k = sup_on * 10000 / on
print(f"""
## Request logging

`POST /api/v1/chat/generate` (live mode, mock at 0 ms), 50 connections, {runs} runs of {secs:.0f} s
per level (the median run by req/s; supervisor CPU over all runs): workers at
`LOG_LEVEL=warn` (no request lines) and at `info` (one JSON access line per request, read from
the worker's pipe, tagged and written to `logs/heartalk.log` by the supervisor).

| logging | req/s | p99 ms | supervisor CPU | non-2xx | socket errors |
|---|---|---|---|---|---|
| off (`warn`) | {off:.0f} | {r['warn']['p99']:.2f} | {cpu('warn'):.1f} % | {r['warn']['non2xx']} | {r['warn']['errors']} |
| on (`info`) | {on:.0f} | {r['info']['p99']:.2f} | {sup_on:.1f} % | {r['info']['non2xx']} | {r['info']['errors']} |

Throughput cost of logging: **{cost:.1f} %** (target ≤ 10 %: {'met' if cost <= 10 else 'NOT met'}).
Supervisor CPU with logging on: {sup_on:.1f} % of one core at {on:.0f} req/s, i.e. **{per_10k:.1f} %
per 10k req/s** (target ≤ 5 % at 10k req/s: {'met' if per_10k <= 5 else 'NOT met'}; PM2's daemon:
~48 % at 500 req/s in a user report).""")
PY
  } | python3 "$REPORT" section "$OUT" logs
}

bench_hang() {
  echo "== hang: one of 2 workers SIGSTOPped for 15 s, watchdog 2 s vs off"
  local watchdog
  for watchdog in 2s 0; do
    start_heartalk "$(cat <<TOML
[[apps]]
name = "heartalk"
script = "$BIN/heartalk-worker"
instances = 2
listen = "127.0.0.1:@PORT@"
watchdog = "$watchdog"
[apps.env]
LOG_LEVEL = "warn"
TOML
)"
    local sock=$WORK/ctl-$SVC_PORT.sock victim
    # Wait for the first pings, then pick slot 0's worker.
    sleep 1.5
    victim=$(worker_pids "$sock" | cut -d, -f1)
    (
      sleep 5
      date +%s.%N >"$WORK/stopped-$watchdog.txt"
      kill -STOP "$victim"
      sleep 15
      kill -CONT "$victim" 2>/dev/null || true
    ) &
    local stopper=$!
    # A 20 s timeout, so a request stuck on the stopped worker is measured
    # as latency instead of being dropped by wrk's 2 s default.
    wrk -t2 -c50 -d25s --timeout 20s --latency "http://127.0.0.1:$SVC_PORT/health" >"$WORK/hang-$watchdog.txt"
    python3 "$REPORT" wrk <"$WORK/hang-$watchdog.txt" >"$WORK/hang-$watchdog.json" || {
      cat "$WORK/hang-$watchdog.txt" >&2
      exit 1
    }
    wait "$stopper"
    grep -E '"event":"(worker_hung|worker_ready)"' "$WORK/heartalk.log" >"$WORK/events-$watchdog.jsonl" || true
    echo "$victim" >"$WORK/victim-$watchdog.txt"
    stop_heartalk
  done
  stop_all
  {
    header
    python3 - "$WORK" <<'PY'
import datetime, json, sys
w = sys.argv[1]
def ts(e):
    return datetime.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()
rows = []
for wd, label in (("2s", '`watchdog = "2s"`'), ("0", 'watchdog off (`"0"`)')):
    r = json.load(open(f"{w}/hang-{wd}.json"))
    stopped = float(open(f"{w}/stopped-{wd}.txt").read())
    victim = int(open(f"{w}/victim-{wd}.txt").read())
    events = [json.loads(l) for l in open(f"{w}/events-{wd}.jsonl") if l.strip()]
    hung = [ts(e) - stopped for e in events if e["event"] == "worker_hung" and e["pid"] == victim]
    ready = [ts(e) - stopped for e in events
             if e["event"] == "worker_ready" and e["slot"] == 0 and e["pid"] != victim and ts(e) > stopped]
    detect = f"{hung[0]:.2f} s" if hung else "never"
    replace = f"{ready[0]:.2f} s" if ready else "never"
    failed = r["non2xx"] + r["errors"]
    rows.append(f"| {label} | {r['requests']} | {r['rps']:.0f} | {failed} | {r['p99']:.1f} | {r['max'] / 1000:.2f} s | {detect} | {replace} |")
print("""
## A hung worker

`GET /health` (simulated mode), wrk 25 s at 50 keep-alive connections with a 20 s request
timeout; 2 workers; 5 s in, slot 0's worker gets SIGSTOP, and SIGCONT 15 s later (if it is
still there). Times are from the SIGSTOP.

| run | requests | req/s | failed | p99 ms | slowest answer | hung detected | replacement ready |
|---|---|---|---|---|---|---|---|""")
print("\n".join(rows))
print("""
Failed requests are the ones the stopped worker had already accepted: its connections are
reset when it is killed (2 s after SIGABRT), and wrk reconnects (they are not in the
latency columns). With the watchdog off they, and every new connection the kernel hashes
to the stopped worker's socket, wait until SIGCONT: the slowest answers took the whole 15 s,
and without the SIGCONT they would never come.""")
PY
  } | python3 "$REPORT" section "$OUT" hang
}

bench_streams() {
  local n=${STREAMS:-10000} proto
  echo "== streams: $n chat streams open at once, one SSE frame per second"
  start_mock 0 1000
  for proto in off prior-knowledge; do
    start_heartalk "$(live_config "$MOCK_URL" | sed "s/^LOG_LEVEL = \"warn\"$/LOG_LEVEL = \"warn\"\nUPSTREAM_HTTP2 = \"$proto\"/")"
    local sock=$WORK/ctl-$SVC_PORT.sock pids
    sleep 2 # idle: let start-up allocations settle
    pids=$(worker_pids "$sock")
    rss_bytes "$SUP_PID" >"$WORK/sup-idle-$proto.txt"
    "$BIN/stream-load" --addr "127.0.0.1:$SVC_PORT" --streams "$n" --token "$TOKEN" \
      --body '{"messages":[{"role":"user","content":"你好"}]}' --ramp-secs 5 \
      --pids "$pids" --after-secs 60 >"$WORK/streams-$proto.json"
    rss_bytes "$SUP_PID" >"$WORK/sup-after-$proto.txt"
    stop_heartalk
  done
  stop_all
  {
    header
    python3 - "$WORK" <<'PY'
import json, sys
w = sys.argv[1]
mb = lambda b: b / 2**20
rows, notes = [], []
for proto, label in (("off", "HTTP/1.1"), ("prior-knowledge", "HTTP/2 (h2c)")):
    r = json.load(open(f"{w}/streams-{proto}.json"))
    idle, peak = (sum(r[k]) for k in ("idle_rss", "peak_rss"))
    per = (peak - idle) / max(r["peak_open"], 1) / 1024
    back = r["back_after_secs"]
    sup = (int(open(f"{w}/sup-idle-{proto}.txt").read()), int(open(f"{w}/sup-after-{proto}.txt").read()))
    each = lambda k: " + ".join(f"{mb(x):.0f}" for x in r[k]) + " MB"
    rows.append(
        f"| {label} | {r['peak_open']} | {r['ok']} / {r['streams']} | {each('idle_rss')} | {each('peak_rss')} "
        f"| **{per:.1f} KB** | {1048576 / per:,.0f} | {each('after_rss')} ({'back after ' + format(back, '.0f') + ' s' if back is not None else 'not back in 60 s'}) "
        f"| {r['ttfb_p50_ms']:.0f} / {r['ttfb_p99_ms']:.0f} ms | {mb(sup[0]):.0f} → {mb(sup[1]):.0f} MB |")
    if r["errors"]:
        notes.append(f"{label}: " + "; ".join(r["errors"][:3]))
print(f"""
## Open streams

`POST /api/v1/chat/stream` (live mode; the mock Ark sends one SSE frame per second, ~10
frames an answer), response cache off, 2 workers; `stream-load` opens the streams over 5 s,
one per connection, and reads each to its end; RSS of both workers sampled every 200 ms;
the upstream spoken over HTTP/1.1 (`UPSTREAM_HTTP2=off`: a connection per open stream) and
over HTTP/2 (`prior-knowledge`, h2c to the mock: one connection per worker).

| upstream | open at once | completed 200 | workers idle | at peak | per open stream | streams per GB | 60 s after the last ended | time to first byte p50 / p99 | supervisor |
|---|---|---|---|---|---|---|---|---|---|""")
print("\n".join(rows))
print("""
RSS per worker (worker 1 + worker 2). Per open stream = both workers' RSS growth ÷ streams
open at the peak (Node.js under PM2: ~83 KB; target ≤ 20 KB). "Back" = both workers under
1.5 × idle + 16 MB.""")
if notes:
    print("\nFailures: " + " | ".join(notes))
PY
  } | python3 "$REPORT" section "$OUT" streams
}

bench_image() {
  echo "== image: size, and podman run → healthy (${IMAGE_RUNS:-5} runs)"
  local image
  image=$(scripts/image.sh | tail -n 1)
  # shellcheck source=scripts/lib/podman.sh
  source scripts/lib/podman.sh
  local secrets=$WORK/image-secrets
  mkdir -p "$secrets"
  chmod 755 "$secrets"
  for f in jwt_secret heartalk_api_key; do
    openssl rand -hex 32 >"$secrets/$f"
    chown 65532:65532 "$secrets/$f"
    chmod 0440 "$secrets/$f"
  done
  {
    header
    python3 - "$image" "$secrets" "${IMAGE_RUNS:-5}" <<'PY'
import json, statistics, subprocess, sys, time
image, secrets, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
def podman(*args, check=True):
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)
def size(name):
    return int(json.loads(podman("image", "inspect", name).stdout)[0]["Size"])
times = []
for i in range(runs):
    name = f"bench-image-{i}"
    podman("rm", "-f", "-t", "0", name, check=False)
    started = time.monotonic()
    podman("run", "-d", "--name", name, "--read-only",
           "-v", f"{name}-run:/run/heartalk", "-v", f"{name}-logs:/var/log/heartalk",
           "-v", f"{secrets}:/run/secrets:ro",
           "-e", "JWT_SECRET_FILE=/run/secrets/jwt_secret",
           "-e", "HEARTALK_API_KEY_FILE=/run/secrets/heartalk_api_key", image)
    while podman("healthcheck", "run", name, check=False).returncode != 0:
        if time.monotonic() - started > 60:
            sys.exit(f"{name} not healthy after 60 s")
        time.sleep(0.02)
    times.append(time.monotonic() - started)
    podman("rm", "-f", "-t", "0", name, check=False)
    podman("volume", "rm", "-f", f"{name}-run", f"{name}-logs", check=False)
mb = lambda b: f"{b / 1e6:.1f} MB"
print(f"""
## Image

`scripts/image.sh` builds the Dockerfile with podman (base images made locally, see
docs/deployment.md "Podman"); the container runs as tests/tests/image_run.rs runs it:
read-only root, the two volumes, secrets as files. Time from `podman run` to the first
passing `podman healthcheck run` (the image's HEALTHCHECK, `heartalk health`), polled every
20 ms, {runs} runs.

| image | size | its base | run → healthy, median | worst |
|---|---|---|---|---|
| `{image}` | {mb(size(image))} | {mb(size("gcr.io/distroless/cc-debian12:nonroot"))} (distroless cc stand-in) | {statistics.median(times) * 1000:.0f} ms | {max(times) * 1000:.0f} ms |

The Node.js service's image (node:18-alpine plus its dependencies) is not measured here:
no registry is reachable to pull its base, and the original project's `package.json` is
not part of this repository.""")
PY
  } | python3 "$REPORT" section "$OUT" image
}

case $MODE in
  image) bench_image ;;
  pipeline) bench_pipeline ;;
  hang) bench_hang ;;
  streams) bench_streams ;;
  cache) bench_cache ;;
  reload) bench_reload ;;
  operator) bench_operator ;;
  rotation) bench_rotation ;;
  memory) bench_memory ;;
  metrics) bench_metrics ;;
  logs) bench_logs ;;
  all) bench_pipeline; bench_cache; bench_reload; bench_operator; bench_rotation; bench_memory; bench_metrics; bench_logs; bench_hang; bench_streams ;;
  *) echo "usage: scripts/bench.sh [all|pipeline|cache|reload|operator|rotation|memory|metrics|logs|hang|streams|image]" >&2; exit 64 ;;
esac
