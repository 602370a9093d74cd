//! A `heartalk run` under test: started on a temp config, its JSON events
//! followed, its CLI verbs run against it, killed and reaped on drop; and
//! reading the log files it writes.

use super::*;

/// A running supervisor and everything it logged.
pub struct Supervisor {
    pub child: Child,
    pub dir: tempfile::TempDir,
    events: Arc<Mutex<Vec<Value>>>,
    /// Every line the supervisor printed on stdout that is not its own event.
    other_stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Supervisor {
    /// Writes `config` to a temp dir and runs `heartalk run -c` on it.
    pub fn start(config: &str) -> Supervisor {
        Self::start_with(config, |_| {})
    }

    /// Like [`Supervisor::start`]; `tweak` may wrap or adjust the command.
    pub fn start_with(config: &str, tweak: impl FnOnce(&mut Command)) -> Supervisor {
        Self::spawn(config, None, tweak)
    }

    /// Runs the supervisor under a wrapper program (taskset, unshare ...).
    pub fn start_wrapped(config: &str, wrapper: &[&str]) -> Supervisor {
        Self::spawn(config, Some(wrapper), |_| {})
    }

    /// Runs `heartalk run -c <file>` on an existing config file.
    pub fn run_file(file: &Path, tweak: impl FnOnce(&mut Command)) -> Supervisor {
        let dir = tempfile::tempdir().expect("tempdir");
        Self::spawn_file(file.to_path_buf(), dir, None, tweak)
    }

    fn spawn(
        config: &str,
        wrapper: Option<&[&str]>,
        tweak: impl FnOnce(&mut Command),
    ) -> Supervisor {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("ecosystem.toml");
        // Every test supervisor gets its own control socket in its temp dir.
        let config = if config.contains("[supervisor]") || config.is_empty() {
            config.to_string()
        } else {
            format!(
                "[supervisor]\ncontrol_socket = {:?}\n\n{config}",
                dir.path().join("control.sock").display().to_string()
            )
        };
        std::fs::write(&file, config).expect("write config");
        Self::spawn_file(file, dir, wrapper, tweak)
    }

    fn spawn_file(
        file: PathBuf,
        dir: tempfile::TempDir,
        wrapper: Option<&[&str]>,
        tweak: impl FnOnce(&mut Command),
    ) -> Supervisor {
        let heartalk = workspace_bin("heartalk");
        let mut cmd = match wrapper {
            Some(w) => {
                let mut c = Command::new(w[0]);
                c.args(&w[1..]).arg(&heartalk);
                c
            }
            None => Command::new(&heartalk),
        };
        cmd.arg("run")
            .arg("-c")
            .arg(&file)
            .env_remove("PORT")
            .env("HEARTALK_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tweak(&mut cmd);
        let mut child = cmd.spawn().expect("spawn heartalk");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let ev = events.clone();
        let other_stdout = Arc::new(Mutex::new(Vec::new()));
        let others = other_stdout.clone();
        let out_reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                // Worker output shares this stream; keep the supervisor's
                // own events (target `heartalk` or `heartalk::*`).
                let own = serde_json::from_str::<Value>(&line).ok().filter(|v| {
                    let target = v["target"].as_str().unwrap_or("");
                    target == "heartalk" || target.starts_with("heartalk::")
                });
                match own {
                    Some(v) => ev.lock().unwrap().push(v),
                    None => others.lock().unwrap().push(line),
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let se = stderr.clone();
        let err_reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = BufReader::new(err).read_to_string(&mut s);
            se.lock().unwrap().push_str(&s);
        });
        Supervisor {
            child,
            dir,
            events,
            other_stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            status: None,
        }
    }

    /// Every event logged so far with this `event` name.
    pub fn events(&self, name: &str) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["event"] == name)
            .cloned()
            .collect()
    }

    /// Waits for the `n`-th (1-based) event called `name` that satisfies `pred`.
    pub fn wait_event_n(&mut self, name: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Value {
        let what = format!("event {name} #{n}");
        wait_for(&what, DEADLINE, || {
            let matching: Vec<Value> = self.events(name).into_iter().filter(|v| pred(v)).collect();
            matching.get(n - 1).cloned()
        })
    }

    pub fn wait_event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        self.wait_event_n(name, 1, pred)
    }

    /// The address the fleet listens on (from the `listening` event).
    pub fn addr(&mut self) -> SocketAddr {
        let ev = self.wait_event("listening", |_| true);
        ev["addr"]
            .as_str()
            .expect("addr")
            .parse()
            .expect("socket addr")
    }

    /// Waits until `n` workers have reported ready; returns their pids.
    pub fn wait_ready(&mut self, n: usize) -> Vec<i32> {
        self.wait_event("fleet_ready", |_| true);
        let ready = self.events("worker_ready");
        assert!(ready.len() >= n, "expected {n} ready workers: {ready:?}");
        ready
            .iter()
            .map(|v| v["pid"].as_i64().unwrap() as i32)
            .collect()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid()), sig)
            .expect("kill supervisor");
    }

    /// Waits for the supervisor to exit and returns its status.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let status = wait_for("supervisor exit", timeout, || {
            self.child.try_wait().expect("try_wait")
        });
        self.status = Some(status);
        // Everything the supervisor wrote is read once its pipes close. A
        // worker that outlives it would hold them open, hence the deadline.
        let deadline = std::time::Instant::now() + DEADLINE;
        for r in std::mem::take(&mut self.readers) {
            while !r.is_finished() && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if r.is_finished() {
                let _ = r.join();
            }
        }
        status
    }

    /// Stdout lines that are not the supervisor's own events (mirrored
    /// worker lines, with `[log] stdout = true`).
    pub fn other_stdout(&self) -> Vec<String> {
        self.other_stdout.lock().unwrap().clone()
    }

    /// Everything printed on stdout so far: the supervisor's events (as
    /// JSON lines) and the other lines.
    pub fn stdout_text(&self) -> String {
        let mut lines: Vec<String> = self
            .events
            .lock()
            .unwrap()
            .iter()
            .map(Value::to_string)
            .collect();
        lines.extend(self.other_stdout());
        lines.join("\n")
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Every worker pid the supervisor ever spawned.
    pub fn spawned_pids(&self) -> Vec<i32> {
        self.events("worker_spawned")
            .iter()
            .filter_map(|v| v["pid"].as_i64())
            .map(|p| p as i32)
            .collect()
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        if self.status.is_none() {
            let _ = kill(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Workers are in their own process groups; leave none behind. (Pids
        // logged from inside a pid namespace are not ours to kill.)
        if self
            .events("supervisor_start")
            .iter()
            .all(|v| v["pid1"] != true)
        {
            for pid in self.spawned_pids() {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

impl Supervisor {
    /// The config file the supervisor was started with (tests rewrite it
    /// before a reload).
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("ecosystem.toml")
    }

    /// The control socket of a supervisor started from a generated config.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control.sock")
    }

    /// Runs a `heartalk` CLI verb against this supervisor.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(workspace_bin("heartalk"))
            .args(args)
            .arg("--socket")
            .arg(self.control_socket())
            .output()
            .expect("run heartalk")
    }

    /// The pids of the first app's workers, as `heartalk status` lists them.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.status()["apps"][0]["workers"]
            .as_array()
            .expect("workers")
            .iter()
            .filter_map(|w| w["pid"].as_i64())
            .map(|p| p as i32)
            .collect()
    }

    /// `heartalk status --json`, parsed.
    pub fn status(&self) -> Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// Waits until the workers that exited with `reason` are exactly `pids`.
    pub fn wait_exited(&self, reason: &str, pids: &std::collections::HashSet<i64>) {
        wait_for(
            &format!("workers {pids:?} exited ({reason})"),
            DEADLINE,
            || {
                let exited: std::collections::HashSet<i64> = self
                    .events("worker_exited")
                    .iter()
                    .filter(|e| e["reason"] == reason)
                    .filter_map(|e| e["pid"].as_i64())
                    .collect();
                (&exited == pids).then_some(())
            },
        );
    }

    /// Every event so far, in order, with these names.
    pub fn timeline(&self, names: &[&str]) -> Vec<Value> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .filter(|v| names.iter().any(|n| v["event"] == *n))
            .cloned()
            .collect()
    }
}

impl Supervisor {
    /// The log directory of a supervisor started from a generated config.
    pub fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }
}

/// Every JSON line in a log directory: the current file, rotated plain
/// files and gzipped ones (each must decompress completely).
pub fn read_logs(dir: &Path) -> Vec<Value> {
    read_log_files(dir)
        .into_iter()
        .flat_map(|(path, text)| {
            text.lines()
                .map(|line| {
                    serde_json::from_str(line).unwrap_or_else(|e| {
                        panic!("torn line in {}: {e}: {line:?}", path.display())
                    })
                })
                .collect::<Vec<Value>>()
        })
        .collect()
}

/// Every line in a log directory as stored, oldest first (see [`read_logs`]).
pub fn read_log_lines(dir: &Path) -> Vec<String> {
    read_log_files(dir)
        .iter()
        .flat_map(|(_, text)| text.lines().map(str::to_string))
        .collect()
}

/// Each log file of `dir`, oldest first, with its (decompressed) text.
fn read_log_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("log dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let n = p.file_name().unwrap().to_string_lossy().into_owned();
            n.starts_with("heartalk") && (n.ends_with(".log") || n.ends_with(".log.gz"))
        })
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let mut text = String::new();
        let file = std::fs::File::open(&path).expect("open log");
        if path.extension().is_some_and(|e| e == "gz") {
            flate2::read::GzDecoder::new(file)
                .read_to_string(&mut text)
                .unwrap_or_else(|e| panic!("{} is not valid gzip: {e}", path.display()));
        } else {
            BufReader::new(file)
                .read_to_string(&mut text)
                .expect("read log");
        }
        out.push((path, text));
    }
    out
}
