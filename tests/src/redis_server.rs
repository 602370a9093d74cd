//! A real `redis-server` for the tests: started on a free 127.0.0.1 port
//! in a temp dir, with persistence off, killed and reaped on drop. It can
//! be stopped and started again on the same port (the "Redis went away and
//! came back" tests). [`RedisServer::options`] adds a password
//! (`requirepass`) and a data dir of the test's own (whose `dump.rdb`, if
//! any, the server loads when it starts), or TLS only (`--port 0
//! --tls-port`), with a throwaway CA made by the `openssl` CLI
//! ([`TlsFiles`]) and optionally client certificates required.

use std::net::{SocketAddr, TcpStream};

use crate::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    tls: Option<ServerTls>,
    child: Option<Child>,
}

/// A TLS server's material and whether it requires client certificates.
struct ServerTls {
    files: TlsFiles,
    require_client_cert: bool,
}

/// How to start a [`RedisServer`]: `RedisServer::options().password("s").start()`.
#[derive(Default)]
pub struct RedisOptions {
    password: Option<String>,
    dir: Option<tempfile::TempDir>,
    tls: bool,
    require_client_cert: bool,
}

/// Throwaway TLS material in a directory, made with the `openssl` CLI
/// (P-256 keys, valid for two days): a CA; a server certificate for
/// `IP:127.0.0.1` and `DNS:localhost` signed by it; a client certificate
/// (`clientAuth`) signed by it. The keys are unencrypted PKCS#8 PEM.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca_cert: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

/// The `openssl` configuration of [`TlsFiles::generate`]: explicit
/// extensions, so the result does not depend on the system openssl.cnf.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
";

impl TlsFiles {
    /// Makes a new CA and the certificates it signs in `dir` (created if
    /// needed). Two calls on two dirs give two CAs with different keys but
    /// the same name (`CN=heartalk-test-ca`): one's certificates name the
    /// other as issuer, so only a real signature check tells them apart.
    pub fn generate(dir: &Path) -> TlsFiles {
        std::fs::create_dir_all(dir).expect("tls dir");
        let cnf = dir.join("openssl.cnf");
        std::fs::write(&cnf, OPENSSL_CNF).expect("write openssl.cnf");
        let f = |name: &str| dir.join(name);
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
        ];
        openssl(
            &[
                "req",
                "-x509",
                "-new",
                "-days",
                "2",
                "-subj",
                "/CN=heartalk-test-ca",
            ],
            &ec,
            &[
                ("-config", &cnf),
                ("-extensions", Path::new("ca")),
                ("-keyout", &f("ca.key")),
                ("-out", &f("ca.crt")),
            ],
        );
        for (who, cn) in [("server", "127.0.0.1"), ("client", "heartalk-test-client")] {
            let subj = format!("/CN={cn}");
            openssl(
                &["req", "-new", "-subj", &subj],
                &ec,
                &[
                    ("-config", &cnf),
                    ("-keyout", &f(&format!("{who}.key"))),
                    ("-out", &f(&format!("{who}.csr"))),
                ],
            );
            openssl(
                &["x509", "-req", "-days", "2", "-CAcreateserial"],
                &[],
                &[
                    ("-in", &f(&format!("{who}.csr"))),
                    ("-CA", &f("ca.crt")),
                    ("-CAkey", &f("ca.key")),
                    ("-extfile", &cnf),
                    ("-extensions", Path::new(who)),
                    ("-out", &f(&format!("{who}.crt"))),
                ],
            );
        }
        TlsFiles {
            ca_cert: f("ca.crt"),
            server_cert: f("server.crt"),
            server_key: f("server.key"),
            client_cert: f("client.crt"),
            client_key: f("client.key"),
        }
    }
}

