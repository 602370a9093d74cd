//! Building a worker's command line, environment and inherited sockets.
//!
//! The environment is the supervisor's own, minus every contract variable
//! (`shared::activation::env::ALL`: a parent may have set them for the
//! supervisor itself, and each must appear once, with our value, since
//! glibc's `getenv` returns the first of duplicates), plus the app's
//! `[apps.env]` (which config validation keeps free of contract names),
//! plus the contract variables: `LISTEN_FDS`/`LISTEN_FDNAMES`/`LISTEN_PID`
//! (the slot socket at fd 3), `NOTIFY_SOCKET`, `WATCHDOG_USEC`/`WATCHDOG_PID`
//! (unless the app's `watchdog` is off), and `HEARTALK_APP`,
//! `HEARTALK_WORKER_ID` (the slot number), `HEARTALK_GENERATION`,
//! `HEARTALK_METRICS_SOCKET`, `HEARTALK_CONTROL_SOCKET`, `HEARTALK_LIMITS_FD`,
//! `HEARTALK_FLEET_FD` with `HEARTALK_FLEET_WORD`.
//! Their names are spelled once, in `shared::activation::env`, which the
//! worker reads them by.

use std::io;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use nix::unistd::Pid;
use shared::activation::env;
use shared::config::App;

use crate::sys::{self, ExecSpec};

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
    /// The fleet-state page (`crate::fleet_state`, its read-only
    /// descriptor), passed after the rate-limit table, and the app's word
    /// of it (`None`: no page, or an app past its 512 words).
    pub fleet: Option<(RawFd, usize)>,
}

/// Starts the worker; returns its pid once `execve` succeeded.
pub fn spawn(l: &Launch) -> io::Result<Pid> {
    let inherited = std::env::vars_os().map(|(k, v)| {
        (
            k.to_string_lossy().into_owned(),
            v.to_string_lossy().into_owned(),
        )
    });
    let (vars, fds, pid_vars) = environment(l, inherited);
    let mut spec = ExecSpec::new(l.program, &l.app.args, &vars, &l.app.cwd, fds, &pid_vars)?;
    if let Some((out, err)) = l.outputs {
        spec.redirect_output(out, err);
    }
    sys::spawn(&spec)
}

/// The worker's environment (from the supervisor's, `inherited`) and the
/// descriptors it inherits. Each contract variable appears at most once,
/// with our value: every name in `env::ALL` is dropped from `inherited`
/// and from `[apps.env]` before ours are added. `LISTEN_PID` and
/// `WATCHDOG_PID` are only named (the third list): [`ExecSpec`] writes
/// their values in the child, once its pid is known.
fn environment(
    l: &Launch,
    inherited: impl Iterator<Item = (String, String)>,
) -> (Vec<(String, String)>, Vec<RawFd>, Vec<&'static str>) {
    let reserved = |k: &str| env::ALL.contains(&k);
    let mut vars: Vec<(String, String)> = inherited
        .filter(|(k, _)| !reserved(k) && !l.app.env.contains_key(k))
        .collect();
    vars.extend(
        l.app
            .env
            .iter()
            .filter(|(k, _)| !reserved(k))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    vars.push((env::HEARTALK_APP.into(), l.app.name.clone()));
    vars.push((env::HEARTALK_WORKER_ID.into(), l.slot.to_string()));
    vars.push((env::HEARTALK_GENERATION.into(), l.generation.to_string()));
    vars.push((env::NOTIFY_SOCKET.into(), l.notify_socket.to_string()));
    // Variables whose value is the child's own pid, written in by the child.
    let mut pid_vars = Vec::with_capacity(2);
    if let Some(w) = l.app.watchdog {
        vars.push((env::WATCHDOG_USEC.into(), w.as_micros().to_string()));
        pid_vars.push(env::WATCHDOG_PID);
    }
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
    if let Some((fd, word)) = l.fleet {
        let target = shared::activation::LISTEN_FDS_START + fds.len() as RawFd;
        vars.push((env::HEARTALK_FLEET_FD.into(), target.to_string()));
        vars.push((env::HEARTALK_FLEET_WORD.into(), word.to_string()));
        fds.push(fd);
    }
    if !fds.is_empty() {
        pid_vars.push(env::LISTEN_PID);
    }
    (vars, fds, pid_vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A parent that set every contract variable for the supervisor itself
    /// (as systemd or a test harness might): the worker still gets exactly
    /// one entry of each name, ours.
    #[test]
    fn each_contract_variable_appears_once_with_our_value() {
        let config = shared::config::Config::parse(
            "[[apps]]\nname = \"api\"\n[apps.env]\nMODE = \"prod\"\n",
            Path::new("/etc/heartalk/ecosystem.toml"),
            &|_| None,
        )
        .unwrap();
        let app = &config.apps[0];
        let control = PathBuf::from("/run/heartalk.sock");
        let launch = Launch {
            app,
            program: Path::new("/bin/true"),
            slot: 2,
            generation: 7,
            socket: Some(10),
            notify_socket: "@notify",
            metrics_socket: "@metrics",
            control_socket: Some(&control),
            outputs: None,
            limits_fd: Some(11),
            fleet: Some((12, 3)),
        };
        let inherited = env::ALL
            .iter()
            .map(|k| (k.to_string(), "from-parent".to_string()))
            .chain([("PATH".to_string(), "/bin".to_string())]);
        let (vars, fds, _) = environment(&launch, inherited);
        assert_eq!(fds, [10, 11, 12]);
        let count = |name: &str| vars.iter().filter(|(k, _)| k == name).count();
        for name in env::ALL {
            // LISTEN_PID and WATCHDOG_PID are written in the child by `ExecSpec`.
            let want = usize::from(*name != env::LISTEN_PID && *name != env::WATCHDOG_PID);
            assert_eq!(count(name), want, "{name}: {vars:?}");
        }
        assert!(vars.iter().all(|(_, v)| v != "from-parent"), "{vars:?}");
        let get = |name: &str| {
            vars.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(get(env::HEARTALK_APP), Some("api"));
        assert_eq!(get(env::HEARTALK_WORKER_ID), Some("2"));
        assert_eq!(get(env::HEARTALK_GENERATION), Some("7"));
        assert_eq!(get(env::HEARTALK_LIMITS_FD), Some("4"));
        assert_eq!(get(env::HEARTALK_FLEET_FD), Some("5"));
        assert_eq!(get(env::HEARTALK_FLEET_WORD), Some("3"));
        assert_eq!(get(env::WATCHDOG_USEC), Some("10000000"));
        assert_eq!(get("MODE"), Some("prod"));
        assert_eq!(get("PATH"), Some("/bin"));
    }
}
