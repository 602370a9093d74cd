//! The upstream over TLS, as Ark's endpoint is reached (docs/api.md,
//! `UPSTREAM_HTTP2`): the mock Ark serves TLS with a throwaway CA and
//! offers `h2` and `http/1.1` by ALPN. On `auto` the worker's client
//! agrees on `h2` and reuses those connections; a burst on a cold pool
//! opens one per call, since the pool cannot know the protocol before the
//! handshake; `prior-knowledge` offers only `h2`, so a burst shares one
//! connection; `off` agrees on `http/1.1`; and the certificate is really
//! checked: without the test CA in `SSL_CERT_FILE` no call gets through.

mod helper;

use std::time::Duration;

use heartalk_e2e::mock_ark::{Behavior, MockArk};
use heartalk_e2e::redis_server::TlsFiles;
use helper::*;

/// Calls made at once: more than one HTTP/1.1 connection could carry.
const CALLS: usize = 6;

fn tls_ark(dir: &std::path::Path) -> (MockArk, TlsFiles) {
    let files = TlsFiles::generate(dir);
    let ark = MockArk::start_tls(&files.server_cert, &files.server_key);
    // Slow enough that the calls overlap.
    ark.set(Behavior::success().with_latency(Duration::from_millis(300)));
    (ark, files)
}

/// `CALLS` generate requests at once (prompts named by `round`, so none
/// is answered from the response cache); their statuses.
fn concurrent_calls(svc: &Service, round: &str) -> Vec<u16> {
    std::thread::scope(|s| {
        let calls: Vec<_> = (0..CALLS)
            .map(|i| s.spawn(move || svc.generate(&format!("hello {round} {i}")).status))
            .collect();
        calls.into_iter().map(|c| c.join().unwrap()).collect()
    })
}

fn versions(ark: &MockArk) -> Vec<String> {
    ark.requests()
        .iter()
        .map(|r| r["version"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn auto_agrees_on_h2_by_alpn_and_reuses_its_connections() {
    let dir = tempfile::tempdir().unwrap();
    let (ark, files) = tls_ark(dir.path());
    let ca = files.ca_cert.display().to_string();
    let svc = live_service(&ark.base_url(), &[("SSL_CERT_FILE", &ca)]);
    assert_eq!(concurrent_calls(&svc, "cold"), vec![200; CALLS]);
    let opened = ark.alpn();
    assert!(!opened.is_empty() && opened.len() <= CALLS, "{opened:?}");
    assert!(opened.iter().all(|p| p == "h2"), "{opened:?}");
    // Warm: more calls, at once too, ride the connections already open.
    assert_eq!(concurrent_calls(&svc, "warm"), vec![200; CALLS]);
    assert_eq!(ark.alpn().len(), opened.len());
    assert_eq!(versions(&ark), vec!["HTTP/2.0"; 2 * CALLS]);
}

#[test]
fn prior_knowledge_over_tls_carries_a_cold_burst_on_one_connection() {
    let dir = tempfile::tempdir().unwrap();
    let (ark, files) = tls_ark(dir.path());
    let ca = files.ca_cert.display().to_string();
    let svc = live_service(
        &ark.base_url(),
        &[
            ("SSL_CERT_FILE", &ca),
            ("UPSTREAM_HTTP2", "prior-knowledge"),
        ],
    );
    assert_eq!(concurrent_calls(&svc, "cold"), vec![200; CALLS]);
    assert_eq!(ark.alpn(), ["h2"], "one TLS connection, h2 by ALPN");
    assert_eq!(versions(&ark), vec!["HTTP/2.0"; CALLS]);
}

#[test]
fn upstream_http2_off_agrees_on_http_1_1() {
    let dir = tempfile::tempdir().unwrap();
    let (ark, files) = tls_ark(dir.path());
    let ca = files.ca_cert.display().to_string();
    let svc = live_service(
        &ark.base_url(),
        &[("SSL_CERT_FILE", &ca), ("UPSTREAM_HTTP2", "off")],
    );
    assert_eq!(concurrent_calls(&svc, "cold"), vec![200; CALLS]);
    let alpn = ark.alpn();
    assert!(
        alpn.len() > 1,
        "concurrent HTTP/1.1 calls need connections: {alpn:?}"
    );
    assert!(alpn.iter().all(|p| p == "http/1.1"), "{alpn:?}");
}

#[test]
fn a_server_certificate_from_an_unknown_ca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (ark, _files) = tls_ark(dir.path());
    // Another CA of the same name: only a real signature check tells.
    let other = TlsFiles::generate(&dir.path().join("other"));
    let ca = other.ca_cert.display().to_string();
    let svc = live_service(&ark.base_url(), &[("SSL_CERT_FILE", &ca)]);
    let r = svc.generate("hello");
    assert!(r.status >= 500, "{} {}", r.status, r.body);
    assert!(ark.requests().is_empty(), "no call reached the mock");
}
