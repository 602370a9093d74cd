//! The operations scripts against real components: `scripts/health-check.sh`
//! against a running and a stopped `heartalk run` (and canned 503 / bad-JSON
//! / recovering servers); `scripts/backup.sh` then `scripts/restore.sh`
//! round-tripping the config and a real, password-protected Redis dataset
//! (both snapshot methods; live restore into a fresh server and over a
//! changed one; offline restore loaded by a restarted server; refusal of a
//! tampered or incomplete backup; retention by age); and
//! `scripts/deploy.sh` with the fake docker / docker-compose of
//! `tests/fixtures/` rolling back to exactly the tag it recorded (after an
//! unhealthy version, or a roll-out that left the old container running),
//! deploying an existing `--image` in a named project, and the
//! podman-compose steps (the compose file read without `config`, the old
//! container stopped with its grace and removed). The real podman runs are
//! `deploy_rollback.rs` and `backup_restore_container.rs`.

mod helper;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use heartalk_e2e::redis_server::RedisServer;
use helper::*;

/// Runs `scripts/<name>` with `args` and `env`, killing it after the
/// deadline (a hung script fails the test instead of hanging it).
fn script(name: &str, args: &[&str], env: &[(&str, &str)], cwd: &Path) -> Output {
    let mut cmd = Command::new(repo().join("scripts").join(name));
    cmd.args(args)
        .current_dir(cwd)
        .env_remove("PORT")
        .env_remove("HEALTH_URL")
        .env_remove("REDIS_URL")
        .env_remove("BACKUP_DEST")
        // deploy.sh takes these from the environment before the .env.
        .env_remove("COMPOSE_PROJECT_NAME")
        .env_remove("HEARTALK_PORT")
        .env_remove("HTTPS_PORT")
        .env_remove("DOCKER")
        .stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_bounded(&mut cmd, Duration::from_secs(60))
}

fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "{}", output_text(out));
}

// ---------------------------------------------------------------- health

#[test]
fn health_check_follows_the_real_service() {
    let tmp = tempfile::tempdir().unwrap();
    let mut svc = Service::start(1, &[]);
    let url = health_url(svc.addr);
    let out = script(
        "health-check.sh",
        &["--url", &url, "--retries", "1"],
        &[],
        tmp.path(),
    );
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("is healthy"),
        "{}",
        output_text(&out)
    );

    // The default URL follows $PORT.
    let port = svc.addr.port().to_string();
    let out = script(
        "health-check.sh",
        &["--retries", "1"],
        &[("PORT", &port)],
        tmp.path(),
    );
    assert_exit(&out, 0);

    svc.sup.signal(nix::sys::signal::Signal::SIGTERM);
    assert_eq!(svc.sup.wait_exit(DEADLINE).code(), Some(0));
    let args = [
        "--url",
        &url,
        "--retries",
        "3",
        "--interval",
        "0.1",
        "--timeout",
        "2",
    ];
    let out = script("health-check.sh", &args, &[], tmp.path());
    assert_exit(&out, 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.matches("try ").count(), 3, "three tries: {stderr}");
}

