//! A JWT secret and an internal API key rotated under load with no failed
//! request (docs/security.md, docs/configuration.md "Rotating the JWT
//! secret"): the secrets live in files of one secret per line, the first
//! one signing, and each step rewrites the files and runs `heartalk
//! reload`. Clients start using the new secret only once every worker
//! accepts it, and stop using the old one before it is dropped, as users
//! do when the rotation waits out the longest token lifetime.
//!
//! Steps: `old` → `old,new` (new accepted) → `new,old` (new signs) →
//! `new`. Load runs throughout, on a user endpoint and on the internal
//! endpoint (X-API-Key plus a service JWT); afterwards the dropped secret
//! and key are refused. And what the worker sends the backend follows the
//! first line: signed with the old secret and key until the swap, with the
//! new ones after it.

mod helper;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use helper::*;
use serde_json::json;

const OLD: &str = "rotation-old-secret";
const NEW: &str = "rotation-new-secret";
const OLD_KEY: &str = "rotation-old-key";
const NEW_KEY: &str = "rotation-new-key";

/// Replaces the file as an operator should ([`write_secret_file`], 0400):
/// one secret per line.
fn write_secret(path: &Path, lines: &[&str]) {
    write_secret_file(path, &format!("{}\n", lines.join("\n")), 0o400);
}

/// What clients currently hold: a version number and the (JWT secret,
/// API key) pairs they sign with.
type Credentials = Arc<RwLock<(usize, Vec<(&'static str, &'static str)>)>>;

/// Client threads alternating a user request and an internal request,
/// each signed with one of the current credentials in turn.
struct RotationLoad {
    stop: Arc<AtomicBool>,
    served: Arc<[AtomicUsize; 2]>,
    /// Per client: the credentials version of its last finished request.
    done: Arc<Vec<AtomicUsize>>,
    creds: Credentials,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

const CLIENTS: usize = 4;

impl RotationLoad {
    fn start(addr: SocketAddr, first: Vec<(&'static str, &'static str)>) -> RotationLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let served: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let done: Arc<Vec<AtomicUsize>> =
            Arc::new((0..CLIENTS).map(|_| AtomicUsize::new(0)).collect());
        let creds: Credentials = Arc::new(RwLock::new((0, first)));
        let clients = (0..CLIENTS)
            .map(|i| {
                let (stop, served, creds, done) =
                    (stop.clone(), served.clone(), creds.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut n = i;
                    while !stop.load(Ordering::Relaxed) {
                        n += 1;
                        // Even n: the user path, odd n: the internal one;
                        // each path cycles through every credential.
                        let (version, (secret, key)) = {
                            let c = creds.read().unwrap();
                            (c.0, c.1[(n / 2) % c.1.len()])
                        };
                        let now = now_unix();
                        let r = if n % 2 == 0 {
                            let t = jwt(&json!({"userId": "rot", "exp": now + 600}), secret);
                            let auth = format!("Bearer {t}");
                            request(
                                addr,
                                "GET",
                                "/api/v1/translate/languages",
                                &[("Authorization", &auth)],
                                b"",
                            )
                        } else {
                            internal_request(addr, secret, key)
                        };
                        match r {
                            Ok(r) if r.status == 200 => {
                                served[usize::from(secret == NEW)].fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => errors.push(format!(
                                "client {i} with {secret}/{key}: {} {}",
                                r.status, r.body
                            )),
                            Err(e) => errors.push(format!("client {i} with {secret}/{key}: {e}")),
                        }
                        done[i].store(version, Ordering::Relaxed);
                    }
                    errors
                })
            })
            .collect();
        RotationLoad {
            stop,
            served,
            done,
            creds,
            clients,
        }
    }

    /// Gives the clients `creds` and returns once every client has finished
    /// a request with them (none is still using the previous ones).
    fn switch(&self, creds: Vec<(&'static str, &'static str)>) {
        let version = {
            let mut c = self.creds.write().unwrap();
            *c = (c.0 + 1, creds);
            c.0
        };
        wait_for("every client on the new credentials", DEADLINE, || {
            self.done
                .iter()
                .all(|d| d.load(Ordering::Relaxed) >= version)
                .then_some(())
        });
    }

    /// Requests served with (old, new) credentials.
    fn served(&self) -> (usize, usize) {
        (
            self.served[0].load(Ordering::Relaxed),
            self.served[1].load(Ordering::Relaxed),
        )
    }

    /// Waits for `n` more served requests signed with the new secret
    /// (`new`) or the old one.
    fn wait_more(&self, n: usize, new: bool) {
        let pick = |s: (usize, usize)| if new { s.1 } else { s.0 };
        let target = pick(self.served()) + n;
        wait_for("more traffic", DEADLINE, || {
            (pick(self.served()) >= target).then_some(())
        });
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().expect("client thread"))
            .collect()
    }
}

/// A service whose JWT secrets and API keys are in two files of one per
/// line (mode 0400), which the test rewrites between reloads.
struct Rotated {
    svc: Service,
    jwt_file: std::path::PathBuf,
    key_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Rotated {
    fn start(instances: u32, secrets: &[&str], keys: &[&str], env: &[(&str, &str)]) -> Rotated {
        let dir = tempfile::tempdir().unwrap();
        let jwt_file = dir.path().join("jwt_secret");
        let key_file = dir.path().join("api_key");
        write_secret(&jwt_file, secrets);
        write_secret(&key_file, keys);
        let (jwt_path, key_path) = (
            jwt_file.display().to_string(),
            key_file.display().to_string(),
        );
        let mut all = vec![
            ("JWT_SECRET_FILE", jwt_path.as_str()),
            ("HEARTALK_API_KEY_FILE", key_path.as_str()),
        ];
        all.extend_from_slice(env);
        Rotated {
            svc: Service::start(instances, &all),
            jwt_file,
            key_file,
            _dir: dir,
        }
    }
}

/// `heartalk reload`, then waits for every worker it replaced to be gone,
/// so that no request can reach a worker of the previous step.
fn reload_and_settle(svc: &Service) {
    let before = svc.sup.worker_pids();
    let out = svc.sup.cli(&["reload"]);
    assert!(
        out.status.success(),
        "reload: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for("the old workers gone", DEADLINE, || {
        before.iter().all(|&p| !alive(p)).then_some(())
    });
}

