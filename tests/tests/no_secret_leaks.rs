//! Nothing leaks (docs/security.md): a full run with every secret in a
//! file — the JWT secret and its previous one, the internal API key and its
//! previous one, the Ark API key, Redis's URL with its password — plus a
//! backend URL with a password that cannot be reached, a Redis that dies
//! (its warnings name the URL), a reload and a restart.
//! Then every output is searched for every secret value: every answer's
//! body (errors included), the supervisor's stdout and stderr, the log
//! files, `heartalk logs`, `/api/v1/health`,
//! `/metrics`, `heartalk status` and `describe` (text and JSON), and the
//! environment and command line of the supervisor and every worker.
//!
//! Each secret is also shown to have been used (the Ark mock saw its key,
//! Redis answered with its password, tokens signed with either JWT secret
//! and requests with either key were served, a URL was logged masked), so
//! the search cannot pass because nothing happened.

mod helper;

use std::path::Path;
use std::time::Duration;

use heartalk_e2e::mock_ark::MockArk;
use heartalk_e2e::redis_server::RedisServer;
use helper::*;
use serde_json::json;

const JWT: &str = "leakcheck-jwt-current-9f1";
const JWT_OLD: &str = "leakcheck-jwt-previous-4c2";
const KEY: &str = "leakcheck-apikey-current-77a";
const KEY_OLD: &str = "leakcheck-apikey-previous-e05";
const ARK_KEY: &str = "leakcheck-ark-key-31d";
const REDIS_PW: &str = "leakcheck-redis-pw-b8e";
const BACKEND_PW: &str = "leakcheck-backend-url-pw-6aa";

fn secret(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    write_secret_file(&path, &format!("{body}\n"), 0o400);
    path.display().to_string()
}

