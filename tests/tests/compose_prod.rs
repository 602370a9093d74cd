//! `compose/docker-compose.prod.yml` for real, with Debian's `podman-compose`:
//! every service it has a Debian package for (nginx, the HearTalk image,
//! Redis, Prometheus, Alertmanager; the stand-ins `scripts/image.sh` makes
//! under the file's image names). Grafana has no Debian package, so the
//! `grafana` service is not started.
//!
//! The file and `compose/nginx.conf` are copied as shipped into a temp
//! directory laid out like the repository (`compose/` beside a link to
//! `monitoring/`), with secrets from `scripts/make-secrets.sh` and a
//! self-signed certificate; a small override file only slows the simulated
//! provider down so a stream lasts long enough to watch. Checked: every
//! container's health check passes, plain HTTP redirects to HTTPS, the
//! service reaches the password-protected Redis over the internal network,
//! a chat signed with the secret file's key answers over TLS (a forged one
//! is refused), an SSE stream through nginx arrives frame by frame, the
//! per-IP rate-limit key is the address nginx saw (not one the client
//! forged, nor nginx's own), no secret is in any container's environment
//! (Alertmanager's webhook URL comes from its secret file too), and
//! Prometheus scrapes the service and Alertmanager and knows its
//! Alertmanager.

mod helper;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use helper::*;
use serde_json::{Value, json};

/// Alertmanager's webhook (nothing listens: no alert fires in the test).
const WEBHOOK_URL: &str = "http://127.0.0.1:9/heartalk-alerts";

/// The services started: all but Grafana (no Debian package to stand in).
const SERVICES: [&str; 5] = ["nginx", "heartalk", "redis", "prometheus", "alertmanager"];

/// The production stack in a temp copy of the repository's layout.
struct Stack {
    project: String,
    dir: tempfile::TempDir,
    image: String,
    http: u16,
    https: u16,
    prometheus: u16,
    alertmanager: u16,
    grafana: u16,
    /// The subnet of the `edge` network (nginx <-> service).
    edge_subnet: String,
}

impl Stack {
    fn compose_dir(&self) -> PathBuf {
        self.dir.path().join("compose")
    }

    fn compose(&self, args: &[&str]) -> Output {
        Command::new("podman-compose")
            .current_dir(self.compose_dir())
            .env("CONTAINERS_CONF", podman_conf())
            .env("HEARTALK_IMAGE", &self.image)
            .env("HTTP_PORT", self.http.to_string())
            .env("HTTPS_PORT", self.https.to_string())
            .env("PROMETHEUS_PORT", self.prometheus.to_string())
            .env("ALERTMANAGER_PORT", self.alertmanager.to_string())
            .env("GRAFANA_PORT", self.grafana.to_string())
            .env("EDGE_SUBNET", &self.edge_subnet)
            // The variables the file requires (`${VAR:?}`). No backend or
            // provider runs here: the simulated provider answers, and the
            // history fetch fails fast (the chat goes on without history).
            .env("AI_PROVIDER_MODE", "simulated")
            .env("BYTEPLUS_AMI_CHAT_EP", "ep-test-chat")
            .env("BYTEPLUS_AMI_WORK_ASSISTANT_EP", "ep-test-work")
            .env("HEARTALK_BACKEND_URL", "http://127.0.0.1:9")
            .env("ALLOWED_ORIGINS", "https://heartalk.example.com")
            .args(["--project-name", &self.project])
            .args(["--file", "docker-compose.prod.yml", "--file", "test.yml"])
            .args(args)
            .output()
            .expect("run podman-compose")
    }

    fn container(&self, service: &str) -> String {
        format!("{}_{service}_1", self.project)
    }

    fn secret(&self, name: &str) -> String {
        let path = self.compose_dir().join("secrets").join(name);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            .trim_end()
            .to_string()
    }

