#!/usr/bin/env bash
# Checks the container and orchestration assets of issues #8 and #17 (owned
# with them: Dockerfile, .dockerignore, deploy/ecosystem.container.toml,
# compose/, kubernetes/, scripts/make-secrets.sh). Run by
# scripts/check-deploy.sh from the repository root, with the tools of
# scripts/deps.sh on PATH; exits non-zero on the first failure.
#
#   1. Dockerfile: hadolint; PID 1 entrypoint, exec-form health check, SIGTERM,
#      non-root user; every COPY source admitted by .dockerignore.
#   2. deploy/ecosystem.container.toml: `heartalk check` passes in production
#      with the secrets in the environment and with only *_FILE variables
#      naming 0440 files. (That a production start without any secret is
#      refused is the supervisor's check: asserted at "RE-ENABLE (#17)".)
#   3. compose/*.yml: `docker-compose config` with compose/.env.example (the
#      Swarm file too: Debian's docker-compose 1.29 validates the v3.9 schema,
#      deploy keys included, and only warns that it would ignore `configs`).
#      The production and Swarm files give every service its secrets as
#      files only (Grafana's and Alertmanager's too): no secret-named
#      variable but *_FILE, no credentials in a URL, no secret interpolated
#      (no ${...SECRET/PASSWORD/API_KEY} at all); every *_FILE names a
#      secret the service mounts, made from ./secrets/<the files
#      scripts/make-secrets.sh writes> (git-ignored, outside the build
#      context); Swarm mounts them 0440 or stricter (its default 0444 is
#      world-readable) for the image's uid/gid; Redis takes requirepass from
#      the file the service reads. .env.example sets exactly the variables
#      used, secrets empty or replace-... placeholders.
#   4. compose/nginx.conf: `nginx -t` on the shipped file with the upstream
#      host and paths substituted and a throwaway self-signed certificate.
#   5. kubernetes/: kubernetes-validate (strict, Kubernetes 1.29) on every
#      manifest; kustomization.yaml lists them; the ConfigMap's files are the
#      shipped ones; probes, grace periods and security settings hold; no
#      secret reaches the service or Redis through the environment (no
#      secretRef/secretKeyRef, no secret-named variable but *_FILE): each
#      *_FILE names a key of a heartalk-secrets volume with mode 0440 or
#      stricter (the default 0644 is world-readable) and fsGroup set, and
#      secret.example.yaml has exactly the keys read; the prometheus-adapter
#      PromQL parses and yields the right numbers on sample series (promtool
#      test rules).
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ ${1:-} == --help || ${1:-} == -h ]]; then
  sed -n '2,38s/^# \{0,1\}//p' "$0"
  exit 0
fi

[[ -d target/tools-venv/bin ]] && PATH="$PWD/target/tools-venv/bin:$PATH"
K8S_VERSION=1.29.0
heartalk=target/debug/heartalk

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

step() { echo "containers: $*"; }
fail() {
  echo "containers: FAILED: $*" >&2
  exit 1
}
for tool in hadolint docker-compose nginx openssl kubernetes-validate promtool python3; do
  command -v "$tool" >/dev/null || fail "$tool not found (source scripts/deps.sh)"
done
[[ -x $heartalk ]] || fail "$heartalk not built (cargo build --workspace --bins)"

# ---- 1. Dockerfile ----------------------------------------------------------
step "hadolint Dockerfile"
hadolint Dockerfile

step "Dockerfile contract"
grep -qx 'ENTRYPOINT \["heartalk", "run"\]' Dockerfile \
  || fail 'Dockerfile: ENTRYPOINT must be ["heartalk", "run"] (the supervisor is PID 1)'
grep -qx 'STOPSIGNAL SIGTERM' Dockerfile || fail "Dockerfile: STOPSIGNAL SIGTERM missing"
grep -q '^EXPOSE .*\b8001\b' Dockerfile || fail "Dockerfile: EXPOSE 8001 missing"
# The health check runs `heartalk health` in exec form: no shell, no curl.
grep -A1 '^HEALTHCHECK ' Dockerfile | grep -q 'CMD \["heartalk", "health"\]' \
  || fail 'Dockerfile: HEALTHCHECK must be CMD ["heartalk", "health"] (exec form)'
if grep -Eiq '\b(tini|pm2|dumb-init)\b' <(grep -v '^#' Dockerfile); then
  fail "Dockerfile: no init wrapper (the supervisor is PID 1)"
fi
last_user=$(grep '^USER ' Dockerfile | tail -n1 | awk '{print $2}')
[[ -n $last_user && ${last_user%%:*} != root && ${last_user%%:*} != 0 ]] \
  || fail "Dockerfile: the runtime stage must end as a non-root USER (got '${last_user:-none}')"