/// Runs `openssl` with `args`, then `more`, then `paths` as flag/path
/// pairs; panics with its stderr when it fails.
fn openssl(args: &[&str], more: &[&str], paths: &[(&str, &Path)]) {
    let mut cmd = Command::new("openssl");
    cmd.args(args).args(more);
    for (flag, path) in paths {
        cmd.arg(flag).arg(path);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .expect("openssl on PATH (scripts/deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RedisOptions {
    /// Clients must authenticate with `password` (`--requirepass`).
    pub fn password(mut self, password: &str) -> RedisOptions {
        self.password = Some(password.to_string());
        self
    }

    /// The server's data dir (default: a new temp dir); a `dump.rdb` in it
    /// is loaded at start. The server owns the dir from here on.
    pub fn dir(mut self, dir: tempfile::TempDir) -> RedisOptions {
        self.dir = Some(dir);
        self
    }

    /// TLS only: the plaintext port is off (`--port 0`) and the server
    /// listens with `--tls-port`, its certificate signed by a new CA
    /// ([`RedisServer::tls_files`]); clients need not present one.
    pub fn tls(mut self) -> RedisOptions {
        self.tls = true;
        self
    }

    /// [`RedisOptions::tls`], and clients must present a certificate signed
    /// by the CA (`--tls-auth-clients yes`: mutual TLS).
    pub fn require_client_cert(mut self) -> RedisOptions {
        self.tls = true;
        self.require_client_cert = true;
        self
    }

    /// Starts redis-server (from PATH) and waits until it answers.
    pub fn start(self) -> RedisServer {
        let dir = self
            .dir
            .unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let tls = self.tls.then(|| ServerTls {
            files: TlsFiles::generate(&dir.path().join("tls")),
            require_client_cert: self.require_client_cert,
        });
        let mut r = RedisServer {
            port: free_port(),
            password: self.password,
            dir,
            tls,
            child: None,
        };
        r.restart();
        r
    }
}

impl RedisServer {
    /// Starts redis-server (from PATH), no password, and waits until it answers.
    pub fn start() -> RedisServer {
        RedisOptions::default().start()
    }

    /// Options for a server with a password or a given data dir.
    pub fn options() -> RedisOptions {
        RedisOptions::default()
    }

    /// `redis://[:password@]127.0.0.1:PORT/0` (`rediss://` with TLS), the
    /// password percent-encoded.
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(p) => {
                let enc: String = p
                    .bytes()
                    .map(|b| {
                        if b.is_ascii_alphanumeric() {
                            (b as char).to_string()
                        } else {
                            format!("%{b:02X}")
                        }
                    })
                    .collect();
                format!(":{enc}@")
            }
            None => String::new(),
        };
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://{auth}127.0.0.1:{}/0", self.port)
    }

    /// The TLS material of a server started with [`RedisOptions::tls`].
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref().map(|t| &t.files)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// Kills the server (SIGKILL: no goodbye to clients) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)starts the server on the same port and data dir.
    pub fn restart(&mut self) {
        self.kill();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                cmd.args(["--port", &self.port.to_string()]);
            }
            Some(tls) => {
                cmd.args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(&tls.files.server_cert)
                    .arg("--tls-key-file")
                    .arg(&tls.files.server_key)
                    .arg("--tls-ca-cert-file")
                    .arg(&tls.files.ca_cert)
                    .args([
                        "--tls-auth-clients",
                        if tls.require_client_cert { "yes" } else { "no" },
                    ]);
            }
        }
        cmd.args([
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            // Serve `redis-cli --rdb` (backup.sh) at once instead of after 5 s.
            "--repl-diskless-sync-delay",
            "0",
        ])
        .arg("--dir")
        .arg(self.dir.path());
        if let Some(p) = &self.password {
            cmd.args(["--requirepass", p]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server on PATH (scripts/deps.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.cli(&["PING"]).trim() == "PONG" {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "redis-server did not answer PING on port {}{}",
            self.port,
            if self.tls.is_some() {
                " (TLS: does this redis-server build support --tls-port?)"
            } else {
                ""
            }
        );
    }

    /// Runs `redis-cli` against the server (authenticated when it has a
    /// password, over TLS with the client certificate when it has TLS);
    /// its stdout, empty when nothing listens on the port.
    pub fn cli(&self, args: &[&str]) -> String {
        if TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).is_err() {
            return String::new();
        }
        self.try_cli(args).unwrap_or_default()
    }

    /// Runs `redis-cli` against the server; its stdout, or `None` when
    /// redis-cli failed (could not connect, for one). A Redis error reply
    /// is output like any other.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-p", &self.port.to_string()]);
        if let Some(tls) = &self.tls {
            cmd.arg("--tls")
                .arg("--cacert")
                .arg(&tls.files.ca_cert)
                .arg("--cert")
                .arg(&tls.files.client_cert)
                .arg("--key")
                .arg(&tls.files.client_key);
        }
        if let Some(p) = &self.password {
            // Through the environment, like scripts/lib/redis.sh: not argv.
            cmd.arg("--no-auth-warning").env("REDISCLI_AUTH", p);
        }
        let out = cmd
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli on PATH");
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