    /// `curl -k` against nginx's HTTPS port, with extra header lines:
    /// (status, body).
    fn https(
        &self,
        method: &str,
        path: &str,
        headers: &[&str],
        body: Option<&Value>,
    ) -> (u16, String) {
        let mut cmd = Command::new("curl");
        cmd.args(["-sS", "-k", "--max-time", "30", "-X", method])
            .args(["-w", "\n%{http_code}"]);
        for h in headers {
            cmd.arg("-H").arg(h);
        }
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary"])
                .arg(b.to_string());
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{}{path}", self.https))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "000"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// GET on Prometheus's published port, the `data` of its answer.
    fn prometheus_api(&self, path: &str) -> Result<Value, String> {
        let addr = format!("127.0.0.1:{}", self.prometheus).parse().unwrap();
        let r = http_get(addr, path, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        if r.status != 200 {
            return Err(format!("{} {}", r.status, r.body));
        }
        Ok(r.json()["data"].clone())
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for service in SERVICES {
                let logs = podman(&["logs", "--tail", "20", &self.container(service)]);
                eprintln!(
                    "---- {service}:\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
        }
        let _ = self.compose(&["down", "--volumes"]);
        remove_compose_networks(&self.project);
    }
}

/// Creates the project's `edge` network first, as docs/deployment.md says
/// to under podman-compose 1.0 (which ignores `ipam`): podman picks a free
/// subnet, which becomes EDGE_SUBNET, the service's TRUSTED_PROXIES.
/// Returns (subnet, gateway); on failure the network is removed again.
fn create_edge_network(project: &str) -> (String, String) {
    let name = format!("{project}_edge");
    let label = format!("io.podman.compose.project={project}");
    let out = podman(&["network", "create", "--label", &label, &name]);
    assert!(
        out.status.success(),
        "podman network create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |f: &str| {
        let format = format!("{{{{range .Subnets}}}}{{{{.{f}}}}}{{{{end}}}}");
        let out = podman(&["network", "inspect", "--format", &format, &name]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let (subnet, gateway) = (field("Subnet"), field("Gateway"));
    if !subnet.contains('/') || gateway.parse::<std::net::IpAddr>().is_err() {
        remove_compose_networks(project);
        panic!("no subnet or gateway for {name}: {subnet:?} {gateway:?}");
    }
    (subnet, gateway)
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The repository's layout in a temp dir: compose/ with the shipped files,
/// secrets and a certificate, and monitoring/ linked.
fn lay_out(root: &Path) {
    let compose = root.join("compose");
    std::fs::create_dir_all(compose.join("ssl")).expect("mkdir ssl");
    for file in ["docker-compose.prod.yml", "nginx.conf"] {
        std::fs::copy(repo().join("compose").join(file), compose.join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    std::os::unix::fs::symlink(repo().join("monitoring"), root.join("monitoring"))
        .expect("link monitoring");
    // Only the simulated provider's pace: a stream lasts 2-4 s.
    std::fs::write(
        compose.join("test.yml"),
        "services:\n  heartalk:\n    environment:\n      SIMULATED_LATENCY_MS: \"50\"\n      SIMULATED_TOKENS_PER_SEC: \"20\"\n",
    )
    .expect("write test.yml");

    let ark_key = root.join("ark-key.txt");
    std::fs::write(&ark_key, "test-ark-key-not-used\n").expect("write ark key");
    let webhook = root.join("webhook-url.txt");
    std::fs::write(&webhook, format!("{WEBHOOK_URL}\n")).expect("write webhook URL");
    run_ok(
        Command::new(repo().join("scripts/make-secrets.sh"))
            .arg("--byteplus-api-key-from")
            .arg(&ark_key)
            .arg("--alert-webhook-url-from")
            .arg(&webhook)
            .arg(compose.join("secrets")),
    );
    run_ok(
        Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(compose.join("ssl/key.pem"))
            .arg("-out")
            .arg(compose.join("ssl/cert.pem")),
    );
}

#[test]
fn the_production_stack_serves_tls_streams_and_is_scraped() {
    let dir = tempfile::tempdir().expect("tempdir");
    lay_out(dir.path());
    let project = format!("htprod{}", std::process::id());
    let image = built_image();
    // Nothing between the network's creation and the guard can fail.
    let (edge_subnet, edge_gateway) = create_edge_network(&project);
    let stack = Stack {
        project,
        edge_subnet,
        dir,
        image,
        http: free_port(),
        https: free_port(),
        prometheus: free_port(),
        alertmanager: free_port(),
        grafana: free_port(),
    };
    let mut up = vec!["up", "--detach", "--no-build"];
    up.extend(SERVICES);
    let out = stack.compose(&up);
    assert!(
        out.status.success(),
        "podman-compose up: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let grafana = podman(&["container", "exists", &stack.container("grafana")]);
    assert!(!grafana.status.success(), "grafana was started");

    // Every container's own health check (podman runs them on request
    // only: no systemd timers here).
    for service in SERVICES {
        let name = stack.container(service);
        wait_until(
            &format!("{service} healthy"),
            Duration::from_secs(120),
            || healthcheck(&name),
        );
    }

    // Plain HTTP goes to HTTPS.
    let http: std::net::SocketAddr = format!("127.0.0.1:{}", stack.http).parse().unwrap();
    let redirect = http_get(http, "/api/v1/health", DEADLINE).expect("plain HTTP");
    assert_eq!(redirect.status, 301, "{}", redirect.body);
    assert!(
        redirect
            .header("location")
            .is_some_and(|l| l.starts_with("https://")),
        "{:?}",
        redirect.header("location")
    );

    // Over TLS: the service reached Redis (a password from the secret file,
    // a name resolved on the internal network).
    wait_until(
        "the service healthy with Redis",
        Duration::from_secs(60),
        || {
            let (code, body) = stack.https("GET", "/api/v1/health", &[], None);
            let v: Value =
                serde_json::from_str(&body).map_err(|e| format!("{code} {body}: {e}"))?;
            let cache = &v["data"]["services"]["cache"];
            if code == 200
                && cache["status"] == "healthy"
                && cache["backends"].to_string().contains("redis")
            {
                Ok(())
            } else {
                Err(format!("{code} {cache}"))
            }
        },
    );
    let noauth = podman(&["exec", &stack.container("redis"), "redis-cli", "ping"]);
    assert!(
        String::from_utf8_lossy(&noauth.stdout).contains("NOAUTH"),
        "Redis answered without its password: {}",
        String::from_utf8_lossy(&noauth.stdout)
    );

    // A chat signed with the secret file's key; a forged one is refused.
    let claims = json!({"userId": "prod-compose-user", "iat": now_unix(), "exp": now_unix() + 600});
    let token = jwt(&claims, &stack.secret("jwt_secret"));
    let chat = json!({"messages": [{"role": "user", "content": "hello through nginx"}]});
    let bearer = |t: &str| format!("Authorization: Bearer {t}");
    let path = "/api/v1/chat/generate";
    let (code, body) = stack.https("POST", path, &[&bearer(&token)], Some(&chat));
    assert_eq!(code, 200, "{body}");
    let forged = jwt(&claims, "not-the-production-secret");
    let (code, body) = stack.https("POST", path, &[&bearer(&forged)], Some(&chat));
    assert_eq!(code, 401, "{body}");

    // SSE through nginx, frame by frame: the first frame arrives long before
    // the last, and frames keep coming in between (a buffering proxy would
    // deliver them all at the end).
    let (status, err, frames) = curl_sse(
        Command::new("curl")
            // -N: curl writes what it gets at once. --compressed: the client
            // accepts gzip, as browsers do, which a stream must still not
            // get (compressing buffers it).
            .args([
                "-sS",
                "-k",
                "-N",
                "--compressed",
                "--fail",
                "--max-time",
                "30",
            ])
            .args(["-X", "POST", "-H", "Content-Type: application/json", "-H"])
            .arg(bearer(&token))
            .arg("--data-binary")
            .arg(json!({"messages": [{"role": "user", "content": "你好"}]}).to_string())
            .arg(format!(
                "https://127.0.0.1:{}/api/v1/chat/stream",
                stack.https
            )),
    );
    assert!(
        status.success(),
        "curl of the stream failed ({status}): {err}"
    );
    let kinds: Vec<String> = frames
        .iter()
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d).unwrap_or_else(|e| panic!("bad frame {d}: {e}"))["type"]
                .as_str()
                .unwrap_or("?")
                .to_string()
        })
        .collect();
    assert_eq!(
        kinds.last().map(String::as_str),
        Some("complete"),
        "{kinds:?}"
    );
    assert!(
        kinds.iter().filter(|k| *k == "content").count() >= 5,
        "{kinds:?}"
    );
    let times: Vec<Duration> = frames.iter().map(|(t, _)| *t).collect();
    assert_incremental(&times);

    // The per-IP limit of an anonymous path counts the address nginx saw
    // (from the host, the edge network's gateway), never one the client
    // wrote in X-Forwarded-For (nginx replaces the header), nor nginx's own
    // (which it would be if the service did not trust the edge network,
    // TRUSTED_PROXIES = EDGE_SUBNET).
    let (code, body) = stack.https(
        "GET",
        "/api/v1/models",
        &[
            "Authorization: Bearer not-checked-here",
            "X-Forwarded-For: 203.0.113.7",
        ],
        None,
    );
    assert_eq!(code, 200, "{body}");
    let keys = podman(&[
        "exec",
        "--env",
        &format!("REDISCLI_AUTH={}", stack.secret("redis_password")),
        &stack.container("redis"),
        "redis-cli",
        "--scan",
        "--pattern",
        "heartalk:rl:*",
    ]);
    let keys = String::from_utf8_lossy(&keys.stdout);
    assert!(
        keys.lines()
            .any(|k| k.ends_with(&format!(":{edge_gateway}"))),
        "no per-IP limit key for {edge_gateway}, the address nginx saw: {keys}"
    );
    assert!(
        !keys.contains("203.0.113.7"),
        "a client-written X-Forwarded-For became a rate-limit key: {keys}"
    );

    // No secret value in any container's environment (files only).
    let secrets: Vec<String> = [
        "jwt_secret",
        "heartalk_api_key",
        "redis_password",
        "byteplus_api_key",
        "alert_webhook_url",
        "grafana_admin_password",
    ]
    .iter()
    .map(|s| stack.secret(s))
    .collect();
    for service in SERVICES {
        let env = podman(&[
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            &stack.container(service),
        ]);
        let env = String::from_utf8_lossy(&env.stdout);
        assert!(env.len() > 2, "no environment for {service}");
        for (i, s) in secrets.iter().enumerate() {
            assert!(
                !env.contains(s.as_str()),
                "secret #{i} in {service}'s environment"
            );
        }
    }

    // Alertmanager (as nobody) read its webhook URL from the secret file:
    // the entrypoint rendered it into the config Alertmanager runs on.
    let rendered = podman(&[
        "exec",
        &stack.container("alertmanager"),
        "cat",
        "/tmp/alertmanager.yml",
    ]);
    let rendered = String::from_utf8_lossy(&rendered.stdout);
    assert!(
        rendered.contains(&format!("url: '{WEBHOOK_URL}'")),
        "the webhook URL from the secret file is not in Alertmanager's config:\n{rendered}"
    );

    // Prometheus scrapes the service (the fleet-wide numbers: workers up)
    // and Alertmanager, and sends alerts to that Alertmanager.
    wait_until(
        "Prometheus scraping every target",
        Duration::from_secs(90),
        || {
            let targets = stack.prometheus_api("/api/v1/targets")?;
            let up: Vec<String> = targets["activeTargets"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .filter(|t| t["health"] == "up")
                .map(|t| t["labels"]["job"].as_str().unwrap_or("?").to_string())
                .collect();
            if ["heartalk", "alertmanager", "prometheus"]
                .iter()
                .all(|j| up.iter().any(|u| u == j))
            {
                Ok(())
            } else {
                Err(format!("up: {up:?}; {targets}"))
            }
        },
    );
    wait_until(
        "the workers' numbers in Prometheus",
        Duration::from_secs(60),
        || {
            let data = stack.prometheus_api("/api/v1/query?query=sum(heartalk_worker_up)")?;
            let value = data["result"][0]["value"][1]
                .as_str()
                .unwrap_or("0")
                .to_string();
            match value.parse::<f64>() {
                Ok(n) if n >= 1.0 => Ok(()),
                _ => Err(format!("sum(heartalk_worker_up) = {data}")),
            }
        },
    );
    let managers = stack
        .prometheus_api("/api/v1/alertmanagers")
        .expect("alertmanagers");
    assert!(
        managers["activeAlertmanagers"]
            .to_string()
            .contains(":9093"),
        "{managers}"
    );
    let am: std::net::SocketAddr = format!("127.0.0.1:{}", stack.alertmanager).parse().unwrap();
    let healthy = http_get(am, "/-/healthy", DEADLINE).expect("Alertmanager");
    assert_eq!(healthy.status, 200, "{}", healthy.body);
}
