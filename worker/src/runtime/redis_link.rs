//! The worker's link to Redis (`REDIS_URL`): the shared store behind the
//! response cache's second level and the cross-replica rate limits.
//!
//! Redis is an optimisation, never a dependency a request can fail on. Every
//! command runs under a short deadline (`REDIS_TIMEOUT_MS`, default 200 ms);
//! the first failure marks the link down and callers fall back at once
//! (memory cache, fleet-local counters) instead of each waiting out its own
//! timeout. A background task reconnects and pings every second, so the
//! link comes back by itself when Redis does. `/api/v1/health` reports the
//! cache `degraded` while the link is down, and `ai_redis_up` says the same
//! to Prometheus.
//!
//! A `rediss://` URL makes the link TLS (rustls). The server's certificate
//! is verified against the system trust store, or, with
//! `REDIS_TLS_CA_FILE`, against that CA only; `REDIS_TLS_CERT_FILE` and
//! `REDIS_TLS_KEY_FILE` add a client certificate (mutual TLS). The files
//! are read and checked once, when the link is built ([`RedisLink::new`]):
//! a bad one is a [`LinkConfigError`] that names the variable, and the
//! worker runs without Redis, as for a bad `REDIS_URL`.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{ClientTlsConfig, ConnectionAddr, IntoConnectionInfo, TlsCertificates};

use crate::settings::RedisTlsFiles;
use crate::telemetry;

/// Why `REDIS_URL` and its TLS files cannot make a link. Found at start-up,
/// before any connection; each message names the variable to fix.
#[derive(Debug, thiserror::Error)]
pub enum LinkConfigError {
    #[error("REDIS_URL is not a valid Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// TLS files with a plaintext URL: refused rather than ignored, so a
    /// link meant to be encrypted never silently runs in the clear.
    #[error(
        "{var} is set but REDIS_URL is not a rediss:// URL: TLS files apply only to a TLS link (use rediss://, or unset {var})"
    )]
    NotTls { var: &'static str },
    /// `rediss://...#insecure` (no certificate verification): not built in.
    #[error(
        "REDIS_URL asks for #insecure (TLS without certificate verification), which this build does not support: trust a private CA with REDIS_TLS_CA_FILE instead"
    )]
    Insecure,
    #[error("{set} is set without {missing}: a client certificate needs its private key")]
    HalfClientPair {
        set: &'static str,
        missing: &'static str,
    },
    #[error("{var}={}: cannot read it: {source}", path.display())]
    Read {
        var: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{var}={}: {detail}", path.display())]
    BadPem {
        var: &'static str,
        path: PathBuf,
        detail: String,
    },
    /// The files parse one by one but the redis crate refuses them together.
    #[error("the Redis TLS files are not usable together: {0}")]
    Tls(#[source] redis::RedisError),
}

/// How the link authenticates the server (for logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `redis://`: no TLS.
    Plain,
    /// `rediss://`, the server verified against the system trust store.
    TlsSystemRoots,
    /// `rediss://`, the server verified against `REDIS_TLS_CA_FILE` only.
    TlsPrivateCa,
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Plain => "plaintext",
            Transport::TlsSystemRoots => "tls (system trust store)",
            Transport::TlsPrivateCa => "tls (REDIS_TLS_CA_FILE)",
        })
    }
}

/// How often the maintenance task checks (and, when down, reconnects).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// A shared, self-healing Redis connection.
pub struct RedisLink {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    up: AtomicBool,
    timeout: Duration,
    /// The URL without its password, for logs.
    display: String,
    transport: Transport,
    /// Whether a client certificate is presented (mutual TLS).
    client_cert: bool,
}

