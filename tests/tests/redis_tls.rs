//! Redis over TLS (`rediss://`), against a real TLS-only redis-server
//! whose certificate a throwaway CA signed: with that CA in
//! `REDIS_TLS_CA_FILE` the link comes up and an answer cached by one
//! supervisor's worker is a hit on another's; without it (system trust
//! store) or with another CA of the same name the server's certificate is
//! refused (`UnknownIssuer`, `BadSignature`), the link stays down and
//! answers are still served; a server that requires client certificates
//! takes `REDIS_TLS_CERT_FILE`/`REDIS_TLS_KEY_FILE`; TLS files with a
//! plaintext URL are refused at start, naming the variable.

mod helper;

use std::path::Path;

use heartalk_e2e::mock_ark::MockArk;
use heartalk_e2e::redis_server::{RedisServer, TlsFiles};
use helper::*;
use serde_json::json;

/// The response-cache keys in Redis (read with redis-cli over TLS).
fn cached_keys(redis: &RedisServer) -> String {
    redis.cli(&["--scan", "--pattern", "heartalk:resp:v1:*"])
}

/// Waits until the workers' log has a line containing every one of `parts`.
fn wait_for_log_line(svc: &Service, what: &str, parts: &[&str]) -> String {
    wait_for(what, DEADLINE, || {
        svc.log()
            .lines()
            .find(|l| parts.iter().all(|p| l.contains(p)))
            .map(str::to_string)
    })
}

fn path_str(p: &Path) -> String {
    p.to_str().expect("utf-8 temp path").to_string()
}

#[test]
fn the_l2_cache_is_shared_over_tls_with_a_private_ca() {
    let redis = RedisServer::options().tls().start();
    let ca = path_str(&redis.tls_files().expect("tls").ca_cert);
    let url = redis.url();
    assert!(url.starts_with("rediss://127.0.0.1:"), "{url}");
    let ark = MockArk::start();
    let env = [
        ("REDIS_URL", url.as_str()),
        ("REDIS_TLS_CA_FILE", ca.as_str()),
    ];
    let a = live_service(&ark.base_url(), &env);
    let b = live_service(&ark.base_url(), &env);
    for svc in [&a, &b] {
        wait_for("the TLS link up", DEADLINE, || {
            (svc.redis_up() == Some(1.0)).then_some(())
        });
        assert_eq!(
            svc.cache_health(),
            json!({"status": "healthy", "backends": ["memory", "redis"], "hit_rate": 0.0})
        );
        let line = wait_for_log_line(svc, "the connect log line", &["Redis connected"]);
        assert!(
            line.contains("tls (REDIS_TLS_CA_FILE)"),
            "verified against the CA file: {line}"
        );
    }

    let first = a.ask("加密链路上的问题");
    assert_eq!(first.header("x-cache"), Some("MISS"));
    wait_for("an entry in Redis", DEADLINE, || {
        (!cached_keys(&redis).trim().is_empty()).then_some(())
    });
    let second = b.ask("加密链路上的问题");
    assert_eq!(
        second.header("x-cache"),
        Some("HIT"),
        "L2 hit over TLS on the other supervisor"
    );
    assert_eq!(second.body, first.body);
    assert_eq!(ark.calls(), 1);
    for svc in [&a, &b] {
        assert_eq!(svc.redis_up(), Some(1.0));
    }
}

#[test]
fn without_its_ca_the_server_is_refused_and_answers_are_still_served() {
    let redis = RedisServer::options().tls().start();
    let url = redis.url();
    let elsewhere = tempfile::tempdir().expect("temp dir");
    let other_ca = path_str(&TlsFiles::generate(elsewhere.path()).ca_cert);
    let ark = MockArk::start();
    // Every generated CA has the same name: the impostor's certificate
    // names the right issuer, and only the signature check can catch it.
    type Env<'a> = Vec<(&'a str, &'a str)>;
    let cases: [(&str, Env, &str); 2] = [
        (
            "the system trust store",
            vec![("REDIS_URL", url.as_str())],
            "UnknownIssuer",
        ),
        (
            "another CA of the same name",
            vec![
                ("REDIS_URL", url.as_str()),
                ("REDIS_TLS_CA_FILE", other_ca.as_str()),
            ],
            "BadSignature",
        ),
    ];
    for (i, (case, env, why)) in cases.iter().enumerate() {
        let svc = live_service(&ark.base_url(), env);
        // The handshake fails on the certificate (not on the network): the
        // worker logs why once, and keeps retrying in the background.
        let line = wait_for_log_line(
            &svc,
            &format!("{case}: the certificate refusal in the log"),
            &["Redis not connected", "invalid peer certificate"],
        );
        assert!(line.contains(why), "{case}: {why} expected in {line}");
        assert_eq!(
            svc.cache_health(),
            json!({"status": "degraded", "backends": ["memory", "redis"], "hit_rate": 0.0}),
            "{case}"
        );
        assert_eq!(svc.redis_up(), Some(0.0), "{case}");
        let r = svc.ask(&format!("没有证书也要回答 {i}"));
        assert_eq!(r.header("x-cache"), Some("MISS"), "{case}");
        assert!(
            svc.log().lines().all(|l| !l.contains("Redis connected")),
            "{case}: the link never came up"
        );
        assert_eq!(svc.redis_up(), Some(0.0), "{case}");
    }
    assert_eq!(ark.calls(), 2, "every answer came from the upstream");
    assert!(
        cached_keys(&redis).trim().is_empty(),
        "nothing reached Redis"
    );
}