# Every path the build context must provide (COPY without --from) has to be
# re-admitted by .dockerignore, which starts by excluding everything.
grep -qx '\*' .dockerignore || fail ".dockerignore: expected to start from '*' (allow-list)"
while read -r src; do
  [[ -e $src ]] || fail "Dockerfile copies $src, which does not exist"
  grep -qx "!${src%/}/\?" .dockerignore \
    || fail ".dockerignore does not admit $src (docker build would miss it)"
done < <(grep '^COPY ' Dockerfile | grep -v -- '--from=' \
  | awk '{for (i = 2; i < NF; i++) if ($i !~ /^--/) print $i}')

# ---- 2. container config ----------------------------------------------------
container_toml=deploy/ecosystem.container.toml
# Each secret can come as NAME or as NAME_FILE; clear both for every run.
secret_vars=(JWT_SECRET JWT_SECRET_PREVIOUS HEARTALK_API_KEY HEARTALK_API_KEY_PREVIOUS
  BYTEPLUS_API_KEY REDIS_PASSWORD REDIS_URL)
no_secrets=()
for var in "${secret_vars[@]}"; do
  no_secrets+=(-u "$var" -u "${var}_FILE")
done
step "heartalk check $container_toml: production, secrets in the environment"
env "${no_secrets[@]}" NODE_ENV=production JWT_SECRET=sample HEARTALK_API_KEY=sample \
  "$heartalk" check "$container_toml"
step "heartalk check $container_toml: production, secrets as *_FILE only"
# As the assets ship them: one file each, 0440, in a directory others may
# not list.
mkdir -m 0750 "$tmp/run-secrets"
for name in jwt_secret heartalk_api_key byteplus_api_key redis_password; do
  printf 'sample-%s\n' "$name" >"$tmp/run-secrets/$name"
  chmod 0440 "$tmp/run-secrets/$name"
done
env "${no_secrets[@]}" NODE_ENV=production \
  JWT_SECRET_FILE="$tmp/run-secrets/jwt_secret" \
  HEARTALK_API_KEY_FILE="$tmp/run-secrets/heartalk_api_key" \
  BYTEPLUS_API_KEY_FILE="$tmp/run-secrets/byteplus_api_key" \
  REDIS_PASSWORD_FILE="$tmp/run-secrets/redis_password" \
  REDIS_URL=redis://redis:6379/0 \
  "$heartalk" check "$container_toml"
# A production start without the secrets refuses (exit 64, naming them), and
# so does one whose secret file is readable by every user.
if env "${no_secrets[@]}" NODE_ENV=production "$heartalk" check "$container_toml" >"$tmp/check.out" 2>&1; then
  fail "$container_toml: heartalk check accepts a production start without JWT_SECRET[_FILE]/HEARTALK_API_KEY[_FILE]"
fi
for var in JWT_SECRET HEARTALK_API_KEY; do
  grep -q "$var" "$tmp/check.out" || fail "heartalk check does not require $var: $(cat "$tmp/check.out")"
done
cp "$tmp/run-secrets/jwt_secret" "$tmp/world-readable" && chmod 0644 "$tmp/world-readable"
if env "${no_secrets[@]}" NODE_ENV=production \
  JWT_SECRET_FILE="$tmp/world-readable" HEARTALK_API_KEY_FILE="$tmp/run-secrets/heartalk_api_key" \
  "$heartalk" check "$container_toml" >"$tmp/check.out" 2>&1; then
  fail "$container_toml: heartalk check accepts a world-readable JWT_SECRET_FILE"
fi
grep -q "$tmp/world-readable: readable by every user" "$tmp/check.out" \
  || fail "heartalk check does not name the world-readable file: $(cat "$tmp/check.out")"
# The image's paths and the config's must agree.
grep -q '^COPY deploy/ecosystem.container.toml /etc/heartalk/ecosystem.toml$' Dockerfile \
  || fail "Dockerfile must install $container_toml as /etc/heartalk/ecosystem.toml"
grep -q '^COPY config/keywords.json /etc/heartalk/keywords.json$' Dockerfile \
  || fail "Dockerfile must install config/keywords.json as /etc/heartalk/keywords.json"
grep -q 'KEYWORDS_CONFIG:-/etc/heartalk/keywords.json' "$container_toml" \
  || fail "$container_toml: KEYWORDS_CONFIG must default to /etc/heartalk/keywords.json"

# ---- 3. compose --------------------------------------------------------------
env_example=$PWD/compose/.env.example
for file in compose/docker-compose.yml compose/docker-compose.prod.yml compose/docker-stack.yml; do
  step "docker-compose config $file"
  docker-compose --env-file "$env_example" -f "$file" config -q
done
# No secret's value comes from the environment of the production files:
# `docker inspect` would show it (each is a file under ./secrets/).
for file in compose/docker-compose.prod.yml compose/docker-stack.yml; do
  step "$file interpolates no secret"
  if grep -hv '^[[:space:]]*#' "$file" \
    | grep -E '\$\{[A-Z_]*(SECRET|PASSWORD|PASSWD|API_KEY|TOKEN|WEBHOOK_URL)\b'; then
    fail "$file takes a secret from the environment (make it a file: scripts/make-secrets.sh)"
  fi
