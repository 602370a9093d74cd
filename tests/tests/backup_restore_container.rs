//! `scripts/backup.sh` and `scripts/restore.sh` against the Redis container
//! of `compose/docker-compose.yml` (podman-compose, only the `redis`
//! service up), reached from the host at the container's address on
//! podman's bridge, as an operator on the host would: known keys in two
//! databases (a TTL, a binary value with NUL and 0xFF bytes, every type)
//! are backed up, then changed, deleted and added to; `restore.sh
//! --redis-flush` brings back exactly the backed-up keys, values and TTLs,
//! and they are still there after the container restarts (AOF on its
//! volume). The stack and its volume are removed at the end.

mod helper;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use helper::*;

/// redis-cli on the host against `ip`, `args` on its command line and
/// `stdin` (for `-x`) on its input; must succeed. Raw stdout bytes.
fn cli(ip: &str, stdin: &[u8], args: &[&str]) -> Vec<u8> {
    let mut child = Command::new("redis-cli")
        .args(["-h", ip, "-p", "6379", "--raw"])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run redis-cli");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let status = wait_or_kill(&mut child, Duration::from_secs(30)).expect("redis-cli hung");
    assert!(status.success(), "redis-cli {args:?}: {status:?}");
    // --raw ends every reply with a newline.
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    out
}

fn must(ip: &str, args: &[&str]) -> String {
    String::from_utf8(cli(ip, b"", args)).unwrap()
}

/// A value with every byte a text path would break: NUL, CR/LF, 0xFF.
fn blob() -> Vec<u8> {
    let mut v = b"\x00bin\r\nary\xff\xfe".to_vec();
    v.extend(0u8..=255);
    v
}

/// Every key of databases 0 and 2: type, exact value bytes (sorted where
/// the type has no order), and whether it expires.
fn dataset(ip: &str) -> BTreeMap<String, (String, Vec<u8>, bool)> {
    let mut all = BTreeMap::new();
    for db in ["0", "2"] {
        for key in must(ip, &["-n", db, "--scan"]).lines() {
            let kind = must(ip, &["-n", db, "TYPE", key]);
            let value = match kind.as_str() {
                "string" => cli(ip, b"", &["-n", db, "GET", key]),
                "hash" => sorted(cli(ip, b"", &["-n", db, "HGETALL", key])),
                "list" => cli(ip, b"", &["-n", db, "LRANGE", key, "0", "-1"]),
                "set" => sorted(cli(ip, b"", &["-n", db, "SMEMBERS", key])),
                "zset" => cli(ip, b"", &["-n", db, "ZRANGE", key, "0", "-1", "WITHSCORES"]),
                other => panic!("unexpected type {other} of {key}"),
            };
            let ttl: i64 = must(ip, &["-n", db, "TTL", key]).parse().unwrap();
            all.insert(format!("db{db}/{key}"), (kind, value, ttl > 0));
        }
    }
    all
}

fn sorted(v: Vec<u8>) -> Vec<u8> {
    let mut lines: Vec<&[u8]> = v.split(|b| *b == b'\n').collect();
    lines.sort();
    lines.join(&b'\n')
}

fn run_script(name: &str, args: &[&str], tmp: &Path) -> Output {
    run_bounded(
        Command::new(repo().join("scripts").join(name))
            .args(args)
            .current_dir(tmp)
            .env("TMPDIR", tmp)
            .env_remove("REDIS_URL")
            .env_remove("BACKUP_DEST")
            .stdin(Stdio::null()),
        Duration::from_secs(120),
    )
}

/// The container's address on its compose network, once Redis answers
/// there from the host.
fn redis_ip(container: &str) -> String {
    wait_until("Redis answering PING from the host", DEADLINE * 3, || {
        let out = podman(&[
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            container,
        ]);
        let ip = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if ip.is_empty() {
            return Err(format!(
                "no address yet: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let pong = Command::new("redis-cli")
            .args(["-h", &ip, "-p", "6379", "PING"])
            .output()
            .map_err(|e| e.to_string())?;
        let said = String::from_utf8_lossy(&pong.stdout).trim().to_string();
        if said == "PONG" {
            Ok(ip)
        } else {
            Err(format!("{ip}: {said}"))
        }
    })
}

#[test]
fn backup_and_restore_round_trip_the_redis_container() {
    // The Redis stand-in is made with the image (scripts/image.sh).
    let _ = built_image();
    let stack = DevCompose::new(format!("htdeploybk{}", std::process::id()), &[]);
    let up = stack.run(&["up", "-d", "--no-build", "redis"]);
    assert!(
        up.status.success(),
        "podman-compose up redis: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let ip = redis_ip(&stack.container("redis"));

    // Known keys.
    must(&ip, &["SET", "greeting", "hello world"]);
    must(&ip, &["SET", "session:42", "token", "EX", "3600"]);
    cli(&ip, &blob(), &["-x", "SET", "bin:blob"]);
    must(&ip, &["HSET", "user:1", "name", "Ada", "lang", "en"]);
    must(&ip, &["RPUSH", "queue", "a", "b", "c"]);
    must(&ip, &["SADD", "tags", "x", "y", "z"]);
    must(&ip, &["ZADD", "scores", "1", "one", "2", "two"]);
    must(&ip, &["SET", "unicode:é", "ünï"]);
    must(&ip, &["-n", "2", "SET", "rate:ip:10.0.0.1", "7"]);
    let original = dataset(&ip);
    assert_eq!(original.len(), 9, "{original:#?}");
    assert_eq!(original["db0/bin:blob"].1, blob());

    // Backup over the network, as from an operator's host.
    let tmp = tempfile::tempdir().unwrap();
    app_dir(tmp.path());
    let url = format!("redis://{ip}:6379");
    let out = run_script(
        "backup.sh",
        &[
            "--redis-url",
            &url,
            "--dest",
            "backups",
            "--no-logs",
            "--config",
            "app",
        ],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    let backups: Vec<_> = std::fs::read_dir(tmp.path().join("backups"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(backups.len(), 1, "{backups:?}");
    let backup = &backups[0];
    let info = std::fs::read_to_string(backup.join("INFO.txt")).unwrap();
    assert!(
        info.contains(&format!("redis: {ip}:6379 (redis ")) && info.contains("db0:keys=8"),
        "{info}"
    );

    // Changed, deleted, added: the live data is no longer the backup's.
    must(&ip, &["SET", "greeting", "changed"]);
    must(&ip, &["DEL", "session:42", "bin:blob", "tags"]);
    must(&ip, &["SET", "extra:key", "not in the backup"]);
    must(&ip, &["-n", "2", "FLUSHDB"]);
    assert_ne!(dataset(&ip), original);

    let b = backup.to_string_lossy().into_owned();
    let out = run_script(
        "restore.sh",
        &[&b, "--redis-url", &url, "--redis-flush"],
        tmp.path(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", output_text(&out));
    assert_eq!(dataset(&ip), original);
    let ttl: i64 = must(&ip, &["TTL", "session:42"]).parse().unwrap();
    assert!((3000..=3600).contains(&ttl), "TTL of session:42: {ttl}");
    assert_eq!(must(&ip, &["TTL", "greeting"]), "-1");

    // Written to the container's AOF: there after a restart too.
    let restart = podman(&["restart", &stack.container("redis")]);
    assert!(
        restart.status.success(),
        "{}",
        String::from_utf8_lossy(&restart.stderr)
    );
    let ip = redis_ip(&stack.container("redis"));
    assert_eq!(dataset(&ip), original);
}
