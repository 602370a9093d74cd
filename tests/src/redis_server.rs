//! A real `redis-server` for the tests: started on a free 127.0.0.1 port
//! in a temp dir, with persistence off, killed and reaped on drop. It can
//! be stopped and started again on the same port (the "Redis went away and
//! came back" tests). [`RedisServer::options`] adds a password
//! (`requirepass`) and a data dir of the test's own (whose `dump.rdb`, if
//! any, the server loads when it starts).

use std::net::{SocketAddr, TcpStream};

use crate::free_port;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct RedisServer {
    port: u16,
    password: Option<String>,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// How to start a [`RedisServer`]: `RedisServer::options().password("s").start()`.
#[derive(Default)]
pub struct RedisOptions {
    password: Option<String>,
    dir: Option<tempfile::TempDir>,
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

    /// Starts redis-server (from PATH) and waits until it answers.
    pub fn start(self) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            password: self.password,
            dir: self
                .dir
                .unwrap_or_else(|| tempfile::tempdir().expect("temp dir")),
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

    /// `redis://[:password@]127.0.0.1:PORT/0`, the password percent-encoded.
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
        format!("redis://{auth}127.0.0.1:{}/0", self.port)
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
        cmd.args([
            "--port",
            &self.port.to_string(),
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
        panic!("redis-server did not answer PING on port {}", self.port);
    }

    /// Runs `redis-cli` against the server (authenticated when it has a
    /// password); its stdout, empty when nothing listens on the port.
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