done

# The service's and Redis's secrets are files. scripts/make-secrets.sh
# writes them (into a scratch directory here): the compose files must read
# exactly the files it makes, and what it makes must be acceptable.
step "scripts/make-secrets.sh makes the secret files the production files read"
printf 'sample-ark-key\n' >"$tmp/ark-key"
printf 'https://hooks.example.com/heartalk-alerts\n' >"$tmp/webhook-url"
scripts/make-secrets.sh --byteplus-api-key-from "$tmp/ark-key" \
  --alert-webhook-url-from "$tmp/webhook-url" "$tmp/made" >/dev/null \
  || fail "scripts/make-secrets.sh failed"
mapfile -t made < <(find "$tmp/made" -mindepth 1 -maxdepth 1 -printf '%f\n' | sort)
for name in "${made[@]}"; do
  perm=$(stat -c %a "$tmp/made/$name")
  (((8#$perm & 8#004) == 0)) || fail "scripts/make-secrets.sh made $name world-readable ($perm)"
  git check-ignore -q "compose/secrets/$name" || fail ".gitignore does not ignore compose/secrets/$name"
  # As root each goes to the user of the container that reads it.
  if [[ $(id -u) == 0 ]]; then
    case $name in
      grafana_admin_password) want=472:0 ;;       # grafana/grafana
      alert_webhook_url) want=65534:65534 ;;      # prom/alertmanager (nobody)
      *) want=$(sed -n 's/^USER \([0-9]*:[0-9]*\)$/\1/p' Dockerfile) ;;
    esac
    [[ $(stat -c %u:%g "$tmp/made/$name") == "$want" ]] \
      || fail "scripts/make-secrets.sh gave $name to $(stat -c %u:%g "$tmp/made/$name"), not $want"
  fi
done
[[ " ${made[*]} " == *" grafana_admin_password "* && " ${made[*]} " == *" alert_webhook_url "* ]] \
  || fail "scripts/make-secrets.sh --alert-webhook-url-from did not make the monitoring files (made: ${made[*]})"
# Run again it keeps every file as it is, and it reports a world-readable one.
sums=$(cd "$tmp/made" && sha256sum -- *)
scripts/make-secrets.sh "$tmp/made" >/dev/null || fail "scripts/make-secrets.sh: a second run fails"
[[ $(cd "$tmp/made" && sha256sum -- *) == "$sums" ]] || fail "scripts/make-secrets.sh rewrote an existing file"
chmod 0444 "$tmp/made/jwt_secret"
if scripts/make-secrets.sh "$tmp/made" >/dev/null 2>&1; then
  fail "scripts/make-secrets.sh accepts a world-readable file"
fi
chmod 0400 "$tmp/made/jwt_secret"
# A file of line ends only is an empty secret to the service (it drops
# trailing line ends): refused as a provider key to copy, and as a file.
printf '\n\r\n' >"$tmp/blank-key"
if scripts/make-secrets.sh --byteplus-api-key-from "$tmp/blank-key" "$tmp/blank" >/dev/null 2>&1; then
  fail "scripts/make-secrets.sh copies a provider key of line ends only"
fi
[[ ! -e $tmp/blank/byteplus_api_key ]] || fail "scripts/make-secrets.sh wrote a blank byteplus_api_key"
mv "$tmp/made/jwt_secret" "$tmp/jwt.kept"
printf '\n' >"$tmp/made/jwt_secret"
chmod 0400 "$tmp/made/jwt_secret"
if scripts/make-secrets.sh "$tmp/made" >/dev/null 2>&1; then
  fail "scripts/make-secrets.sh accepts a jwt_secret of line ends only"
fi
mv -f "$tmp/jwt.kept" "$tmp/made/jwt_secret"
# The image's build context is an allow-list ('*' first, checked above):
# nothing under compose/ may be re-admitted.
if grep -q '^!compose' .dockerignore; then
  fail ".dockerignore re-admits compose/ (compose/secrets/ must stay out of the build context)"
fi
step "production compose files: secrets only as files (*_FILE), Swarm modes not world-readable"
python3 - "${made[*]}" <<'PY'
import pathlib, re, sys
import yaml

made = set(sys.argv[1].split())
# A variable whose value would be a secret (the names `heartalk describe`
# masks, roughly); *_FILE variables name files and are what we want.
SECRET = re.compile(r"SECRET|PASSWORD|PASSWD|API_?KEY|TOKEN|CREDENTIAL|WEBHOOK_URL|(^|_)(AUTH|KEY|PASS)(_|$)")
USERINFO = re.compile(r"\w+://[^/\s@]*@")
REQUIRED = ["JWT_SECRET_FILE", "HEARTALK_API_KEY_FILE", "BYTEPLUS_API_KEY_FILE", "REDIS_PASSWORD_FILE"]
user = re.search(r"^USER (\d+):(\d+)$", pathlib.Path("Dockerfile").read_text(), re.M)
uid, gid = user.groups() if user else ("?", "?")
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) if "=" in e else (e, "") for e in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}