fn text_of(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn no_output_of_a_full_run_holds_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ark = MockArk::start();
    let mut redis = RedisServer::options().password(REDIS_PW).start();
    // Port 1: nothing listens there (a free port could be taken meanwhile).
    let closed = 1;
    let env = [
        ("JWT_SECRET_FILE", secret(d, "jwt", JWT)),
        ("JWT_SECRET_PREVIOUS_FILE", secret(d, "jwt_old", JWT_OLD)),
        ("HEARTALK_API_KEY_FILE", secret(d, "key", KEY)),
        (
            "HEARTALK_API_KEY_PREVIOUS_FILE",
            secret(d, "key_old", KEY_OLD),
        ),
        ("BYTEPLUS_API_KEY_FILE", secret(d, "ark", ARK_KEY)),
        (
            "REDIS_URL_FILE",
            secret(
                d,
                "redis_url",
                &format!("redis://:{REDIS_PW}@127.0.0.1:{}/0", redis.port()),
            ),
        ),
        (
            "HEARTALK_BACKEND_URL",
            format!("http://svc:{BACKEND_PW}@127.0.0.1:{closed}"),
        ),
        ("HEALTH_CHECK_INTERVAL", "200".into()),
        ("AI_PROVIDER_MODE", "live".into()),
        ("BYTEPLUS_BASE_URL", ark.base_url()),
        ("BYTEPLUS_AMI_CHAT_EP", "ep-chat".into()),
        ("BYTEPLUS_AMI_WORK_ASSISTANT_EP", "ep-work".into()),
        ("NODE_ENV", "production".into()),
        (
            "KEYWORDS_CONFIG",
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config/keywords.json")
                .display()
                .to_string(),
        ),
    ];
    let mut extra = String::from("[apps.env]\n");
    for (k, v) in &env {
        extra.push_str(&format!("{k} = {v:?}\n"));
    }
    let config = before_apps(&real_worker_config("2", &extra), "[log]\nstdout = true\n");
    let mut sup = Supervisor::start(&config);
    let addr = sup.addr();
    sup.wait_ready(2);

    // Use every secret; every answer's body is searched too.
    let mut answers: Vec<String> = Vec::new();
    let user = jwt(&json!({"userId": "u1", "exp": now_unix() + 600}), JWT);
    let user_old = jwt(&json!({"userId": "u2", "exp": now_unix() + 600}), JWT_OLD);
    let chat = json!({"messages": [{"role": "user", "content": "hello there"}]});
    let mut answer = |r: Response, status: u16| {
        assert_eq!(r.status, status, "{}", r.body);
        answers.push(r.body);
    };
    answer(
        post_json(addr, "/api/v1/chat/generate", Some(&user), &chat),
        200,
    );
    answer(
        post_json(addr, "/api/v1/chat/stream", Some(&user_old), &chat),
        200,
    );
    assert_eq!(
        ark.requests()[0]["headers"]["authorization"],
        format!("Bearer {ARK_KEY}")
    );
    answer(internal_get(addr, JWT, KEY), 200);
    answer(internal_get(addr, JWT_OLD, KEY_OLD), 200);
    answer(internal_get(addr, JWT, "wrong-key"), 401);
    let wrong = jwt(
        &json!({"userId": "u3", "exp": now_unix() + 600}),
        "not-the-secret",
    );
    answer(
        post_json(addr, "/api/v1/chat/generate", Some(&wrong), &chat),
        401,
    );
    // A legacy body: its history is fetched from the (unreachable) backend.
    let legacy = json!({"conversation_id": "7", "message": "hi", "user_id": "u1"});
    answer(
        post_json(addr, "/api/v1/chat/generate", Some(&user), &legacy),
        200,
    );
    // The provider failing: its error answer.
    ark.set(heartalk_e2e::mock_ark::Behavior::server_error());
    let failed = post_json(
        addr,
        "/api/v1/chat/generate",
        Some(&user),
        &json!({"messages": [{"role": "user", "content": "make the provider fail"}]}),
    );
    assert!(failed.status >= 500, "{}", failed.body);
    answers.push(failed.body);
    ark.set(heartalk_e2e::mock_ark::Behavior::success());
    wait_until(
        "Redis up with the password from the file",
        DEADLINE,
        || match metric(addr, "ai_redis_up", "") {
            Some(v) if v >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    // Redis dies: the workers warn, naming the URL.
    redis.kill();
    let r = post_json(
        addr,
        "/api/v1/chat/generate",
        Some(&user),
        &json!({"messages": [{"role": "user", "content": "with Redis gone"}]}),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    answers.push(r.body);
    let out = sup.cli(&["reload"]);
    text_of(&out);
    let out = sup.cli(&["restart"]);
    text_of(&out);
    let log_dir = sup.log_dir();
    wait_until("the masked Redis URL in the log", DEADLINE, || {
        let logs = read_log_lines(&log_dir).join("\n");
        if logs.contains("redis://***@127.0.0.1") {
            Ok(())
        } else {
            Err("no masked Redis URL logged yet".to_string())
        }
    });

    // Gather every output.
    let mut outputs: Vec<(String, String)> = Vec::new();
    let health = http_get(addr, "/api/v1/health", Duration::from_secs(5)).unwrap();
    outputs.push(("health".into(), health.body));
    outputs.push(("the answers".into(), answers.join("\n")));
    let metrics = http_get(addr, "/metrics", Duration::from_secs(10)).unwrap();
    assert_eq!(metrics.status, 200);
    outputs.push(("metrics".into(), metrics.body));
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["describe", "heartalk"],
        &["describe", "heartalk", "--json"],
    ] {
        outputs.push((args.join(" "), text_of(&sup.cli(args))));
    }
    let logs_verb = std::process::Command::new(workspace_bin("heartalk"))
        .args(["logs", "-n", "100000", "--raw", "-c"])
        .arg(sup.config_path())
        .output()
        .unwrap();
    outputs.push(("heartalk logs".into(), text_of(&logs_verb)));
    let mut pids = vec![sup.pid()];
    pids.extend(sup.worker_pids());
    assert_eq!(pids.len(), 3, "{pids:?}");
    for pid in pids {
        for what in ["environ", "cmdline"] {
            let raw = std::fs::read(format!("/proc/{pid}/{what}")).unwrap();
            outputs.push((
                format!("/proc/{pid}/{what}"),
                String::from_utf8_lossy(&raw).into(),
            ));
        }
    }
    sup.signal(nix::sys::signal::Signal::SIGTERM);
    sup.wait_exit(Duration::from_secs(60));
    outputs.push(("log files".into(), read_log_lines(&log_dir).join("\n")));
    outputs.push(("supervisor stdout".into(), sup.stdout_text()));
    outputs.push(("supervisor stderr".into(), sup.stderr()));

    let total: usize = outputs.iter().map(|(_, t)| t.len()).sum();
    assert!(total > 10_000, "too little output to search: {total} bytes");
    let mut found = Vec::new();
    for (name, text) in &outputs {
        for value in [JWT, JWT_OLD, KEY, KEY_OLD, ARK_KEY, REDIS_PW, BACKEND_PW] {
            // The backend URL is set as a plain variable (it is not one of
            // the `NAME_FILE` secrets): its own environment is its place.
            let where_set = value == BACKEND_PW && name.ends_with("/environ");
            if text.contains(value) && !where_set {
                let at = text.find(value).unwrap();
                let from = text[..at]
                    .char_indices()
                    .rev()
                    .nth(120)
                    .map_or(0, |(i, _)| i);
                found.push(format!("{value} in {name}: …{}…", &text[from..at]));
            }
        }
    }
    assert!(found.is_empty(), "secrets leaked:\n{}", found.join("\n"));
}