impl RedisLink {
    /// Parses `url` and reads and checks the TLS files of `tls` (no
    /// connection yet: [`RedisLink::maintain`] connects). Refused: a bad
    /// URL, `#insecure`, TLS files with a `redis://` URL, half a client
    /// certificate pair, an unreadable file, a file without the expected
    /// PEM block or whose PEM does not parse.
    ///
    /// `password` (`REDIS_PASSWORD`) is applied to the connection without
    /// ever being written into a URL, so no URL that could reach a log
    /// holds it.
    pub fn new(
        url: &str,
        password: Option<&str>,
        tls: &RedisTlsFiles,
        timeout: Duration,
    ) -> Result<RedisLink, LinkConfigError> {
        let mut info = url.into_connection_info().map_err(LinkConfigError::Url)?;
        if let Some(pw) = password {
            let settings = info.redis_settings().clone().set_password(pw);
            info = info.set_redis_settings(settings);
        }
        let plain = redis::Client::open(info.clone()).map_err(LinkConfigError::Url)?;
        let (is_tls, insecure) = match plain.get_connection_info().addr() {
            ConnectionAddr::TcpTls { insecure, .. } => (true, *insecure),
            _ => (false, false),
        };
        if insecure {
            return Err(LinkConfigError::Insecure);
        }
        if !is_tls {
            if let Some(var) = tls.set_vars().first() {
                return Err(LinkConfigError::NotTls { var });
            }
        }
        let (client, transport) = if tls.is_empty() {
            let transport = if is_tls {
                Transport::TlsSystemRoots
            } else {
                Transport::Plain
            };
            (plain, transport)
        } else {
            let certs = load_tls_files(url, tls)?;
            let client =
                redis::Client::build_with_tls(info, certs).map_err(LinkConfigError::Tls)?;
            let transport = if tls.ca_file.is_some() {
                Transport::TlsPrivateCa
            } else {
                Transport::TlsSystemRoots
            };
            (client, transport)
        };
        Ok(RedisLink {
            client,
            conn: Mutex::new(None),
            up: AtomicBool::new(false),
            timeout,
            // The URL as logs may show it: no password (the log writer
            // masks every line too).
            display: shared::secrets::redact_urls(url).into_owned(),
            transport,
            client_cert: tls.cert_file.is_some(),
        })
    }

    /// How the server is authenticated (for logs and tests).
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// Whether the last command or probe succeeded.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    fn connection(&self) -> Option<MultiplexedConnection> {
        if !self.is_up() {
            return None;
        }
        self.conn.lock().ok()?.clone()
    }

    fn mark_down(&self, why: &dyn std::fmt::Display) {
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(redis = %self.display, error = %why, "Redis unreachable; falling back to local cache and limits");
            telemetry::redis_up(false);
        }
        if let Ok(mut c) = self.conn.lock() {
            *c = None;
        }
    }

    /// Runs `op` on the connection under the deadline. `None` when the link
    /// is down, the command failed or it timed out (the link is then marked
    /// down until the next successful probe).
    pub async fn run<T, F, Fut>(&self, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let conn = self.connection()?;
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => Some(v),
            // The link is down only when the connection is: a command
            // error from a live server (OOM under `noeviction`, a script
            // error) fails that command alone, and the caller falls back
            // for it.
            Ok(Err(e)) if link_failure(&e) => {
                self.mark_down(&e);
                None
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Redis command failed; falling back for this request");
                None
            }
            Err(_) => {
                self.mark_down(&format_args!("no answer within {:?}", self.timeout));
                None
            }
        }
    }

    async fn probe(&self) -> Result<(), String> {
        let conn = match self.conn.lock().ok().and_then(|c| c.clone()) {
            Some(c) => c,
            None => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.timeout.max(Duration::from_millis(500))))
                    .set_response_timeout(Some(self.timeout));
                let c = tokio::time::timeout(
                    self.timeout.max(Duration::from_millis(500)),
                    self.client
                        .get_multiplexed_async_connection_with_config(&config),
                )
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| e.to_string())?;
                if let Ok(mut slot) = self.conn.lock() {
                    *slot = Some(c.clone());
                }
                c
            }
        };
        let mut c = conn;
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.timeout, ping.query_async::<String>(&mut c)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("PING timed out".to_string()),
        }
    }

    /// Connects, then keeps checking: forever, in the background.
    ///
    /// A link that has not come up logs why, once per distinct error: a
    /// TLS or password mistake (an untrusted CA, a wrong host name, a
    /// missing client certificate, `WRONGPASS`) must be visible without
    /// flooding the log every second.
    pub async fn maintain(self: std::sync::Arc<Self>) {
        telemetry::redis_up(false);
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_failure: Option<String> = None;
        loop {
            tick.tick().await;
            match self.probe().await {
                Ok(()) => {
                    last_failure = None;
                    if !self.up.swap(true, Ordering::Relaxed) {
                        tracing::info!(
                            redis = %self.display,
                            transport = %self.transport,
                            client_cert = self.client_cert,
                            "Redis connected"
                        );
                        telemetry::redis_up(true);
                    }
                }
                Err(e) => {
                    let was_up = self.is_up();
                    self.mark_down(&e);
                    if !was_up && last_failure.as_deref() != Some(e.as_str()) {
                        tracing::warn!(
                            redis = %self.display,
                            transport = %self.transport,
                            error = %e,
                            "Redis not connected; using the local cache and limits until it is"
                        );
                    }
                    last_failure = Some(e);
                }
            }
        }
    }

    /// Waits until the link is up or `deadline` passes (start-up, tests).
    pub async fn wait_up(&self, deadline: Duration) -> bool {
        let until = tokio::time::Instant::now() + deadline;
        while !self.is_up() && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.is_up()
    }
}