#[test]
fn health_check_reads_the_status_and_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let quick = ["--retries", "2", "--interval", "0.1", "--timeout", "5"];
    let run = |addr: SocketAddr, extra: &[&str]| {
        let url = health_url(addr);
        let mut args = vec!["--url", url.as_str()];
        args.extend_from_slice(extra);
        script("health-check.sh", &args, &[], tmp.path())
    };

    // 503 unhealthy: answered, but bad.
    let canned = |status: &'static str, body: &'static str| {
        StubHttp::start(move |_| Some(http_answer(status, body))).addr
    };
    let unhealthy = canned(
        "503 Service Unavailable",
        r#"{"data":{"status":"unhealthy"}}"#,
    );
    assert_exit(&run(unhealthy, &quick), 1);
    // 200 whose data.status is not healthy/degraded, and 200 that is not JSON.
    let odd = canned("200 OK", r#"{"data":{"status":"broken"}}"#);
    assert_exit(&run(odd, &quick), 1);
    let html = canned("200 OK", "<html>hello</html>");
    assert_exit(&run(html, &quick), 1);
    // degraded is fine
    let degraded = canned("200 OK", r#"{"data":{"status":"degraded"}}"#);
    let out = run(degraded, &quick);
    assert_exit(&out, 0);
    assert!(String::from_utf8_lossy(&out.stdout).contains("degraded"));

    // Starting up: two 503s, then healthy; the third try succeeds.
    let recovering = StubHttp::start(|n| {
        Some(if n < 2 {
            http_answer(
                "503 Service Unavailable",
                r#"{"data":{"status":"unhealthy"}}"#,
            )
        } else {
            http_answer("200 OK", r#"{"data":{"status":"healthy"}}"#)
        })
    });
    let out = run(recovering.addr, &["--retries", "5", "--interval", "0.1"]);
    assert_exit(&out, 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("try 3 of 5"),
        "{}",
        output_text(&out)
    );
    assert_eq!(recovering.requests().len(), 3);

    // A server that never answers: each try is cut at --timeout.
    let silent = StubHttp::start(|_| None);
    let start = std::time::Instant::now();
    let out = run(
        silent.addr,
        &["--retries", "2", "--interval", "0", "--timeout", "0.5"],
    );
    assert_exit(&out, 2);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "{:?}",
        start.elapsed()
    );

    let out = script("health-check.sh", &["--retries", "0"], &[], tmp.path());
    assert_exit(&out, 64);
    assert_exit(
        &script("health-check.sh", &["--bogus"], &[], tmp.path()),
        64,
    );
}

// ---------------------------------------------------------------- redis

/// A real redis-server (the support crate's) on a free port, in its own
/// temp dir, with a password; killed and reaped on drop.
fn redis(password: &str) -> RedisServer {
    RedisServer::options().password(password).start()
}

/// Starts one on `dir`, loading its dump.rdb if there is one.
fn redis_in(password: &str, dir: tempfile::TempDir) -> RedisServer {
    RedisServer::options().password(password).dir(dir).start()
}

/// What these tests read from and write to a Redis.
trait Dataset {
    /// `redis-cli ARGS`, which must succeed; its output without the final
    /// newline.
    fn must(&self, args: &[&str]) -> String;
    /// Every key of every database with its type, value (sorted for sets)
    /// and whether it expires: what "the dataset" means for these tests.
    fn dataset(&self) -> BTreeMap<String, String>;
    fn fill(&self);
}

impl Dataset for RedisServer {
    fn must(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
            .trim_end()
            .to_string()
    }

    fn dataset(&self) -> BTreeMap<String, String> {
        let mut all = BTreeMap::new();
        for db in ["0", "2"] {
            let keys = self.must(&["-n", db, "--scan"]);
            for key in keys.lines().filter(|k| !k.is_empty()) {
                let kind = self.must(&["-n", db, "TYPE", key]);
                let value = match kind.as_str() {
                    "string" => self.must(&["-n", db, "GET", key]),
                    "hash" => sorted(self.must(&["-n", db, "HGETALL", key])),
                    "list" => self.must(&["-n", db, "LRANGE", key, "0", "-1"]),
                    "set" => sorted(self.must(&["-n", db, "SMEMBERS", key])),
                    "zset" => self.must(&["-n", db, "ZRANGE", key, "0", "-1", "WITHSCORES"]),
                    other => panic!("unexpected type {other} of {key}"),
                };
                let ttl: i64 = self.must(&["-n", db, "TTL", key]).parse().unwrap();
                let expires = if ttl > 0 { "expires" } else { "persistent" };
                all.insert(format!("db{db}/{key}"), format!("{kind} {expires} {value}"));
            }
        }
        all
    }

    fn fill(&self) {
        self.must(&["SET", "greeting", "hello world"]);
        self.must(&["SET", "session:42", "token", "EX", "3600"]);
        self.must(&["HSET", "user:1", "name", "Ada", "lang", "en"]);
        self.must(&["RPUSH", "queue", "a", "b", "c"]);
        self.must(&["SADD", "tags", "x", "y", "z"]);
        self.must(&["ZADD", "scores", "1", "one", "2", "two"]);
        self.must(&["SET", "unicode:é", "ünï"]);
        self.must(&["-n", "2", "SET", "rate:ip:10.0.0.1", "7"]);
    }
}

fn sorted(s: String) -> String {
    let mut v: Vec<&str> = s.lines().collect();
    v.sort();
    v.join("\n")
}

/// Pids of processes whose command line mentions `path` (the scratch
/// redis-server of restore.sh lives under the test's TMPDIR).
fn procs_mentioning(path: &Path) -> Vec<String> {
    let needle = path.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(&needle) && alive(name.parse().unwrap()) {
                found.push(format!("{name}: {cmd}"));
            }
        }
    }
    found
}

