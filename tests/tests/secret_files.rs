//! Secrets from `NAME_FILE` (docs/security.md): the real worker reads its
//! secrets from files (a trailing newline is fine; Redis's password from
//! `REDIS_PASSWORD_FILE` reaches a real `requirepass` server), a reload
//! reads them anew, and bad secrets stop everything before a worker
//! starts: both `NAME` and `NAME_FILE`, a world-readable, missing or empty
//! file, production without the secrets → `heartalk check` and `heartalk
//! run` exit 64 naming every variable and path; a reload or restart with a
//! bad file is refused and the running workers keep serving; a worker
//! respawned after a crash that meets a bad file exits 64 (`refused`) and
//! its slot recovers once the file is fixed.

mod helper;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;

use heartalk_e2e::redis_server::RedisServer;
use helper::*;
use serde_json::json;

/// Writes `body` to `dir/name` with `mode` ([`write_secret_file`]);
/// returns the path as text.
fn secret(dir: &Path, name: &str, body: &str, mode: u32) -> String {
    let path = dir.join(name);
    write_secret_file(&path, body, mode);
    path.display().to_string()
}

fn token(secret: &str) -> String {
    jwt(
        &json!({"userId": "file-user", "exp": now_unix() + 3600}),
        secret,
    )
}

/// `GET /api/v1/translate/languages` (a user endpoint) with `token`.
fn languages(addr: SocketAddr, token: &str) -> Response {
    get_auth(addr, "/api/v1/translate/languages", token)
}

fn heartalk(args: &[&str]) -> std::process::Output {
    Command::new(workspace_bin("heartalk"))
        .args(args)
        .output()
        .expect("run heartalk")
}