/// Reads the files of `tls` into what the redis crate takes, checking each
/// on its own so an error names the variable at fault.
fn load_tls_files(url: &str, tls: &RedisTlsFiles) -> Result<TlsCertificates, LinkConfigError> {
    let client_pair = match (&tls.cert_file, &tls.key_file) {
        (None, None) => None,
        (Some(_), None) => {
            return Err(LinkConfigError::HalfClientPair {
                set: "REDIS_TLS_CERT_FILE",
                missing: "REDIS_TLS_KEY_FILE",
            });
        }
        (None, Some(_)) => {
            return Err(LinkConfigError::HalfClientPair {
                set: "REDIS_TLS_KEY_FILE",
                missing: "REDIS_TLS_CERT_FILE",
            });
        }
        (Some(cert), Some(key)) => Some((cert, key)),
    };
    // Each part is run through the redis crate's own parser alone, so a
    // bad one is reported against its variable rather than as a whole.
    let check = |var: &'static str, path: &Path, certs: TlsCertificates| {
        redis::Client::build_with_tls(url, certs)
            .map(|_| ())
            .map_err(|e| LinkConfigError::BadPem {
                var,
                path: path.to_path_buf(),
                detail: e.to_string(),
            })
    };
    let root_cert = match &tls.ca_file {
        None => None,
        Some(path) => {
            let pem = read_pem(
                "REDIS_TLS_CA_FILE",
                path,
                &["CERTIFICATE"],
                "no PEM CERTIFICATE block",
            )?;
            check(
                "REDIS_TLS_CA_FILE",
                path,
                TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.clone()),
                },
            )?;
            Some(pem)
        }
    };
    let client_tls = match client_pair {
        None => None,
        Some((cert_path, key_path)) => {
            let client_cert = read_pem(
                "REDIS_TLS_CERT_FILE",
                cert_path,
                &["CERTIFICATE"],
                "no PEM CERTIFICATE block",
            )?;
            let client_key = read_pem(
                "REDIS_TLS_KEY_FILE",
                key_path,
                &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"],
                "no unencrypted PEM private key (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY block); an encrypted key must be decrypted first",
            )?;
            let pair = ClientTlsConfig {
                client_cert,
                client_key,
            };
            check(
                "REDIS_TLS_CERT_FILE",
                cert_path,
                TlsCertificates {
                    client_tls: Some(pair.clone()),
                    root_cert: None,
                },
            )?;
            Some(pair)
        }
    };
    Ok(TlsCertificates {
        client_tls,
        root_cert,
    })
}

