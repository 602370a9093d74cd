//! Shared plumbing for the end-to-end tests: start the real `heartalk`
//! binary on a temp config, follow its JSON event log, talk HTTP to it, and
//! make sure every process a test started is killed and reaped at the end.
//! Here: deadlines and polling, binaries, configs, tokens. By concern:
//! `supervisor` (a running `heartalk` and its log files), `http` (the
//! client), `service` (the real worker behind it), `load`, `metrics`,
//! `processes` (other children, reaped), `stub` (a recording HTTP server),
//! `podman` (the built image and podman), `sse_curl` (a stream read through
//! curl, frame by frame).
#![allow(dead_code)] // each test file uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod http;
mod load;
mod metrics;
mod podman;
mod processes;
mod service;
mod sse_curl;
mod stub;
mod supervisor;

#[allow(unused_imports)] // each test file uses a different subset
pub use http::*;
#[allow(unused_imports)]
pub use load::*;
#[allow(unused_imports)]
pub use metrics::*;
#[allow(unused_imports)]
pub use podman::*;
#[allow(unused_imports)]
pub use processes::*;
#[allow(unused_imports)]
pub use service::*;
#[allow(unused_imports)]
pub use sse_curl::*;
#[allow(unused_imports)]
pub use stub::*;
#[allow(unused_imports)]
pub use supervisor::*;

#[allow(unused_imports)] // each test file uses a different subset
pub use heartalk_e2e::{free_addr, free_port, repo};

/// Generous deadline for things that normally take milliseconds.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A built binary of this workspace (`heartalk`, `heartalk-worker`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe.parent().and_then(Path::parent).expect("target dir");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} not built: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The misbehaving test worker of this crate.
pub fn test_worker() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_test-worker"))
}

/// Polls `f` every 20 ms until it returns `Some`, or panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    wait_until(what, timeout, || f().ok_or_else(String::new))
}

/// Like [`wait_for`], but `f` says what is still wrong (`Err`), and the
/// panic after `timeout` says it too (its last answer).
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let start = Instant::now();
    loop {
        let wrong = match f() {
            Ok(v) => return v,
            Err(wrong) => wrong,
        };
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}{}{wrong}",
            if wrong.is_empty() { "" } else { ": " }
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A config with one app of the test worker.
pub fn test_worker_config(instances: u32, mode: &str, extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"tw\"\nscript = \"{}\"\nargs = [\"{mode}\"]\ninstances = {instances}\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        test_worker().display()
    )
}

/// A config with one app of the real worker.
pub fn real_worker_config(instances: &str, extra: &str) -> String {
    format!(
        "[[apps]]\nname = \"heartalk\"\nscript = \"{}\"\ninstances = {instances}\nlisten = \"127.0.0.1:0\"\n{extra}\n",
        workspace_bin("heartalk-worker").display()
    )
}

/// `root/app`, an application directory as the ops scripts read one: the
/// repository's `ecosystem.toml` and `config/keywords.json`.
pub fn app_dir(root: &Path) -> PathBuf {
    let app = root.join("app");
    std::fs::create_dir_all(app.join("config")).expect("mkdir app/config");
    for rel in ["ecosystem.toml", "config/keywords.json"] {
        std::fs::copy(repo().join(rel), app.join(rel))
            .unwrap_or_else(|e| panic!("copy {rel}: {e}"));
    }
    app
}

/// Writes a secret file as an operator should replace one: `body` in a new
/// file with `mode`, renamed over `path` (no worker reads it half written).
pub fn write_secret_file(path: &Path, body: &str, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let next = path.with_extension("next");
    std::fs::write(&next, body).expect("write the secret");
    std::fs::set_permissions(&next, std::fs::Permissions::from_mode(mode)).expect("chmod");
    std::fs::rename(&next, path).expect("rename the secret into place");
}

/// The JWT secret every pipeline test configures.
pub const SECRET: &str = "test-secret";

/// The internal API key `Service` configures when a test sets none.
pub const API_KEY: &str = "test-api-key";

/// An HS256 token for `claims`, signed with `secret`.
pub fn jwt(claims: &Value, secret: &str) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()).expect("hmac key"),
    )
    .expect("encode jwt")
}

pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// API.md §15's `T`: `{userId:"test-user-123", exp:now+3600}`.
pub fn user_token() -> String {
    jwt(
        &serde_json::json!({"userId": "test-user-123", "exp": now_unix() + 3600}),
        SECRET,
    )
}

/// `config` with `sections` (top-level tables such as `[log]` or
/// `[supervisor]`, with their keys) put ahead of its first `[[apps]]`,
/// where TOML reads them as tables of their own rather than keys of an app.
/// Panics when `config` has no `[[apps]]`.
pub fn before_apps(config: &str, sections: &str) -> String {
    assert!(config.contains("[[apps]]"), "no [[apps]] in {config:?}");
    config.replacen(
        "[[apps]]",
        &format!("{}\n\n[[apps]]", sections.trim_end()),
        1,
    )
}