/// A config dir, an env file and a log dir like a deployment's.
struct Site {
    tmp: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        let tmp = tempfile::tempdir().unwrap();
        app_dir(tmp.path());
        std::fs::write(tmp.path().join("heartalk.env"), "JWT_SECRET=s3cret\n").unwrap();
        let logs = tmp.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        std::fs::write(logs.join("heartalk.log"), "{\"event\":\"x\"}\n").unwrap();
        std::fs::write(logs.join("heartalk-1.log.gz"), b"\x1f\x8b not really").unwrap();
        std::fs::create_dir_all(tmp.path().join("backups")).unwrap();
        Site { tmp }
    }

    fn p(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    fn s(&self, rel: &str) -> String {
        self.p(rel).to_string_lossy().into_owned()
    }

    /// The backups in `backups/` made by backup.sh (timestamped names).
    fn backups(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(self.p("backups"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    fn backup(&self, extra: &[&str]) -> Output {
        let mut args = vec!["--dest", "backups", "--config", "app"];
        args.extend_from_slice(extra);
        let tmpdir = self.s("");
        script("backup.sh", &args, &[("TMPDIR", &tmpdir)], self.tmp.path())
    }

    fn restore(&self, backup: &Path, extra: &[&str]) -> Output {
        let b = backup.to_string_lossy().into_owned();
        let mut args = vec![b.as_str()];
        args.extend_from_slice(extra);
        let tmpdir = self.s("");
        let out = script("restore.sh", &args, &[("TMPDIR", &tmpdir)], self.tmp.path());
        let left = procs_mentioning(self.tmp.path());
        assert!(
            left.is_empty(),
            "restore.sh left processes behind: {left:?}"
        );
        out
    }
}

fn manifest_paths(backup: &Path) -> Vec<String> {
    let m = std::fs::read_to_string(backup.join("MANIFEST")).unwrap();
    let mut v: Vec<String> = m
        .lines()
        .map(|l| l.split_once("  ").expect("sha256sum line").1.to_string())
        .collect();
    v.sort();
    v
}

#[test]
fn backup_and_restore_round_trip_config_and_redis() {
    let site = Site::new();
    let source = redis("pa ss\"w@rd");
    source.fill();
    let original = source.dataset();
    assert_eq!(original.len(), 8, "{original:#?}");

    // Older backups: one past the retention, one within it, one not ours.
    let old = site.p("backups/heartalk-backup-20000101T000000Z");
    std::fs::create_dir_all(&old).unwrap();
    let yesterday = backup_stamp(std::time::SystemTime::now() - Duration::from_secs(86_400));
    let recent = site.p(&format!("backups/heartalk-backup-{yesterday}"));
    std::fs::create_dir_all(&recent).unwrap();
    let other = site.p("backups/keep-me");
    std::fs::create_dir_all(&other).unwrap();

    let env_file = site.s("heartalk.env");
    let url = source.url();
    let out = site.backup(&[
        "--env-file",
        &env_file,
        "--logs",
        "logs",
        "--redis-url",
        &url,
        "--keep-days",
        "7",
    ]);
    assert_exit(&out, 0);
    assert!(
        !old.exists(),
        "retention kept a 2000 backup: {}",
        output_text(&out)
    );
    assert!(recent.exists() && other.exists(), "{}", output_text(&out));
    let new: Vec<PathBuf> = site
        .backups()
        .into_iter()
        .filter(|p| p != &recent && p != &other)
        .collect();
    assert_eq!(new.len(), 1, "{new:?}");
    let backup = &new[0];
    assert_eq!(
        manifest_paths(backup),
        [
            "INFO.txt",
            "config/config/keywords.json",
            "config/ecosystem.toml",
            "env/heartalk.env",
            "logs.tar.gz",
            "redis/dump.rdb"
        ]
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    let info = std::fs::read_to_string(backup.join("INFO.txt")).unwrap();
    assert!(
        !info.contains("pa ss") && !url.is_empty(),
        "password leaked: {info}"
    );
    // Nor in the URL's percent-encoded form (the user info of `url`).
    let encoded = url
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .map(|(userinfo, _)| userinfo.trim_start_matches(':'))
        .expect("the URL carries the password");
    assert!(encoded.contains("%20"), "encoded: {encoded}");
    assert!(!info.contains(encoded), "encoded password leaked: {info}");
    let listing = Command::new("tar")
        .arg("-tzf")
        .arg(backup.join("logs.tar.gz"))
        .output()
        .unwrap();
    let listing = String::from_utf8_lossy(&listing.stdout);
    assert!(listing.contains("logs/heartalk.log"), "{listing}");
    assert!(listing.contains("logs/heartalk-1.log.gz"), "{listing}");

    // Restore into a fresh server (another password) and a fresh target dir.
    let fresh = redis("other-secret");
    let fresh_url = fresh.url();
    let target = site.s("restored");
    let out = site.restore(backup, &["--target", &target, "--redis-url", &fresh_url]);
    assert_exit(&out, 0);
    assert_eq!(fresh.dataset(), original);
    for rel in ["ecosystem.toml", "config/keywords.json"] {
        assert_eq!(
            std::fs::read(site.p("app").join(rel)).unwrap(),
            std::fs::read(site.p("restored").join(rel)).unwrap(),
            "{rel}"
        );
    }
    let env = site.p("restored/heartalk.env");
    assert_eq!(
        std::fs::read_to_string(&env).unwrap(),
        "JWT_SECRET=s3cret\n"
    );
    assert_eq!(
        std::fs::metadata(&env).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Over a changed dataset: --redis-flush makes it exactly the backup's.
    source.must(&["SET", "greeting", "changed"]);
    source.must(&["DEL", "queue"]);
    source.must(&["SET", "junk", "1"]);
    source.must(&["-n", "2", "SET", "junk2", "1"]);
    assert_ne!(source.dataset(), original);
    let out = site.restore(backup, &["--redis-url", &url, "--redis-flush"]);
    assert_exit(&out, 0);
    assert_eq!(source.dataset(), original);

    // A tampered backup is refused before anything is touched.
    fresh.must(&["SET", "sentinel", "still here"]);
    let tampered = site.p("tampered");
    copy_dir(backup, &tampered);
    let rdb = tampered.join("redis/dump.rdb");
    let mut bytes = std::fs::read(&rdb).unwrap();
    let last = bytes.len() - 12;
    bytes[last] ^= 0xff;
    std::fs::write(&rdb, bytes).unwrap();
    let args = ["--redis-url", fresh_url.as_str(), "--redis-flush"];
    let out = site.restore(&tampered, &args);
    assert_exit(&out, 2);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("redis/dump.rdb"),
        "{}",
        output_text(&out)
    );
    assert_eq!(fresh.must(&["GET", "sentinel"]), "still here");
}

#[test]
fn bgsave_backup_offline_restore_and_refusals() {
    let site = Site::new();
    let source = redis("secret");
    source.fill();
    let original = source.dataset();
    let url = source.url();
    let out = site.backup(&["--no-logs", "--redis-url", &url, "--redis-method", "bgsave"]);
    assert_exit(&out, 0);
    let backups = site.backups();
    assert_eq!(backups.len(), 1, "{backups:?}");
    assert!(!manifest_paths(&backups[0]).contains(&"logs.tar.gz".to_string()));
    let fresh = redis("secret2");
    let out = site.restore(&backups[0], &["--redis-url", &fresh.url()]);
    assert_exit(&out, 0);
    assert_eq!(fresh.dataset(), original);

    // Verification really opens every listed file: a directory in place of
    // a listed file, an empty file, an unlisted file are each refused.
    let broken = site.p("broken");
    copy_dir(&backups[0], &broken);
    std::fs::remove_file(broken.join("redis/dump.rdb")).unwrap();
    std::fs::create_dir(broken.join("redis/dump.rdb")).unwrap();
    std::fs::write(broken.join("INFO.txt"), "").unwrap();
    std::fs::write(broken.join("stray"), "x").unwrap();
    let b = broken.to_string_lossy().into_owned();
    let out = script("verify-backup.sh", &[&b], &[], site.tmp.path());
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "dump.rdb is a directory",
        "INFO.txt is empty",
        "stray is not listed",
    ] {
        assert!(stderr.contains(needle), "{needle}: {stderr}");
    }

    // Offline: dump.rdb into the data dir of a stopped Redis, which loads
    // it when it starts.
    let data = tempfile::tempdir().unwrap();
    let dir = data.path().to_string_lossy().into_owned();
    let out = site.restore(&backups[0], &["--redis-dir", &dir]);
    assert_exit(&out, 0);
    let started = redis_in("secret3", data);
    assert_eq!(started.dataset(), original);
    drop(started);

    // A restore whose target refuses the password writes nothing at all,
    // not even the config.
    let refused = format!("redis://:nope@127.0.0.1:{}", fresh.port());
    let target = site.s("not-restored");
    let out = site.restore(&backups[0], &["--target", &target, "--redis-url", &refused]);
    assert_exit(&out, 1);
    assert!(!site.p("not-restored").exists(), "{}", output_text(&out));

    // A wrong password: exit 1 and nothing that looks like a backup.
    let wrong = format!("redis://:nope@127.0.0.1:{}", source.port());
    let out = site.backup(&["--no-logs", "--redis-url", &wrong]);
    assert_exit(&out, 1);
    assert_eq!(site.backups(), backups, "{}", output_text(&out));
}

fn copy_dir(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success());
}

/// `yyyymmddThhmmssZ` in UTC, as backup.sh names its directories.
fn backup_stamp(t: std::time::SystemTime) -> String {
    let out = Command::new("date")
        .arg("-u")
        .arg(format!(
            "-d@{}",
            t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
        ))
        .arg("+%Y%m%dT%H%M%SZ")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

// ---------------------------------------------------------------- deploy

/// The fake engine's state dir, with `heartalk:v1` running, and a health
/// endpoint that is unhealthy (503) while an image whose reference
/// contains "bad" runs, healthy otherwise.
struct FakeEngine {
    dir: tempfile::TempDir,
    health: SocketAddr,
}

impl FakeEngine {
    fn new() -> FakeEngine {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("images"),
            format!("heartalk:v1 sha256:{}\n", "1".repeat(64)),
        )
        .unwrap();
        std::fs::write(dir.path().join("running"), "heartalk:v1\n").unwrap();
        let running = dir.path().join("running");
        let health = StubHttp::start(move |_| {
            let image = std::fs::read_to_string(&running).unwrap_or_default();
            Some(if image.contains("bad") {
                http_answer(
                    "503 Service Unavailable",
                    r#"{"data":{"status":"unhealthy"}}"#,
                )
            } else {
                http_answer("200 OK", r#"{"data":{"status":"healthy"}}"#)
            })
        })
        .addr;
        FakeEngine { dir, health }
    }

    fn deploy(&self, tag: &str, health: &str) -> Output {
        self.deploy_with(tag, health, &[])
    }

    /// `deploy` with `extra` arguments after the usual ones (a repeated
    /// option overrides the usual value).
    fn deploy_with(&self, tag: &str, health: &str, extra: &[&str]) -> Output {
        let mut args = vec![
            "--tag",
            tag,
            "--health-url",
            health,
            "--retries",
            "2",
            "--interval",
            "0.1",
            "--timeout",
            "2",
        ];
        args.extend_from_slice(extra);
        self.deploy_args(&args)
    }

    /// `deploy.sh ARGS` against the fake engine, nothing added.
    fn deploy_args(&self, args: &[&str]) -> Output {
        self.deploy_flavor(args, None)
    }

    /// `deploy_args` as podman-compose (`DEPLOY_COMPOSE_FLAVOR`).
    fn deploy_podman_compose(&self, args: &[&str]) -> Output {
        self.deploy_flavor(args, Some("podman-compose"))
    }

    fn deploy_flavor(&self, args: &[&str], flavor: Option<&str>) -> Output {
        let fixtures = repo().join("tests/fixtures");
        let docker = fixtures.join("fake-docker").to_string_lossy().into_owned();
        let compose = fixtures
            .join("fake-docker-compose")
            .to_string_lossy()
            .into_owned();
        let d = self.dir.path().to_string_lossy().into_owned();
        let state = self.dir.path().join("state").to_string_lossy().into_owned();
        let mut env = vec![
            ("DOCKER", docker.as_str()),
            ("DOCKER_COMPOSE", compose.as_str()),
            ("FAKE_DOCKER_DIR", d.as_str()),
            ("DEPLOY_STATE_DIR", state.as_str()),
            ("DEPLOY_COMPOSE_FLAVOR", ""),
        ];
        if let Some(flavor) = flavor {
            env.push(("DEPLOY_COMPOSE_FLAVOR", flavor));
        }
        script("deploy.sh", args, &env, self.dir.path())
    }

    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    fn log(&self) -> Vec<String> {
        self.read("log").lines().map(str::to_string).collect()
    }

    /// The image id a reference points to in the fake engine.
    fn id_of(&self, reference: &str) -> Option<String> {
        self.read("images").lines().find_map(|l| {
            let (r, id) = l.split_once(' ')?;
            (r == reference).then(|| id.to_string())
        })
    }

    /// HEARTALK_IMAGE of every `up`, in order.
    fn ups(&self) -> Vec<String> {
        self.log()
            .iter()
            .filter(|l| l.starts_with("compose ") && l.ends_with(" up -d"))
            .map(|l| {
                l.strip_prefix("compose HEARTALK_IMAGE=")
                    .and_then(|r| r.split_once(' '))
                    .map(|(image, _)| image.to_string())
                    .unwrap_or_default()
            })
            .collect()
    }
}

const OLD_ID: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

#[test]
fn deploy_rolls_back_to_exactly_the_recorded_tag() {
    let engine = FakeEngine::new();
    let out = engine.deploy("v2-bad", &health_url(engine.health));
    assert_exit(&out, 1);

    let backup = engine.read("state/last-backup-tag").trim().to_string();
    let stamp = backup
        .strip_prefix("heartalk:rollback-")
        .unwrap_or_else(|| panic!("backup tag {backup}"));
    assert!(
        stamp.len() == 16 && stamp.ends_with('Z') && stamp.as_bytes()[8] == b'T',
        "{backup}"
    );
    // It tagged the running image's id, then rolled out v2-bad, then went
    // back to exactly that tag, which still names the old image.
    let log = engine.log();
    assert!(
        log.contains(&format!("docker tag {OLD_ID} {backup}")),
        "{log:#?}"
    );
    assert_eq!(
        engine.ups(),
        ["heartalk:v2-bad", backup.as_str()],
        "{log:#?}"
    );
    assert_eq!(engine.id_of(&backup).as_deref(), Some(OLD_ID));
    assert_eq!(engine.read("running").trim(), backup);
    assert_eq!(engine.read("state/current-tag").trim(), backup);
    assert_eq!(engine.id_of("heartalk:latest").as_deref(), Some(OLD_ID));
    let all = output_text(&out);
    assert!(all.contains(&format!("rolled back to {backup}")), "{all}");
    assert!(engine.read("state/history").contains("exit=1"));
}

#[test]
fn deploy_with_no_healthy_version_exits_2_after_rolling_back() {
    let engine = FakeEngine::new();
    let closed = health_url(free_addr());
    let out = engine.deploy("v2", &closed);
    assert_exit(&out, 2);
    let backup = engine.read("state/last-backup-tag").trim().to_string();
    assert_eq!(
        engine.ups(),
        ["heartalk:v2", backup.as_str()],
        "{:#?}",
        engine.log()
    );
    assert_eq!(engine.id_of(&backup).as_deref(), Some(OLD_ID));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("may be down"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn deploy_happy_path_and_refusals() {
    let engine = FakeEngine::new();
    let out = engine.deploy("v2", &health_url(engine.health));
    assert_exit(&out, 0);
    assert_eq!(
        engine.ups(),
        ["heartalk:v2"],
        "no rollback: {:#?}",
        engine.log()
    );
    assert_eq!(engine.read("running").trim(), "heartalk:v2");
    assert_eq!(engine.read("state/current-tag").trim(), "heartalk:v2");
    let backup = engine.read("state/last-backup-tag").trim().to_string();
    assert_eq!(engine.id_of(&backup).as_deref(), Some(OLD_ID));
    assert_eq!(engine.id_of("heartalk:latest"), engine.id_of("heartalk:v2"));

    // A failed build changes nothing: no tag, no up, exit 3.
    std::fs::write(engine.dir.path().join("fail-build"), "").unwrap();
    let before = engine.log().len();
    let out = engine.deploy("v3", &health_url(engine.health));
    assert_exit(&out, 3);
    let after = engine.log();
    // The compose check, then the build that failed; nothing after it.
    assert_eq!(after.len() - before, 2, "{after:#?}");
    assert_eq!(after.last().unwrap(), "docker build -t heartalk:v3 .");
    assert!(
        after[before..]
            .iter()
            .all(|l| !l.contains(" up ") && !l.contains("docker tag")),
        "{after:#?}"
    );
    assert_eq!(engine.read("running").trim(), "heartalk:v2");

    // A compose file that ignores HEARTALK_IMAGE could neither roll out nor
    // roll back: refused before anything changes.
    std::fs::remove_file(engine.dir.path().join("fail-build")).unwrap();
    std::fs::write(engine.dir.path().join("fixed-image"), "").unwrap();
    let before = engine.log().len();
    let out = engine.deploy("v4", &health_url(engine.health));
    assert_exit(&out, 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("HEARTALK_IMAGE"),
        "{}",
        output_text(&out)
    );
    let after = engine.log();
    assert_eq!(after.len() - before, 1, "one call: {after:#?}");
    assert!(
        after[before..].iter().all(|l| l.contains(" config")),
        "only `config` ran: {after:#?}"
    );

    // Bad usage.
    assert_exit(&engine.deploy("bad tag!", "http://127.0.0.1:1/"), 64);
}

#[test]
fn deploy_refuses_a_timeout_health_check_would_refuse_before_touching_anything() {
    let engine = FakeEngine::new();
    let health = health_url(engine.health);
    let tmp = tempfile::tempdir().unwrap();
    for bad in ["0", "0.0", "00", "-1", "5s", ""] {
        // health-check.sh refuses it (which deploy.sh would take for an
        // unhealthy roll-out, and roll back) ...
        let args = ["--url", health.as_str(), "--timeout", bad];
        let out = script("health-check.sh", &args, &[], tmp.path());
        assert_exit(&out, 64);
        // ... so deploy.sh refuses it up front, the same way.
        let out = engine.deploy_with("v2", &health, &["--timeout", bad]);
        assert_exit(&out, 64);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("--timeout must be a positive number of seconds"),
            "{}",
            output_text(&out)
        );
        // No docker or compose call (the fake engine logs every one), no
        // state dir, nothing rolled out.
        assert!(
            !engine.dir.path().join("log").exists(),
            "{bad:?}: {}",
            engine.read("log")
        );
        assert!(!engine.dir.path().join("state").exists(), "{bad:?}");
        assert_eq!(engine.read("running"), "heartalk:v1\n");
    }
    // A positive fraction is fine for both.
    let out = engine.deploy_with("v2", &health, &["--timeout", "0.5"]);
    assert_exit(&out, 0);
    assert_eq!(engine.ups(), ["heartalk:v2"], "{:#?}", engine.log());
}

#[test]
fn deploy_that_leaves_the_old_container_running_is_rolled_back() {
    // `up -d` succeeds but the old image keeps running (podman-compose 1.0
    // starts the existing container again), and it is healthy: only the
    // check of the container's image id can see that nothing switched.
    let engine = FakeEngine::new();
    std::fs::write(engine.dir.path().join("stuck"), "").unwrap();
    let out = engine.deploy("v2", &health_url(engine.health));
    assert_exit(&out, 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("runs image sha256:1111") && stderr.contains("not heartalk:v2"),
        "{}",
        output_text(&out)
    );
    let backup = engine.read("state/last-backup-tag").trim().to_string();
    assert_eq!(
        engine.ups(),
        ["heartalk:v2", backup.as_str()],
        "{:#?}",
        engine.log()
    );
    // The health check never ran for v2: the switch check failed first.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .matches("health-check: ")
            .count(),
        1,
        "{}",
        output_text(&out)
    );
    assert_eq!(engine.read("state/current-tag").trim(), backup);
    assert!(engine.read("state/history").contains("exit=1"));
}

#[test]
fn deploy_an_existing_image_in_a_named_project_without_building() {
    let engine = FakeEngine::new();
    let ci_id = format!("sha256:{}", "7".repeat(64));
    std::fs::write(
        engine.dir.path().join("images"),
        format!("{}heartalk:ci-7 {ci_id}\n", engine.read("images")),
    )
    .unwrap();
    let health = health_url(engine.health);
    let quick = [
        "--health-url",
        &health,
        "--retries",
        "2",
        "--interval",
        "0.1",
    ];
    let mut args = vec!["--image", "heartalk:ci-7", "--project-name", "web"];
    args.extend_from_slice(&quick);
    let out = engine.deploy_args(&args);
    assert_exit(&out, 0);
    let log = engine.log();
    assert!(
        log.iter().all(|l| !l.starts_with("docker build")),
        "{log:#?}"
    );
    assert_eq!(engine.ups(), ["heartalk:ci-7"], "{log:#?}");
    assert!(
        log.iter()
            .filter(|l| l.starts_with("compose "))
            .all(|l| l.contains(" -p web ")),
        "{log:#?}"
    );
    assert!(
        log.iter().any(|l| l.starts_with("docker ps -a")
            && l.contains("label=com.docker.compose.project=web")
            && l.contains("label=com.docker.compose.service=heartalk")),
        "{log:#?}"
    );
    assert_eq!(engine.read("running").trim(), "heartalk:ci-7");
    assert_eq!(engine.read("state/current-tag").trim(), "heartalk:ci-7");
    assert_eq!(engine.id_of("heartalk:latest"), Some(ci_id));

    // An image that is not here changes nothing (exit 3, no up).
    let mut args = vec!["--image", "heartalk:missing"];
    args.extend_from_slice(&quick);
    let out = engine.deploy_args(&args);
    assert_exit(&out, 3);
    assert_eq!(engine.ups(), ["heartalk:ci-7"], "{:#?}", engine.log());
    // --tag builds, --image does not: not both.
    let mut args = vec!["--image", "heartalk:ci-7", "--tag", "v9"];
    args.extend_from_slice(&quick);
    assert_exit(&engine.deploy_args(&args), 64);
    assert_exit(
        &engine.deploy_args(&["--image", "heartalk:ci-7", "--project-name", "Bad Name"]),
        64,
    );
}

/// `args` with a quick health check against `health` (2 tries, 0.1 s apart).
fn quick_args(args: &[&str], health: &str) -> Vec<String> {
    let quick = [
        "--health-url",
        health,
        "--retries",
        "2",
        "--interval",
        "0.1",
    ];
    args.iter()
        .chain(quick.iter())
        .map(|a| a.to_string())
        .collect()
}

#[test]
fn deploy_with_podman_compose_reads_the_compose_file_itself() {
    // podman-compose 1.0 has no `config`: deploy.sh reads the service's
    // image: from the file, and refuses a .env beside it that sets
    // HEARTALK_IMAGE (podman-compose would put it before the environment).
    let engine = FakeEngine::new();
    let site = tempfile::tempdir().unwrap();
    let file = site.path().join("docker-compose.yml");
    let file_s = file.to_string_lossy().into_owned();
    let health = health_url(engine.health);
    let args = quick_args(&["--tag", "v2", "--file", &file_s], &health);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let deploy = |dotenv: Option<&str>, image: &str| {
        std::fs::write(
            &file,
            format!("services:\n  heartalk:\n    image: {image}\n    stop_grace_period: 1m30s\n"),
        )
        .unwrap();
        let env = site.path().join(".env");
        match dotenv {
            Some(text) => std::fs::write(&env, text).unwrap(),
            None => {
                let _ = std::fs::remove_file(&env);
            }
        }
        let _ = std::fs::remove_file(engine.dir.path().join("log"));
        let mut with_flavor = args.to_vec();
        with_flavor.push("--dry-run");
        // A dry run shows the plan with the podman-compose steps.
        let dry = engine.deploy_podman_compose(&with_flavor);
        let real = engine.deploy_podman_compose(&args);
        (dry, real)
    };

    let (dry, out) = deploy(Some("LOG_LEVEL=debug\n"), "${HEARTALK_IMAGE:-heartalk:dev}");
    assert_exit(&dry, 0);
    let plan = String::from_utf8_lossy(&dry.stdout);
    assert!(plan.contains("has no `config`"), "{}", output_text(&dry));
    // stop_grace_period 1m30s is the drain time of the old container.
    assert!(plan.contains("stop -t 90 "), "{}", output_text(&dry));
    assert_exit(&out, 0);
    let log = engine.log();
    assert!(log.iter().all(|l| !l.contains(" config")), "{log:#?}");
    assert!(
        log.contains(&"docker stop -t 90 c0ffee".to_string()),
        "{log:#?}"
    );
    assert!(log.contains(&"docker rm c0ffee".to_string()), "{log:#?}");
    assert_eq!(engine.read("running").trim(), "heartalk:v2");

    // Refused (exit 3) saying `why`, before the engine ran anything.
    let refused_untouched = |out: &Output, why: &str| {
        assert_exit(out, 3);
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(why),
            "{}",
            output_text(out)
        );
        assert!(
            !engine.dir.path().join("log").exists(),
            "{}",
            engine.read("log")
        );
    };
    // A fixed image: refused before anything changes.
    let (_, out) = deploy(None, "heartalk:dev");
    refused_untouched(&out, "image: heartalk:dev");

    // HEARTALK_IMAGE in the .env: refused too.
    let (_, out) = deploy(
        Some("export HEARTALK_IMAGE=heartalk:pinned\n"),
        "${HEARTALK_IMAGE}",
    );
    refused_untouched(&out, ".env sets HEARTALK_IMAGE");
    assert_eq!(engine.read("running").trim(), "heartalk:v2");
}

#[test]
fn deploy_takes_the_project_and_ports_compose_itself_would_take() {
    // Docker's compose reads COMPOSE_PROJECT_NAME from the .env beside the
    // file (.env.example sets it): deploy.sh must deploy into that project,
    // not a second one named after the directory. podman-compose 1.0 ignores
    // it and takes the directory's name, and so does deploy.sh with it. The
    // health check's port comes from the same .env (HEARTALK_PORT, and
    // HTTPS_PORT with --prod).
    let engine = FakeEngine::new();
    let site = tempfile::tempdir().unwrap();
    let dir = site.path().join("Site.Dir");
    std::fs::create_dir(&dir).unwrap();
    let file = dir.join("docker-compose.yml");
    std::fs::write(
        &file,
        "services:\n  heartalk:\n    image: ${HEARTALK_IMAGE:-heartalk:dev}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join(".env"),
        "LOG_LEVEL=info\nCOMPOSE_PROJECT_NAME=old\nexport COMPOSE_PROJECT_NAME=\"heartalk\"  # prod\n\
         HEARTALK_PORT=9123\nHTTPS_PORT='8443'\n",
    )
    .unwrap();
    let file_s = file.to_string_lossy().into_owned();
    let args = ["--image", "heartalk:v1", "--file", &file_s, "--dry-run"];
    let plan = |out: &Output| -> (String, String) {
        let plan = String::from_utf8_lossy(&out.stdout).into_owned();
        let up = plan
            .lines()
            .find(|l| l.contains(" up -d"))
            .unwrap_or_else(|| panic!("no up in the plan: {plan}"));
        let after = up
            .split(" -p ")
            .nth(1)
            .unwrap_or_else(|| panic!("no -p: {up}"));
        let project = after.split_whitespace().next().unwrap().to_string();
        let check = plan
            .lines()
            .find(|l| l.contains("health-check.sh"))
            .unwrap_or_else(|| panic!("no health check in the plan: {plan}"));
        let url = check.split(" --url ").nth(1).unwrap();
        (project, url.split_whitespace().next().unwrap().to_string())
    };
    let docker = engine.deploy_args(&args);
    assert_exit(&docker, 0);
    assert_eq!(
        plan(&docker),
        (
            "heartalk".to_string(),
            "http://127.0.0.1:9123/api/v1/health".to_string()
        ),
        "{}",
        output_text(&docker)
    );
    let podman = engine.deploy_podman_compose(&args);
    assert_exit(&podman, 0);
    assert_eq!(plan(&podman).0, "sitedir", "{}", output_text(&podman));
    let mut prod = args.to_vec();
    prod.push("--prod");
    let prod = engine.deploy_args(&prod);
    assert_exit(&prod, 0);
    assert_eq!(
        plan(&prod).1,
        "https://127.0.0.1:8443/api/v1/health",
        "{}",
        output_text(&prod)
    );
}

#[test]
fn deploy_leaves_one_off_containers_alone() {
    // `compose run` containers carry the service's labels too: neither the
    // backup tag, the stop/rm of podman-compose nor the switch check may
    // take one for the app's container.
    for flavor in [None, Some("podman-compose")] {
        let engine = FakeEngine::new();
        std::fs::write(engine.dir.path().join("oneoff"), "1").unwrap();
        let site = tempfile::tempdir().unwrap();
        let file = site.path().join("docker-compose.yml");
        std::fs::write(
            &file,
            "services:\n  heartalk:\n    image: ${HEARTALK_IMAGE:-heartalk:dev}\n",
        )
        .unwrap();
        let file_s = file.to_string_lossy().into_owned();
        let health = health_url(engine.health);
        let args = quick_args(&["--tag", "v2", "--file", &file_s], &health);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = engine.deploy_flavor(&args, flavor);
        assert_exit(&out, 0);
        let log = engine.log();
        assert!(
            log.iter().all(|l| !l.contains("0ff0ff")),
            "{flavor:?}: {log:#?}"
        );
        assert_eq!(engine.read("running").trim(), "heartalk:v2", "{flavor:?}");
    }
}

#[test]
fn deploy_with_podman_compose_takes_the_production_files_image_entry() {
    // docker-compose.prod.yml requires the variable: ${HEARTALK_IMAGE:?…}.
    let engine = FakeEngine::new();
    let site = tempfile::tempdir().unwrap();
    let file = site.path().join("docker-compose.prod.yml");
    std::fs::copy(repo().join("compose/docker-compose.prod.yml"), &file).unwrap();
    let file_s = file.to_string_lossy().into_owned();
    let out = engine.deploy_podman_compose(&[
        "--image",
        "heartalk:v1",
        "--prod",
        "--file",
        &file_s,
        "--dry-run",
    ]);
    assert_exit(&out, 0);
    let plan = String::from_utf8_lossy(&out.stdout);
    // The production file's 45 s grace is the old container's drain time.
    assert!(plan.contains("stop -t 45 "), "{}", output_text(&out));
}

#[test]
fn deploy_refuses_an_image_without_a_healthcheck() {
    // nginx waits for the service's health, which is the image's own
    // HEALTHCHECK: an image without one (OCI format) changes nothing.
    let engine = FakeEngine::new();
    std::fs::write(engine.dir.path().join("no-healthcheck"), "").unwrap();
    let out = engine.deploy("v2", &health_url(engine.health));
    assert_exit(&out, 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("has no HEALTHCHECK"),
        "{}",
        output_text(&out)
    );
    assert!(engine.ups().is_empty(), "{:#?}", engine.log());
    assert_eq!(engine.read("running").trim(), "heartalk:v1");
}
