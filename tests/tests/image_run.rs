//! The image built from the real Dockerfile (`scripts/image.sh`), run with
//! podman as compose and Kubernetes run it: read-only root filesystem, the
//! two named volumes (`/run/heartalk`, `/var/log/heartalk`), secrets as
//! files under `/run/secrets`, the port published on 127.0.0.1 only.
//!
//! It becomes healthy by its own HEALTHCHECK (`podman healthcheck run`),
//! runs as 65532 with the supervisor as PID 1 and no shell, answers a chat
//! signed with the secret from the file, reloads on `podman kill -s HUP`
//! with no failed request under load, and stops on `podman stop` with exit
//! 0 well inside the 45 s `stop_grace_period`. Without its secrets it
//! refuses to start, saying which.
//!
//! The image is `$HEARTALK_IMAGE` (scripts/test.sh builds it first), or is
//! built here by `scripts/image.sh`.

mod helper;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use helper::*;
use serde_json::json;

const SECRET_VALUE: &str = "image-test-jwt-secret";
const KEY_VALUE: &str = "image-test-api-key";

/// A container and its volumes, removed on drop (whatever the test's
/// outcome).
struct Container {
    name: String,
    volumes: Vec<String>,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
        for v in &self.volumes {
            let _ = podman(&["volume", "rm", "--force", v]);
        }
    }
}

/// Secret files as compose's `secrets:` mounts them: owned by the image's
/// user, mode 0440.
fn secrets_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, value) in [
        ("jwt_secret", SECRET_VALUE),
        ("heartalk_api_key", KEY_VALUE),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, format!("{value}\n")).unwrap();
        std::os::unix::fs::chown(&path, Some(65532), Some(65532)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
    }
    dir
}

fn run(image: &str, secrets: &Path, port: u16) -> Container {
    let name = format!("heartalk-test-{}-{port}", std::process::id());
    let volumes = vec![format!("{name}-run"), format!("{name}-logs")];
    let container = Container {
        name: name.clone(),
        volumes: volumes.clone(),
    };
    podman_ok(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--read-only",
        "--volume",
        &format!("{}:/run/heartalk", volumes[0]),
        "--volume",
        &format!("{}:/var/log/heartalk", volumes[1]),
        "--volume",
        &format!("{}:/run/secrets:ro", secrets.display()),
        "--env",
        "JWT_SECRET_FILE=/run/secrets/jwt_secret",
        "--env",
        "HEARTALK_API_KEY_FILE=/run/secrets/heartalk_api_key",
        "--env",
        "SIMULATED_LATENCY_MS=0",
        "--publish",
        &format!("127.0.0.1:{port}:8001"),
        image,
    ]);
    container
}

#[test]
fn the_image_runs_as_compose_and_kubernetes_run_it() {
    let image = built_image();
    let secrets = secrets_dir();
    let port = free_port();
    let started = Instant::now();
    let c = run(&image, secrets.path(), port);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();

    // Healthy by the image's own HEALTHCHECK (`heartalk health`).
    wait_until(
        "podman healthcheck run passes",
        Duration::from_secs(60),
        || {
            healthcheck(&c.name).map_err(|e| {
                let logs = podman(&["logs", "--tail", "5", &c.name]);
                format!("{e} / logs: {}", String::from_utf8_lossy(&logs.stdout))
            })
        },
    );
    eprintln!(
        "healthy {} ms after podman run",
        started.elapsed().as_millis()
    );

    // The supervisor is PID 1, every process runs as 65532.
    let top = podman_ok(&["top", &c.name, "pid", "user", "args"]);
    let rows: Vec<Vec<&str>> = top
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(
        rows.iter()
            .any(|r| r[0] == "1" && r[2..].join(" ").starts_with("heartalk run")),
        "{top}"
    );
    assert!(rows.len() >= 2, "no worker: {top}");
    assert!(
        rows.iter().all(|r| r[1] == "65532" || r[1] == "nonroot"),
        "{top}"
    );
    // No shell to exec into.
    for shell in ["/bin/sh", "sh", "/bin/bash"] {
        assert!(
            !podman(&["exec", &c.name, shell, "-c", "true"])
                .status
                .success(),
            "{shell} ran in the image"
        );
    }
    // The secret came from the file: a token signed with it is served.
    let token = jwt(
        &json!({"userId": "image-user", "exp": now_unix() + 600}),
        SECRET_VALUE,
    );
    let chat = json!({"messages": [{"role": "user", "content": "hello"}]});
    let r = post_json(addr, "/api/v1/chat/generate", Some(&token), &chat);
    assert_eq!(r.status, 200, "{}", r.body);
    let forged = jwt(&json!({"userId": "x", "exp": now_unix() + 600}), "other");
    assert_eq!(
        post_json(addr, "/api/v1/chat/generate", Some(&forged), &chat).status,
        401
    );

    // SIGHUP through podman: a reload, no failed request under load.
    let load = Load::start(addr, 4, "/api/v1/health");
    load.wait_more(200);
    podman_ok(&["kill", "--signal", "HUP", &c.name]);
    wait_until("reload_committed in the container's log", DEADLINE, || {
        let logs = podman(&["logs", &c.name]);
        if String::from_utf8_lossy(&logs.stdout).contains("\"event\":\"reload_committed\"") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    });
    load.wait_more(200);
    load.finish_clean();

    // podman stop: SIGTERM, a drain, exit 0 well inside the 45 s grace.
    let stop = Instant::now();
    podman_ok(&["stop", "--time", "45", &c.name]);
    let took = stop.elapsed();
    let code = podman_ok(&["inspect", "--format", "{{.State.ExitCode}}", &c.name]);
    assert_eq!(code, "0", "exit code");
    assert!(took < Duration::from_secs(20), "stop took {took:?}");
    eprintln!("stopped in {} ms", took.as_millis());
}

#[test]
fn without_its_secrets_the_image_refuses_to_start() {
    let image = built_image();
    let name = format!("heartalk-test-nosecret-{}", std::process::id());
    let _c = Container {
        name: name.clone(),
        volumes: Vec::new(),
    };
    let out = podman(&["run", "--name", &name, "--read-only", &image]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(64), "{said}");
    assert!(
        said.contains("JWT_SECRET (or JWT_SECRET_FILE) is required"),
        "{said}"
    );
}
