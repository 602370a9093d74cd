//! Building a worker's command line, environment and inherited sockets.
//!
//! The environment is the supervisor's own, minus any socket-activation
//! variables meant for the supervisor itself, plus the app's `[apps.env]`,
//! plus the contract variables: `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`
//! (the slot socket at fd 3), `NOTIFY_SOCKET`, and `HEARTALK_APP`,
//! `HEARTALK_WORKER_ID` (the slot number), `HEARTALK_GENERATION`,
//! `HEARTALK_METRICS_SOCKET`, `HEARTALK_CONTROL_SOCKET`, `HEARTALK_LIMITS_FD`.
//! Their names are spelled once, in `shared::activation::env`, which the
//! worker reads them by.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use shared::activation::env;
use shared::config::App;

use crate::sys::{self, ExecSpec};

/// Variables a parent may have set for the supervisor; never forwarded.
const OWN_ACTIVATION_VARS: &[&str] = &[
    env::LISTEN_FDS,
    env::LISTEN_PID,
    env::LISTEN_FDNAMES,
    env::NOTIFY_SOCKET,
    env::HEARTALK_METRICS_SOCKET,
    env::HEARTALK_CONTROL_SOCKET,
    env::HEARTALK_LIMITS_FD,
];

/// Name of the passed socket in `LISTEN_FDNAMES`.
pub const FD_NAME: &str = "http";

/// Finds the program an app runs: a path containing `/` is taken relative to
/// the app's `cwd`; a bare name is looked up next to the `heartalk` binary
/// first (so a release folder works without installing) and then on `PATH`.
pub fn resolve_program(app: &App) -> Result<PathBuf, String> {
    let script = Path::new(&app.script);
    if app.script.contains('/') {
        let p = app.cwd.join(script);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!(
                "app `{}`: script {} does not exist",
                app.name,
                p.display()
            ))
        };
    }
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join(script)));
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    beside
        .into_iter()
        .chain(path_dirs.into_iter().map(|d| d.join(script)))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "app `{}`: program `{}` not found next to heartalk or on PATH",
                app.name, app.script
            )
        })
}

/// One worker to start: which app, which slot, which generation.
pub struct Launch<'a> {
    pub app: &'a App,
    pub program: &'a Path,
    pub slot: usize,
    pub generation: u64,
    pub socket: Option<RawFd>,
    pub notify_socket: &'a str,
    /// Abstract socket name the worker serves its metrics on.
    pub metrics_socket: &'a str,
    /// The supervisor's control socket, for `/metrics` on the service port
    /// (`None` when `[supervisor] service_metrics = false`).
    pub control_socket: Option<&'a Path>,
    /// Write ends of the pipes that become the worker's stdout and stderr
    /// (`None`: it inherits the supervisor's).
    pub outputs: Option<(RawFd, RawFd)>,
    /// The fleet's shared rate-limit table, passed after the socket.
    pub limits_fd: Option<RawFd>,
}

/// Starts the worker; returns its pid once `execve` succeeded.
pub fn spawn(l: &Launch) -> io::Result<Pid> {
    let mut vars: Vec<(String, String)> = std::env::vars_os()
        .map(|(k, v)| {
            (
                k.to_string_lossy().into_owned(),
                v.to_string_lossy().into_owned(),
            )
        })
        .filter(|(k, _)| !OWN_ACTIVATION_VARS.contains(&k.as_str()) && !l.app.env.contains_key(k))
        .collect();
    vars.extend(l.app.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    vars.push((env::HEARTALK_APP.into(), l.app.name.clone()));
    vars.push((env::HEARTALK_WORKER_ID.into(), l.slot.to_string()));
    vars.push((env::HEARTALK_GENERATION.into(), l.generation.to_string()));
    vars.push((env::NOTIFY_SOCKET.into(), l.notify_socket.to_string()));
    vars.push((
        env::HEARTALK_METRICS_SOCKET.into(),
        l.metrics_socket.to_string(),
    ));
    if let Some(c) = l.control_socket {
        vars.push((env::HEARTALK_CONTROL_SOCKET.into(), c.display().to_string()));
    }
    let mut fds: Vec<RawFd> = l.socket.into_iter().collect();
    if !fds.is_empty() {
        vars.push((env::LISTEN_FDS.into(), fds.len().to_string()));
        vars.push((env::LISTEN_FDNAMES.into(), FD_NAME.into()));
    }
    if let Some(fd) = l.limits_fd {
        // Outside the LISTEN_FDS range: the next descriptor after the sockets.
        let target = shared::activation::LISTEN_FDS_START + fds.len() as RawFd;
        vars.push((env::HEARTALK_LIMITS_FD.into(), target.to_string()));
        fds.push(fd);
    }
    let mut spec = ExecSpec::new(l.program, &l.app.args, &vars, &l.app.cwd, fds)?;
    if let Some((out, err)) = l.outputs {
        spec.redirect_output(out, err);
    }
    sys::spawn(&spec)
}