#[test]
fn rotating_the_jwt_secret_and_the_api_key_under_load_fails_no_request() {
    let rot = Rotated::start(
        2,
        &[OLD],
        &[OLD_KEY],
        &[
            ("RATE_LIMIT_MAX_REQUESTS", "100000000"),
            ("RATE_LIMIT_USER_MAX", "100000000"),
            ("RATE_LIMIT_AI_MAX", "100000000"),
            ("RATE_LIMIT_ADMIN_MAX", "100000000"),
        ],
    );
    let (svc, jwt_file, key_file) = (&rot.svc, &rot.jwt_file, &rot.key_file);
    let load = RotationLoad::start(svc.addr, vec![(OLD, OLD_KEY)]);
    load.wait_more(100, false);

    // 1. The new secret and key are accepted, not yet used to sign.
    write_secret(jwt_file, &[OLD, NEW]);
    write_secret(key_file, &[OLD_KEY, NEW_KEY]);
    reload_and_settle(svc);
    load.switch(vec![(OLD, OLD_KEY), (NEW, NEW_KEY)]);
    load.wait_more(100, true);
    load.wait_more(100, false);

    // 2. The new ones sign (the backend has them by now); the old ones are
    //    still accepted.
    write_secret(jwt_file, &[NEW, OLD]);
    write_secret(key_file, &[NEW_KEY, OLD_KEY]);
    reload_and_settle(svc);
    load.wait_more(100, true);
    load.wait_more(100, false);

    // 3. The longest token lifetime later nobody holds the old ones: they
    //    are dropped.
    load.switch(vec![(NEW, NEW_KEY)]);
    write_secret(jwt_file, &[NEW]);
    write_secret(key_file, &[NEW_KEY]);
    reload_and_settle(svc);
    load.wait_more(200, true);

    let errors = load.finish();
    assert!(
        errors.is_empty(),
        "{} failed requests, first: {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    // The dropped secret and key are refused now.
    let old_token = jwt(&json!({"userId": "rot", "exp": now_unix() + 600}), OLD);
    let r = get_auth(svc.addr, "/api/v1/translate/languages", &old_token);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("INVALID_TOKEN"))
    );
    let r = internal_get(svc.addr, NEW, OLD_KEY);
    assert_eq!(
        (r.status, r.json()["code"].clone()),
        (401, json!("INVALID_API_KEY"))
    );
}

/// Whether `token` carries a valid HS256 signature made with `secret`.
fn signed_with(token: &str, secret: &str) -> bool {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    v.required_spec_claims.clear();
    jsonwebtoken::decode::<serde_json::Value>(
        token,
        &jsonwebtoken::DecodingKey::from_secret(secret.as_bytes()).expect("hmac key"),
        &v,
    )
    .is_ok()
}

/// The credentials the backend received for the history of `conversation`.
fn backend_credentials(
    backend: &heartalk_e2e::mock_backend::MockBackend,
    conversation: &str,
) -> (String, String) {
    let req = backend
        .requests()
        .into_iter()
        .find(|r| {
            r.path
                .contains(&format!("/conversations/{conversation}/history"))
        })
        .expect("history fetched");
    let bearer = req.authorization.expect("authorization");
    (
        bearer.strip_prefix("Bearer ").unwrap().to_string(),
        req.api_key.expect("X-API-Key"),
    )
}

#[test]
fn the_first_line_signs_what_the_backend_receives() {
    let backend = heartalk_e2e::mock_backend::MockBackend::start();
    let backend_url = backend.base_url();
    let rot = Rotated::start(
        1,
        &[OLD, NEW],
        &[OLD_KEY, NEW_KEY],
        &[
            ("HEARTALK_BACKEND_URL", &backend_url),
            ("HEALTH_CHECK_INTERVAL", "600000"),
        ],
    );
    let (svc, jwt_file, key_file) = (&rot.svc, &rot.jwt_file, &rot.key_file);
    let user = jwt(&json!({"userId": "u1", "exp": now_unix() + 600}), NEW);
    let ask = |conversation: &str| {
        let body = json!({"conversation_id": conversation, "message": "hi", "user_id": "u1"});
        let r = post_json(svc.addr, "/api/v1/chat/generate", Some(&user), &body);
        assert_eq!(r.status, 200, "{}", r.body);
    };
    // Step 1: the new secret is accepted (the user token above is signed
    // with it) but the old one still signs for the backend.
    ask("1");
    let (token, key) = backend_credentials(&backend, "1");
    assert!(signed_with(&token, OLD) && !signed_with(&token, NEW));
    assert_eq!(key, OLD_KEY);

    // Step 2: swapped, the new ones sign.
    write_secret(jwt_file, &[NEW, OLD]);
    write_secret(key_file, &[NEW_KEY, OLD_KEY]);
    reload_and_settle(svc);
    ask("2");
    let (token, key) = backend_credentials(&backend, "2");
    assert!(signed_with(&token, NEW) && !signed_with(&token, OLD));
    assert_eq!(key, NEW_KEY);
}