for f in ("compose/docker-compose.prod.yml", "compose/docker-stack.yml"):
    doc = yaml.safe_load(pathlib.Path(f).read_text())
    swarm = f.endswith("docker-stack.yml")
    top = doc.get("secrets") or {}
    mounted = {}  # service -> {path in the container: source}
    for name, svc in doc["services"].items():
        where = f"{f}: services.{name}"
        mounted[name] = {}
        for s in svc.get("secrets") or []:
            s = {"source": s} if isinstance(s, str) else s
            target = s.get("target", s["source"])
            path = target if target.startswith("/") else f"/run/secrets/{target}"
            mounted[name][path] = s["source"]
            d = top.get(s["source"])
            # nginx's certificate and key: the operator's files under ./ssl/,
            # not make-secrets.sh's (the key is held to the mode rule below).
            tls = d is not None and str(d.get("file", "")).startswith(("./ssl/", "ssl/"))
            if d is None:
                errors.append(f"{where}: secret {s['source']} is not defined at the top level")
            elif not d.get("external") and not tls:
                p = pathlib.PurePosixPath(str(d.get("file", "")))
                check(str(p.parent) in ("secrets", "./secrets") and p.name in made,
                      f"{f}: secret {s['source']}: file {d.get('file')} must be ./secrets/<one of {sorted(made)}> (scripts/make-secrets.sh)")
            if swarm and not (tls and s["source"] == "tls_cert"):
                mode = s.get("mode")
                check(isinstance(mode, int) and mode & ~0o440 == 0,
                      f"{where}: secret {s['source']}: mode {oct(mode) if isinstance(mode, int) else mode} must be 0440 or stricter "
                      "(Swarm's default 0444 is world-readable: the service refuses it)")
                if name == "heartalk":
                    check((str(s.get("uid")), str(s.get("gid"))) == (uid, gid),
                          f"{where}: secret {s['source']}: uid/gid must be the image's user {uid}:{gid}")
        env = env_of(svc)
        for k, v in env.items():
            # (a boolean is no secret: GF_AUTH_ANONYMOUS_ENABLED)
            check(k.endswith("_FILE") or not SECRET.search(k) or v.lower() in ("true", "false"),
                  f"{where}: {k} puts a secret's value in the environment (mount it and set {k}_FILE)")
            check(not USERINFO.search(v), f"{where}: {k} carries credentials in a URL")
            if k.endswith("_FILE") and SECRET.search(k):
                check(v in mounted[name], f"{where}: {k}={v} is not a secret this service mounts")
            # Grafana reads a setting from a file only as GF_<SETTING>__FILE
            # (two underscores); GF_..._FILE would leave its default.
            check(not (k.startswith("GF_") and k.endswith("_FILE")) or k.endswith("__FILE"),
                  f"{where}: {k}: Grafana reads a file only through GF_<SETTING>__FILE (two underscores)")
        # No secret variable interpolated anywhere in the service (command,
        # healthcheck, labels...): `docker inspect` would show its value.
        for var in re.findall(r"(?<!\$)\$\{?([A-Z_][A-Z0-9_]*)", yaml.safe_dump(svc)):
            check(not SECRET.search(var) or var.endswith("_VERSION"),
                  f"{where}: interpolates ${{{var}}} (a secret's value in the file's output)")
    env = env_of(doc["services"]["heartalk"])
    for k in REQUIRED:
        check(k in env, f"{f}: services.heartalk: {k} missing")
    # Redis reads the password file the service gets, and nothing else.
    redis_cmd = yaml.safe_dump(doc["services"]["redis"].get("command"))
    paths = sorted(set(re.findall(r"/run/secrets/[\w./-]+", redis_cmd)))
    check(len(paths) == 1 and paths[0] in mounted["redis"]
          and "requirepass" in redis_cmd and "--requirepass" not in redis_cmd,
          f"{f}: services.redis: its command must give requirepass from the one secret file it mounts (found {paths})")
    if len(paths) == 1:
        check(mounted["redis"].get(paths[0]) == mounted["heartalk"].get(env.get("REDIS_PASSWORD_FILE")),
              f"{f}: Redis's password secret and the service's REDIS_PASSWORD_FILE differ")