#[test]
fn bad_secrets_are_exit_64_with_every_error_before_any_worker() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let both = secret(d, "jwt", "a\n", 0o400);
    let open = secret(d, "api", "b\n", 0o644);
    let empty = secret(d, "ark", "\n", 0o400);
    let missing = d.join("nowhere").display().to_string();
    let extra = format!(
        "[apps.env]\nJWT_SECRET = \"direct-value-7x\"\nJWT_SECRET_FILE = {both:?}\nHEARTALK_API_KEY_FILE = {open:?}\nBYTEPLUS_API_KEY_FILE = {empty:?}\nREDIS_URL_FILE = {missing:?}\n"
    );
    let config = test_worker_config(1, "serve", &extra);
    let file = d.join("ecosystem.toml");
    std::fs::write(&file, &config).unwrap();

    let out = heartalk(&["check", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    let expected = [
        "app `tw`: JWT_SECRET and JWT_SECRET_FILE are both set".to_string(),
        format!("HEARTALK_API_KEY_FILE={open}: readable by every user (mode 0644)"),
        format!("BYTEPLUS_API_KEY_FILE={empty}: the file is empty"),
        format!("REDIS_URL_FILE={missing}: cannot read it"),
    ];
    for want in &expected {
        assert!(
            stderr.contains(want.as_str()),
            "{want:?} missing in {stderr}"
        );
    }
    assert!(
        !stderr.contains("direct-value-7x"),
        "a secret value was printed: {stderr}"
    );

    let mut sup = Supervisor::start(&config);
    let status = sup.wait_exit(DEADLINE);
    assert_eq!(status.code(), Some(64), "{}", sup.stderr());
    for want in &expected {
        assert!(
            sup.stderr().contains(want.as_str()),
            "{want:?} missing in {}",
            sup.stderr()
        );
    }
    assert!(sup.spawned_pids().is_empty(), "a worker was started");
}

#[test]
fn production_needs_its_secrets_from_either_source() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ecosystem.toml");
    std::fs::write(
        &file,
        test_worker_config(1, "serve", "[apps.env]\nNODE_ENV = \"production\"\n"),
    )
    .unwrap();
    let out = heartalk(&["check", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(
        stderr.contains("JWT_SECRET (or JWT_SECRET_FILE) is required with NODE_ENV=production"),
        "{stderr}"
    );
    assert!(
        stderr.contains("HEARTALK_API_KEY (or HEARTALK_API_KEY_FILE) is required"),
        "{stderr}"
    );
    // --config-only lints the file where the secrets are not (CI): ok,
    // saying the secrets were not checked; a broken file still fails.
    let out = heartalk(&["check", "--config-only", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("secrets not checked"), "{stdout}");
    let broken = dir.path().join("broken.toml");
    std::fs::write(&broken, "[[apps]]\nname = 7\n").unwrap();
    let out = heartalk(&["check", "--config-only", broken.to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let jwt = secret(dir.path(), "jwt", "j\n", 0o440);
    let key = secret(dir.path(), "key", "k\n", 0o400);
    std::fs::write(
        &file,
        test_worker_config(
            1,
            "serve",
            &format!("[apps.env]\nNODE_ENV = \"production\"\nJWT_SECRET_FILE = {jwt:?}\nHEARTALK_API_KEY_FILE = {key:?}\n"),
        ),
    )
    .unwrap();
    let out = heartalk(&["check", file.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_worker_reads_its_secrets_from_files_and_a_reload_reads_them_again() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let redis = RedisServer::options().password("redis-file-pw").start();
    let jwt_file = secret(d, "jwt", "first-file-secret\n", 0o400);
    let key_file = secret(d, "key", "file-api-key\n", 0o440);
    let redis_pw = secret(d, "redis", "redis-file-pw\n", 0o400);
    let redis_url = format!("redis://127.0.0.1:{}/0", redis.port());
    let svc = Service::start(
        2,
        &[
            ("JWT_SECRET_FILE", &jwt_file),
            ("HEARTALK_API_KEY_FILE", &key_file),
            ("REDIS_URL", &redis_url),
            ("REDIS_PASSWORD_FILE", &redis_pw),
            ("SIMULATED_LATENCY_MS", "0"),
        ],
    );
    assert_eq!(languages(svc.addr, &token("first-file-secret")).status, 200);
    let refused = languages(svc.addr, &token(SECRET));
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(refused.json()["code"], "INVALID_TOKEN");
    // The password from the file opened Redis (requirepass is on).
    wait_until("Redis in the cache backends", DEADLINE, || {
        let cache = svc.cache_health();
        let backends = cache["backends"].to_string();
        if backends.contains("redis") && svc.redis_up() == Some(1.0) {
            Ok(())
        } else {
            Err(format!("{cache} redis_up={:?}", svc.redis_up()))
        }
    });
    // The worker's environment names the files, never the values.
    for pid in svc.sup.worker_pids() {
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let environ = String::from_utf8_lossy(&environ);
        assert!(
            environ.contains(&format!("JWT_SECRET_FILE={jwt_file}")),
            "{environ}"
        );
        // Another local user cannot read it at all.
        let other = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(format!("/proc/{pid}/environ"))
            .output()
            .expect("setpriv");
        assert!(
            !other.status.success()
                && String::from_utf8_lossy(&other.stderr).contains("Permission denied"),
            "uid 65534 read worker {pid}'s environment (or setpriv failed): {}",
            String::from_utf8_lossy(&other.stderr)
        );
        for value in ["first-file-secret", "file-api-key", "redis-file-pw"] {
            assert!(
                !environ.contains(value),
                "{value} in worker {pid}'s environment"
            );
        }
    }

    // A new value in the file is read by the reload's workers.
    secret(d, "jwt", "second-file-secret\n", 0o400);
    let out = svc.sup.cli(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("the new secret in force", DEADLINE, || {
        let (new, old) = (
            languages(svc.addr, &token("second-file-secret")).status,
            languages(svc.addr, &token("first-file-secret")).status,
        );
        if (new, old) == (200, 401) {
            Ok(())
        } else {
            Err(format!("new {new}, old {old}"))
        }
    });

    // A world-readable file refuses the reload and the restart; the
    // running workers keep the secret they read.
    secret(d, "jwt", "third-file-secret\n", 0o644);
    let out = svc.sup.cli(&["reload"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "JWT_SECRET_FILE={jwt_file}: readable by every user"
        )),
        "{said}"
    );
    let out = svc.sup.cli(&["restart"]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("readable by every user"), "{said}");
    assert_eq!(
        languages(svc.addr, &token("second-file-secret")).status,
        200
    );
    assert!(!said.contains("third-file-secret") && !svc.log().contains("third-file-secret"));
}

/// A worker respawned after a crash is not checked by the supervisor
/// first: it meets a world-readable file itself, exits 64 (`refused` in
/// `status`, not `crash`), is restarted with the crash backoff, and its
/// slot comes back by itself once the file is fixed.
#[test]
fn a_respawn_that_meets_a_bad_file_is_refused_and_recovers_once_it_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let jwt_file = secret(d, "jwt", "first-file-secret\n", 0o400);
    let svc = Service::start(
        2,
        &[
            ("JWT_SECRET_FILE", &jwt_file),
            ("SIMULATED_LATENCY_MS", "0"),
        ],
    );
    let pids = svc.sup.worker_pids();
    secret(d, "jwt", "first-file-secret\n", 0o644);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pids[0]),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let refused = wait_for("a respawn refusing the file", DEADLINE, || {
        svc.sup
            .events("worker_exited")
            .into_iter()
            .find(|e| e["reason"] == "refused")
    });
    assert_eq!(refused["code"], 64, "{refused}");
    let why = format!("JWT_SECRET_FILE={jwt_file}: readable by every user");
    wait_for("the worker's reason in the log", DEADLINE, || {
        svc.log().contains(&why).then_some(())
    });
    let slot0 = &svc.sup.status()["apps"][0]["workers"][0];
    assert_ne!(slot0["state"], "online", "{slot0}");

    secret(d, "jwt", "first-file-secret\n", 0o400);
    wait_until("the slot back online", DEADLINE, || {
        let status = svc.sup.status();
        let workers = status["apps"][0]["workers"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if workers.len() == 2 && workers.iter().all(|w| w["state"] == "online") {
            Ok(())
        } else {
            Err(format!("{workers:?}"))
        }
    });
    let slot0 = &svc.sup.status()["apps"][0]["workers"][0];
    assert_eq!(slot0["last_exit"]["reason"], "refused", "{slot0}");
}