#[test]
fn a_server_requiring_client_certificates_takes_the_client_pair() {
    let redis = RedisServer::options().require_client_cert().start();
    let tls = redis.tls_files().expect("tls").clone();
    let (ca, cert, key) = (
        path_str(&tls.ca_cert),
        path_str(&tls.client_cert),
        path_str(&tls.client_key),
    );
    let url = redis.url();
    let ark = MockArk::start();

    // The server's certificate is trusted, but the worker has none to show.
    let no_cert = live_service(
        &ark.base_url(),
        &[
            ("REDIS_URL", url.as_str()),
            ("REDIS_TLS_CA_FILE", ca.as_str()),
        ],
    );
    // The server ends the handshake with TLS 1.3's `certificate_required`.
    wait_for_log_line(
        &no_cert,
        "the refused handshake in the log",
        &["Redis not connected", "CertificateRequired"],
    );
    assert_eq!(no_cert.cache_health()["status"], "degraded");
    assert_eq!(no_cert.redis_up(), Some(0.0));

    let mutual = live_service(
        &ark.base_url(),
        &[
            ("REDIS_URL", url.as_str()),
            ("REDIS_TLS_CA_FILE", ca.as_str()),
            ("REDIS_TLS_CERT_FILE", cert.as_str()),
            ("REDIS_TLS_KEY_FILE", key.as_str()),
        ],
    );
    wait_for("the mutual-TLS link up", DEADLINE, || {
        (mutual.redis_up() == Some(1.0)).then_some(())
    });
    assert_eq!(mutual.cache_health()["status"], "healthy");
    let line = wait_for_log_line(&mutual, "the connect log line", &["Redis connected"]);
    assert!(line.contains("\"client_cert\":true"), "{line}");
    let r = mutual.ask("双向认证");
    assert_eq!(r.header("x-cache"), Some("MISS"));
    wait_for("an entry in Redis", DEADLINE, || {
        (!cached_keys(&redis).trim().is_empty()).then_some(())
    });
    // Still refused without the client certificate.
    assert_eq!(no_cert.redis_up(), Some(0.0));
}

#[test]
fn tls_files_with_a_plaintext_url_are_refused_at_start() {
    let redis = RedisServer::start();
    let pki = tempfile::tempdir().expect("temp dir");
    let ca = path_str(&TlsFiles::generate(pki.path()).ca_cert);
    let url = redis.url();
    assert!(url.starts_with("redis://"), "{url}");
    let ark = MockArk::start();
    let svc = live_service(
        &ark.base_url(),
        &[
            ("REDIS_URL", url.as_str()),
            ("REDIS_TLS_CA_FILE", ca.as_str()),
        ],
    );
    // The worker started (no crash loop) and said what is wrong.
    let line = wait_for_log_line(
        &svc,
        "the configuration error in the log",
        &["Redis is misconfigured", "REDIS_TLS_CA_FILE", "rediss://"],
    );
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(
        svc.sup.events("worker_exited").is_empty(),
        "the worker keeps running: {:?}",
        svc.sup.events("worker_exited")
    );
    // It runs without Redis rather than over a plaintext link that was
    // meant to be encrypted.
    assert_eq!(
        svc.cache_health(),
        json!({"status": "healthy", "backends": ["memory"], "hit_rate": 0.0})
    );
    assert_eq!(svc.redis_up(), None, "no link, no ai_redis_up");
    let r = svc.ask("明文不行");
    assert_eq!(r.header("x-cache"), Some("MISS"));
    assert!(cached_keys(&redis).trim().is_empty());
}