/// The bytes of the PEM file `path` (`var`'s value), which must hold a
/// block with one of `labels`. The redis crate's parser skips blocks of
/// other kinds, so without this check a file of the wrong kind (a key as
/// the CA, an empty file) would fail only at every connection attempt.
fn read_pem(
    var: &'static str,
    path: &Path,
    labels: &[&str],
    missing: &str,
) -> Result<Vec<u8>, LinkConfigError> {
    let bytes = std::fs::read(path).map_err(|source| LinkConfigError::Read {
        var,
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let has_block = labels
        .iter()
        .any(|label| text.contains(&format!("-----BEGIN {label}-----")));
    if !has_block {
        return Err(LinkConfigError::BadPem {
            var,
            path: path.to_path_buf(),
            detail: missing.to_string(),
        });
    }
    Ok(bytes)
}

/// Whether an error means the connection (not just the command) failed.
fn link_failure(e: &redis::RedisError) -> bool {
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_logs() {
        let display = |url: &str| shared::secrets::redact_urls(url).into_owned();
        assert_eq!(
            display("redis://:s3cret@redis:6379/0"),
            "redis://***@redis:6379/0"
        );
        assert_eq!(
            display("redis://app:pw@10.0.0.1:6379"),
            "redis://***@10.0.0.1:6379"
        );
        assert_eq!(
            display("redis+unix:///run/redis.sock?db=0&password=pw"),
            "redis+unix:///run/redis.sock?db=0&password=***"
        );
        assert_eq!(display("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    /// A throwaway CA, made for these tests only (`openssl req -x509`,
    /// P-256, valid to 2126); nothing trusts it.
    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----
MIIBlzCCAT2gAwIBAgIUW2p5eMkdh+xJrZ4XoVPQE8YVnAwwCgYIKoZIzj0EAwIw
IDEeMBwGA1UEAwwVaGVhcnRhbGstdW5pdC10ZXN0LWNhMCAXDTI2MTEyODE1MjM0
MloYDzIxMjYxMTA0MTUyMzQyWjAgMR4wHAYDVQQDDBVoZWFydGFsay11bml0LXRl
c3QtY2EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATlTm//aqz0j5uFXX5idwON
5sQG6Q5uLCuZ9WH5bdqTA390hmzCreFz03CxG6sxB/2YknbdMiNxY4O5qnimz7Qt
o1MwUTAdBgNVHQ4EFgQUvNwlXOvT4OMkdOKvIRQX4vgA5eQwHwYDVR0jBBgwFoAU
vNwlXOvT4OMkdOKvIRQX4vgA5eQwDwYDVR0TAQH/BAUwAwEB/zAKBggqhkjOPQQD
AgNIADBFAiA2NxVmAmt/OYut8XMfm9sUze53qMt2ZLFdNBu48szRCgIhAIwVeeki
su6RtNKwFfTaXBKegZI9giBiL2R4gzJwGUwu
-----END CERTIFICATE-----
";

    /// A client certificate signed by [`TEST_CA`], and its key (made for
    /// these tests, protecting nothing).
    const TEST_CLIENT_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBPzCB5wIUT7xW3QRiUZeCnGmnPU/pcl8OIREwCgYIKoZIzj0EAwIwIDEeMBwG
A1UEAwwVaGVhcnRhbGstdW5pdC10ZXN0LWNhMCAXDTI2MTEyODE1MjM0MloYDzIx
MjYxMTA0MTUyMzQyWjAkMSIwIAYDVQQDDBloZWFydGFsay11bml0LXRlc3QtY2xp
ZW50MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEtTyRZWWgDETDKzFc6dGbIzWt
+fJsTBsGxZh+lW+fW+nSrVvE7kbo5EMuaDxATKrJik539hcAO7IhjpIgGhqwljAK
BggqhkjOPQQDAgNHADBEAiBK3Z20aQNqCDZqbNxAGTPlcKWujlyY9aEG6As/uMR4
jQIgBidEbZ3dVw8HQYNwPM9jr6GM8dR4E6M1dJyitFRYtZ8=
-----END CERTIFICATE-----
";
    const TEST_CLIENT_KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgH/5YFQTnd8VqeSLl
GTWcR3HfqL0UkvlG26rNhpbutVahRANCAAS1PJFlZaAMRMMrMVzp0ZsjNa358mxM
GwbFmH6Vb59b6dKtW8TuRujkQy5oPEBMqsmKTnf2FwA7siGOkiAaGrCW
-----END PRIVATE KEY-----
";

    const TLS_URL: &str = "rediss://127.0.0.1:6380/0";

    /// Writes `files` (name, text) into a new temp dir.
    fn files(list: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in list {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    fn link(url: &str, tls: &RedisTlsFiles) -> Result<RedisLink, LinkConfigError> {
        RedisLink::new(url, None, tls, Duration::from_millis(10))
    }

    /// The error's message, which must name `var`.
    fn refused(url: &str, tls: &RedisTlsFiles, var: &str) -> (LinkConfigError, String) {
        let e = link(url, tls).err().expect("refused");
        let msg = e.to_string();
        assert!(msg.contains(var), "{msg:?} names {var}");
        (e, msg)
    }

    #[test]
    fn rediss_without_files_trusts_the_system_store() {
        let link = link(TLS_URL, &RedisTlsFiles::default()).unwrap();
        assert_eq!(link.transport(), Transport::TlsSystemRoots);
        assert!(!link.client_cert);
        // A URL with a password: what logs show of it has none.
        let url = "rediss://:pw@cache.example:6380/0";
        let with_password =
            RedisLink::new(url, None, &RedisTlsFiles::default(), Duration::ZERO).unwrap();
        assert_eq!(with_password.display, "rediss://***@cache.example:6380/0");
    }

    #[test]
    fn a_private_ca_and_a_client_pair_are_accepted() {
        let dir = files(&[
            ("ca.pem", TEST_CA),
            ("client.pem", TEST_CLIENT_CERT),
            ("client.key", TEST_CLIENT_KEY),
        ]);
        let ca_only = RedisTlsFiles {
            ca_file: Some(dir.path().join("ca.pem")),
            ..Default::default()
        };
        assert_eq!(
            link(TLS_URL, &ca_only).unwrap().transport(),
            Transport::TlsPrivateCa
        );
        let mutual = RedisTlsFiles {
            ca_file: Some(dir.path().join("ca.pem")),
            cert_file: Some(dir.path().join("client.pem")),
            key_file: Some(dir.path().join("client.key")),
        };
        let l = link(TLS_URL, &mutual).unwrap();
        assert_eq!(l.transport(), Transport::TlsPrivateCa);
        assert!(l.client_cert);
        // A client pair with the system store (a public CA signs the server).
        let pair_only = RedisTlsFiles {
            ca_file: None,
            ..mutual
        };
        assert_eq!(
            link(TLS_URL, &pair_only).unwrap().transport(),
            Transport::TlsSystemRoots
        );
    }

    #[test]
    fn tls_files_with_a_plaintext_url_are_refused() {
        let dir = files(&[("ca.pem", TEST_CA)]);
        let tls = RedisTlsFiles {
            ca_file: Some(dir.path().join("ca.pem")),
            ..Default::default()
        };
        let (e, msg) = refused("redis://127.0.0.1:6379/0", &tls, "REDIS_TLS_CA_FILE");
        assert!(matches!(e, LinkConfigError::NotTls { .. }), "{e:?}");
        assert!(msg.contains("rediss://"), "{msg}");
        let key_only = RedisTlsFiles {
            key_file: Some(dir.path().join("ca.pem")),
            ..Default::default()
        };
        refused("redis://127.0.0.1:6379/0", &key_only, "REDIS_TLS_KEY_FILE");
    }

    #[test]
    fn insecure_tls_is_refused() {
        let (e, _) = refused(
            "rediss://127.0.0.1:6380/0#insecure",
            &RedisTlsFiles::default(),
            "REDIS_TLS_CA_FILE",
        );
        assert!(matches!(e, LinkConfigError::Insecure), "{e:?}");
    }

    #[test]
    fn unreadable_and_wrong_files_name_their_variable_and_path() {
        let dir = files(&[
            ("empty.pem", ""),
            ("key-as-ca.pem", TEST_CLIENT_KEY),
            (
                "bad-base64.pem",
                "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
            ),
            (
                "not-a-cert.pem",
                "-----BEGIN CERTIFICATE-----\naGVsbG8gd29ybGQ=\n-----END CERTIFICATE-----\n",
            ),
            (
                "encrypted.key",
                "-----BEGIN ENCRYPTED PRIVATE KEY-----\naGVsbG8=\n-----END ENCRYPTED PRIVATE KEY-----\n",
            ),
            ("client.pem", TEST_CLIENT_CERT),
            ("client.key", TEST_CLIENT_KEY),
        ]);
        let ca = |name: &str| RedisTlsFiles {
            ca_file: Some(dir.path().join(name)),
            ..Default::default()
        };
        let missing = dir.path().join("missing.pem");
        let (e, msg) = refused(TLS_URL, &ca("missing.pem"), "REDIS_TLS_CA_FILE");
        assert!(matches!(e, LinkConfigError::Read { .. }), "{e:?}");
        assert!(msg.contains(&missing.display().to_string()), "{msg}");
        for name in [
            "empty.pem",
            "key-as-ca.pem",
            "bad-base64.pem",
            "not-a-cert.pem",
        ] {
            let (e, msg) = refused(TLS_URL, &ca(name), "REDIS_TLS_CA_FILE");
            assert!(matches!(e, LinkConfigError::BadPem { .. }), "{name}: {e:?}");
            assert!(msg.contains(name), "{msg}");
        }
        let pair = |cert: &str, key: &str| RedisTlsFiles {
            ca_file: None,
            cert_file: Some(dir.path().join(cert)),
            key_file: Some(dir.path().join(key)),
        };
        let (e, _) = refused(
            TLS_URL,
            &pair("client.pem", "encrypted.key"),
            "REDIS_TLS_KEY_FILE",
        );
        assert!(matches!(e, LinkConfigError::BadPem { .. }), "{e:?}");
        refused(
            TLS_URL,
            &pair("client.key", "client.key"),
            "REDIS_TLS_CERT_FILE",
        );
        refused(
            TLS_URL,
            &pair("client.pem", "client.pem"),
            "REDIS_TLS_KEY_FILE",
        );
    }

    #[test]
    fn half_a_client_pair_is_refused() {
        let dir = files(&[
            ("client.pem", TEST_CLIENT_CERT),
            ("client.key", TEST_CLIENT_KEY),
        ]);
        let cert_only = RedisTlsFiles {
            cert_file: Some(dir.path().join("client.pem")),
            ..Default::default()
        };
        let (e, msg) = refused(TLS_URL, &cert_only, "REDIS_TLS_CERT_FILE");
        assert!(matches!(e, LinkConfigError::HalfClientPair { .. }), "{e:?}");
        assert!(msg.contains("REDIS_TLS_KEY_FILE"), "{msg}");
        let key_only = RedisTlsFiles {
            key_file: Some(dir.path().join("client.key")),
            ..Default::default()
        };
        refused(TLS_URL, &key_only, "REDIS_TLS_CERT_FILE");
    }

    #[test]
    fn a_bad_url_is_refused_up_front() {
        let none = RedisTlsFiles::default();
        assert!(matches!(
            RedisLink::new("not a url", None, &none, Duration::from_millis(10)),
            Err(LinkConfigError::Url(_))
        ));
        let link = RedisLink::new(
            "redis://127.0.0.1:1/0",
            None,
            &none,
            Duration::from_millis(10),
        )
        .unwrap();
        assert!(!link.is_up(), "down until the first successful probe");
        assert_eq!(link.transport(), Transport::Plain);
    }
}