if errors:
    print("\n".join("containers: FAILED: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
PY

step "compose/.env.example covers every variable and nothing else, with no secret values"
mapfile -t used < <(grep -hv '^[[:space:]]*#' compose/*.yml \
  | grep -oE '\$\{[A-Z_][A-Z0-9_]*' | cut -c3- | sort -u)
for var in "${used[@]}"; do
  grep -q "^$var=" "$env_example" || fail "compose uses \${$var} but compose/.env.example does not set it"
done
while IFS='=' read -r key value; do
  if [[ $key =~ (SECRET|PASSWORD|API_KEY)$ && -n $value && $value != replace-* ]]; then
    fail "compose/.env.example: $key must be empty or a replace-... placeholder, not a real value"
  fi
  # COMPOSE_PROJECT_NAME is compose's own; anything else unused is stale
  # (e.g. a secret that moved to a file).
  if [[ $key != COMPOSE_PROJECT_NAME && " ${used[*]} " != *" $key "* ]]; then
    fail "compose/.env.example sets $key, which no compose file uses"
  fi
done < <(grep -E '^[A-Z_]+=' "$env_example")

# ---- 4. nginx -----------------------------------------------------------------
step "nginx -t compose/nginx.conf"
mkdir -p "$tmp/nginx/ssl" "$tmp/nginx/cache" "$tmp/nginx/log"
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
  -keyout "$tmp/nginx/ssl/key.pem" -out "$tmp/nginx/ssl/cert.pem" 2>/dev/null
conf=$(<compose/nginx.conf)
# The same literal substitutions as tests/tests/nginx_front.rs; each must
# match, or the check would test something else than the shipped file.
substitute() {
  [[ $conf == *"$1"* ]] || fail "compose/nginx.conf no longer contains '$1'"
  conf=${conf//"$1"/"$2"}
}
# nginx -t binds the listen addresses: free unprivileged ports instead.
read -r http_port https_port < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
substitute 'listen 80;' "listen 127.0.0.1:$http_port;"
substitute 'listen 443 ssl' "listen 127.0.0.1:$https_port ssl"
substitute 'server heartalk:8001' 'server 127.0.0.1:8001'
substitute '/etc/nginx/ssl/' "$tmp/nginx/ssl/"
substitute '/var/cache/nginx/' "$tmp/nginx/cache/"
substitute '/var/log/nginx/' "$tmp/nginx/log/"
printf '%s\n' "$conf" >"$tmp/nginx/nginx.conf"
nginx -t -q -p "$tmp/nginx/" -e "$tmp/nginx/log/error.log" -c "$tmp/nginx/nginx.conf" \
  -g "pid $tmp/nginx/nginx.pid;"

# What a real nginx cannot show the end-to-end test: the service asks for
# no buffering itself (X-Accel-Buffering: no), so the stream routes must not
# depend on it, and keep-alive/forwarding settings are invisible to a client.
step "compose/nginx.conf: SSE routes, keep-alive upstream, forwarded headers, TLS"
python3 - compose/nginx.conf <<'PY'
import re, sys
conf = open(sys.argv[1]).read()
code = "\n".join(l.split("#", 1)[0] for l in conf.splitlines())
errors = []
def block(opening):
    i = code.find(opening)
    if i < 0:
        errors.append(f"no `{opening}` block")
        return ""
    depth, j = 0, code.index("{", i)
    for k in range(j, len(code)):
        depth += {"{": 1, "}": -1}.get(code[k], 0)
        if depth == 0:
            return code[j:k]
    return ""
def has(text, pattern, what):
    if not re.search(pattern, text):
        errors.append(what)
def seconds(v):
    m = re.fullmatch(r"(\d+)(s|m|h)?", v)
    return int(m.group(1)) * {"s": 1, None: 1, "m": 60, "h": 3600}[m.group(2)] if m else 0
for route in ("/api/v1/chat/stream", "/v1/chat/completions"):
    b = block(f"location = {route} ")
    has(b, r"\bproxy_buffering\s+off;", f"{route}: proxy_buffering off")
    has(b, r"\bproxy_cache\s+off;", f"{route}: proxy_cache off")
    m = re.search(r"\bproxy_read_timeout\s+(\w+);", b)
    if not m or seconds(m.group(1)) < 300:
        errors.append(f"{route}: proxy_read_timeout of at least 300s (SSE)")
has(block("upstream heartalk "), r"\bkeepalive\s+\d+;", "upstream: keepalive")
tls = block("server {\n        listen 443 ssl")
for pattern, what in [
    (r"proxy_http_version\s+1\.1;", "proxy_http_version 1.1"),
    (r'proxy_set_header\s+Connection\s+"";', 'proxy_set_header Connection ""'),
    (r"proxy_set_header\s+X-Forwarded-For\s+\$remote_addr;", "X-Forwarded-For set to $remote_addr (the client cannot forge it)"),
    (r"proxy_set_header\s+X-Forwarded-Proto\s+\$scheme;", "X-Forwarded-Proto"),
    (r"proxy_set_header\s+X-Request-ID\s+", "X-Request-ID"),
    (r"ssl_protocols\s+TLSv1\.2\s+TLSv1\.3;", "ssl_protocols TLSv1.2 TLSv1.3 only"),
    (r'add_header\s+Strict-Transport-Security\s+"max-age=\d{8,}', "HSTS of a year or more"),
]:
    has(tls, pattern, f"HTTPS server: {what}")
if re.search(r"ssl_ciphers\s+[^;]*\b(RC4|3DES|DES|MD5|NULL|EXPORT|CBC)\b", tls):
    errors.append("HTTPS server: weak ciphers in ssl_ciphers")
has(block("server {\n        listen 80;"), r"return\s+301\s+https://", "HTTP server: 301 to https")
if errors:
    print("\n".join("containers: FAILED: compose/nginx.conf: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
PY

# ---- 5. Kubernetes ------------------------------------------------------------
mapfile -t manifests < <(find kubernetes -maxdepth 1 -name '*.yaml' ! -name kustomization.yaml | sort)
((${#manifests[@]})) || fail "no manifests in kubernetes/"
step "kubernetes-validate -k $K8S_VERSION --strict ${manifests[*]}"
kubernetes-validate -k "$K8S_VERSION" --strict --quiet "${manifests[@]}"

step "kubernetes invariants"
python3 - "$tmp" <<'PY'
import pathlib, re, sys, tomllib
import yaml

tmp = pathlib.Path(sys.argv[1])
errors = []
def check(ok, msg):
    if not ok:
        errors.append(msg)

k8s = pathlib.Path("kubernetes")
docs = {}
for path in sorted(k8s.glob("*.yaml")):
    if path.name == "kustomization.yaml":
        continue
    for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
        if doc:
            docs[(doc["kind"], doc["metadata"]["name"])] = doc

# kustomization.yaml lists every manifest except the two documented ones.
kust = yaml.safe_load((k8s / "kustomization.yaml").read_text())
listed = set(kust["resources"])
unlisted = {"secret.example.yaml", "prometheus-adapter-rules.yaml"}
for path in k8s.glob("*.yaml"):
    if path.name != "kustomization.yaml" and path.name not in unlisted:
        check(path.name in listed, f"kustomization.yaml does not list {path.name}")
for name in listed:
    check((k8s / name).is_file(), f"kustomization.yaml lists missing {name}")
for name in unlisted:
    check(name not in listed, f"kustomization.yaml must not list {name}")

# The ConfigMap's files are the shipped ones.
cm = docs[("ConfigMap", "heartalk-config")]["data"]
for key, path in [("ecosystem.toml", "deploy/ecosystem.container.toml"),
                  ("keywords.json", "config/keywords.json")]:
    check(cm.get(key) == pathlib.Path(path).read_text(encoding="utf-8"),
          f"configmap.yaml {key} differs from {path}")

# Grace periods above the supervisor's kill_timeout.
toml = tomllib.loads(pathlib.Path("deploy/ecosystem.container.toml").read_text())
kill = toml["apps"][0].get("kill_timeout", "35s")
m = re.fullmatch(r"(\d+)s", str(kill))
check(m is not None, f"kill_timeout {kill!r}: expected whole seconds")
kill_s = int(m.group(1)) if m else 35

dep = docs[("Deployment", "heartalk")]
pod = dep["spec"]["template"]["spec"]
check(dep["spec"]["replicas"] == 2, "Deployment: 2 replicas")
check(pod["terminationGracePeriodSeconds"] > kill_s,
      f"terminationGracePeriodSeconds must exceed kill_timeout ({kill_s}s)")
check(pod["securityContext"].get("runAsNonRoot") is True, "Deployment: runAsNonRoot")
c = pod["containers"][0]
check(c["readinessProbe"]["httpGet"]["path"] == "/ready", "readiness must probe /ready")
check(c["livenessProbe"]["httpGet"]["path"] == "/health",
      "liveness must probe /health (not /api/v1/health: 503 on bad credentials)")
check(c["securityContext"].get("readOnlyRootFilesystem") is True, "readOnlyRootFilesystem")
check(c["securityContext"].get("allowPrivilegeEscalation") is False, "allowPrivilegeEscalation")
for key in ("requests", "limits"):
    check({"cpu", "memory"} <= set(c["resources"].get(key, {})), f"resources.{key}")
mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
vols = {v["name"]: v for v in pod["volumes"]}
logdir = toml["log"]["dir"]
sockdir = str(pathlib.PurePath(toml["supervisor"]["control_socket"]).parent)
for path in (logdir, sockdir):
    check(path in mounts and "emptyDir" in vols.get(mounts[path], {}),
          f"{path} must be an emptyDir (read-only root filesystem)")

# Secrets (issue #17): files from the heartalk-secrets Secret, never values
# in the environment. Each *_FILE names a key of a secret volume whose mode
# is 0440 or stricter (the default 0644 is world-readable: the service
# refuses it), readable through fsGroup; secret.example.yaml has exactly the
# keys the manifests read.
SECRET = re.compile(r"SECRET|PASSWORD|PASSWD|API_?KEY|TOKEN|CREDENTIAL|(^|_)(AUTH|KEY|PASS)(_|$)")
USERINFO = re.compile(r"\w+://[^/\s@]*@")
example_keys = set(docs[("Secret", "heartalk-secrets")]["stringData"])
read_keys = set()
def secret_files(kind, pod, c):
    """Checks container c of pod; returns (env, key_of) with key_of(path) the
    Secret key mounted at that path (None if none)."""
    vols = {v["name"]: v["secret"] for v in pod.get("volumes", []) if "secret" in v}
    check("fsGroup" in pod.get("securityContext", {}),
          f"{kind}: pod securityContext.fsGroup (the secret files are root:fsGroup, 0440)")
    for name, vol in vols.items():
        check(vol.get("secretName") == "heartalk-secrets", f"{kind}: volume {name}: secretName heartalk-secrets")
        modes = [vol.get("defaultMode", 0o644)] + [i["mode"] for i in vol.get("items", []) if "mode" in i]
        for mode in modes:
            check(mode & ~0o440 == 0,
                  f"{kind}: secret volume {name}: mode {oct(mode)} must be 0440 or stricter "
                  "(the default 0644 is world-readable: the service refuses it)")
    mounts = {m["mountPath"].rstrip("/"): m for m in c.get("volumeMounts", []) if m["name"] in vols}
    for path, m in mounts.items():
        check(m.get("readOnly") is True, f"{kind}: secret mount {path} must be readOnly")
    def key_of(path):
        for mp, m in mounts.items():
            if path.startswith(mp + "/"):
                rel, vol = path[len(mp) + 1:], vols[m["name"]]
                if "items" in vol:
                    return next((i["key"] for i in vol["items"] if i["path"] == rel), None)
                return rel
        return None
    for ef in c.get("envFrom", []):
        check("secretRef" not in ef, f"{kind}: envFrom secretRef puts every secret in the environment")
    env = {}
    for e in c.get("env", []):
        name, value = e["name"], str(e.get("value", ""))
        env[name] = value
        check("secretKeyRef" not in e.get("valueFrom", {}),
              f"{kind}: env {name} from a secretKeyRef (a secret's value in the environment; mount it)")
        check(name.endswith("_FILE") or not SECRET.search(name),
              f"{kind}: env {name} looks like a secret's value (mount it and set {name}_FILE)")
        check(not USERINFO.search(value), f"{kind}: env {name} carries credentials in a URL")
        if name.endswith("_FILE") and SECRET.search(name):
            key = key_of(value)
            check(key in example_keys, f"{kind}: {name}={value} is not a key of heartalk-secrets mounted here")
            read_keys.add(key)
    return env, key_of

env, key_of = secret_files("Deployment heartalk", pod, c)
for name in ("JWT_SECRET_FILE", "HEARTALK_API_KEY_FILE", "BYTEPLUS_API_KEY_FILE", "REDIS_PASSWORD_FILE"):
    check(name in env, f"Deployment heartalk: {name} missing")
# Redis: requirepass from the same key as the service's REDIS_PASSWORD_FILE.
redis_pod = docs[("StatefulSet", "redis")]["spec"]["template"]["spec"]
redis_c = redis_pod["containers"][0]
_, redis_key_of = secret_files("StatefulSet redis", redis_pod, redis_c)
redis_text = yaml.safe_dump([redis_c.get("command"), redis_c.get("args"),
                             redis_c.get("readinessProbe"), redis_c.get("livenessProbe")])
redis_paths = sorted(set(re.findall(r"/run/secrets/[\w./-]+", redis_text)))
check(len(redis_paths) == 1 and "requirepass" in redis_text and "--requirepass" not in redis_text,
      f"StatefulSet redis: requirepass must come from one mounted secret file (found {redis_paths})")
for path in redis_paths:
    key = redis_key_of(path)
    check(key is not None and key == key_of(env.get("REDIS_PASSWORD_FILE", "")),
          f"StatefulSet redis: {path} must be the key the service's REDIS_PASSWORD_FILE reads")
    read_keys.add(key)
check(example_keys == read_keys,
      f"secret.example.yaml keys {sorted(example_keys)} != keys the manifests read {sorted(k for k in read_keys if k)}")
heartalk_env = docs[("ConfigMap", "heartalk-env")]["data"]
for name in heartalk_env:
    check(name.endswith("_FILE") or not SECRET.search(name),
          f"configmap.yaml heartalk-env: {name} looks like a secret (secrets are files of heartalk-secrets)")

ing = docs[("Ingress", "heartalk")]
ann = ing["metadata"]["annotations"]
check(ann.get("nginx.ingress.kubernetes.io/proxy-buffering") == "off", "Ingress: proxy-buffering off")
check(int(ann.get("nginx.ingress.kubernetes.io/proxy-read-timeout", "0")) >= 3600,
      "Ingress: long proxy-read-timeout (SSE)")
paths = [p["path"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
check(not any(p in ("/", "/metrics") for p in paths), f"Ingress must not route / or /metrics: {paths}")

hpa = docs[("HorizontalPodAutoscaler", "heartalk")]["spec"]
check((hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10), "HPA: 2-10 replicas")
pods_metrics = {m["pods"]["metric"]["name"] for m in hpa["metrics"] if m["type"] == "Pods"}

# Compose: stop grace above kill_timeout too.
for f in ("compose/docker-compose.yml", "compose/docker-compose.prod.yml", "compose/docker-stack.yml"):
    svc = yaml.safe_load(pathlib.Path(f).read_text())["services"]["heartalk"]
    g = re.fullmatch(r"(\d+)s", str(svc.get("stop_grace_period", "10s")))
    check(g is not None and int(g.group(1)) > kill_s, f"{f}: stop_grace_period must exceed {kill_s}s")

# prometheus-adapter: the PromQL of every rule as a recording rule, with the
# adapter's template variables filled in as it fills them for a pods query.
adapter = yaml.safe_load(docs[("ConfigMap", "prometheus-adapter")]["data"]["config.yaml"])
records = []
for rule in adapter["rules"]:
    series = re.sub(r"\{.*", "", rule["seriesQuery"].strip("'"))
    name = rule["name"]["as"]
    expr = (rule["metricsQuery"].replace("<<.Series>>", series)
            .replace("<<.LabelMatchers>>", 'namespace="heartalk",pod=~"a|b"')
            .replace("<<.GroupBy>>", "pod"))
    records.append({"record": name, "expr": expr})
check({r["record"] for r in records} == pods_metrics,
      f"adapter rules {sorted(r['record'] for r in records)} != HPA Pods metrics {sorted(pods_metrics)}")
(tmp / "adapter.rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "adapter", "rules": records}]}))

if errors:
    print("\n".join("containers: FAILED: " + e for e in errors), file=sys.stderr)
    sys.exit(1)
PY

step "promtool: prometheus-adapter rules"
promtool check rules "$tmp/adapter.rules.yml" >/dev/null
# Pod a: 11 requests/s; latency buckets 50 % in (1, 2], 50 % in (2, 4], so
# p95 = 2 + 2 * (95 - 50) / 50 = 3.8 s. Pod b: no traffic, so 0 (not NaN).
cat >"$tmp/adapter.test.yml" <<'EOF'
rule_files: [adapter.rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'http_requests_total{namespace="heartalk",pod="a",route="/api/v1/chat/generate",status="200"}'
        values: '0+600x10'
      - series: 'http_requests_total{namespace="heartalk",pod="a",route="/api/v1/chat/generate",status="500"}'
        values: '0+60x10'
      - series: 'http_requests_total{namespace="heartalk",pod="b",route="/api/v1/chat/generate",status="200"}'
        values: '0+0x10'
      - series: 'http_requests_total{namespace="other",pod="a",route="/",status="200"}'
        values: '0+6000x10'
      - series: 'http_request_duration_seconds_bucket{namespace="heartalk",pod="a",le="1"}'
        values: '0+0x10'
      - series: 'http_request_duration_seconds_bucket{namespace="heartalk",pod="a",le="2"}'
        values: '0+50x10'
      - series: 'http_request_duration_seconds_bucket{namespace="heartalk",pod="a",le="4"}'
        values: '0+100x10'
      - series: 'http_request_duration_seconds_bucket{namespace="heartalk",pod="a",le="+Inf"}'
        values: '0+100x10'
      - series: 'http_request_duration_seconds_bucket{namespace="heartalk",pod="b",le="1"}'
        values: '0+0x10'
      - series: 'http_request_duration_seconds_bucket{namespace="heartalk",pod="b",le="+Inf"}'
        values: '0+0x10'
    promql_expr_test:
      - expr: http_requests_per_second
        eval_time: 5m
        exp_samples:
          - labels: 'http_requests_per_second{pod="a"}'
            value: 11
          - labels: 'http_requests_per_second{pod="b"}'
            value: 0
      - expr: http_request_duration_seconds_p95
        eval_time: 5m
        exp_samples:
          - labels: 'http_request_duration_seconds_p95{pod="a"}'
            value: 3.8
          - labels: 'http_request_duration_seconds_p95{pod="b"}'
            value: 0
EOF
(cd "$tmp" && promtool test rules adapter.test.yml >/dev/null) \
  || fail "prometheus-adapter rules do not yield the expected per-pod values (promtool test rules)"

# kubectl is optional (not installed by scripts/deps.sh): when present, also
# render the kustomization and validate the result.
if command -v kubectl >/dev/null && kubectl kustomize kubernetes >"$tmp/rendered.yaml" 2>"$tmp/kustomize.err"; then
  step "kubectl kustomize kubernetes | kubernetes-validate"
  kubernetes-validate -k "$K8S_VERSION" --strict --quiet "$tmp/rendered.yaml"
elif command -v kubectl >/dev/null; then
  fail "kubectl kustomize kubernetes failed: $(cat "$tmp/kustomize.err")"
else
  step "kubectl not installed: kustomize rendering skipped (the listing was checked above)"
fi

echo "containers: all checks passed"
