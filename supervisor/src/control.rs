//! The control socket: where `heartalk status|reload|stop` (and workers
//! asking for the fleet-wide metrics) reach a running supervisor.
//!
//! A Unix stream socket, mode 0600, whose peers must run as the
//! supervisor's own user (or root): the kernel's SO_PEERCRED says who is
//! connecting, so a socket directory with loose permissions still does not
//! open the fleet to other users. A socket file left by a dead supervisor
//! is detected (nobody answers a connect) and replaced; a live one makes a
//! second supervisor refuse to start; anything at that path that is not a
//! socket (a mistyped `control_socket` naming the config file, say) is
//! never touched, and the supervisor refuses to start instead. Only `heartalk
//! run` may create the socket's directory: the CLI verbs merely look for
//! the socket ([`find_socket`]). Requests are the framed, versioned
//! messages of `shared::control`; each is handed to the event loop as an
//! [`Ask`] and answered when the loop replies.

use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared::config::Config;
use shared::control::{self, Body, ErrorCode, Request, Response, VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// A connection that sends nothing for this long is closed.
const IDLE: Duration = Duration::from_secs(30);

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "another supervisor is already running on {0} (stop it first, or set [supervisor] control_socket)"
    )]
    InUse(PathBuf),
    #[error(
        "{0} exists and is not a socket; refusing to replace it (check [supervisor] control_socket)"
    )]
    NotASocket(PathBuf),
    #[error("cannot create the control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where `heartalk run` puts its control socket: `[supervisor]
/// control_socket`, else `$XDG_RUNTIME_DIR/heartalk.sock`, else
/// `/run/heartalk/heartalk.sock`, else `heartalk.sock` next to the config
/// file — the first whose directory exists (or can be made) and is
/// writable. Creates directories and probes them by writing, so only `run`
/// calls it; the CLI verbs use [`find_socket`].
pub fn socket_path(config: &Config) -> PathBuf {
    if let Some(p) = &config.supervisor.control_socket {
        return p.clone();
    }
    let candidates = default_candidates(std::env::var_os("XDG_RUNTIME_DIR"), &config.path);
    let (last, earlier) = candidates.split_last().expect("the config's directory");
    earlier
        .iter()
        .find(|path| path.parent().is_some_and(writable_dir))
        .unwrap_or(last)
        .clone()
}

/// Where the CLI verbs look for a running supervisor's socket, without
/// creating or writing anything: `[supervisor] control_socket` if set;
/// else, of `run`'s default places (same order), the first socket that
/// accepts a connection, else the first holding a socket; else the first whose directory exists and is writable (where
/// `run` would put it), named in the "no supervisor" message.
pub fn find_socket(config: &Config) -> PathBuf {
    if let Some(p) = &config.supervisor.control_socket {
        return p.clone();
    }
    find_in(&default_candidates(
        std::env::var_os("XDG_RUNTIME_DIR"),
        &config.path,
    ))
}

/// `run`'s default socket places, in order; the last (next to the config
/// file) is always there.
fn default_candidates(xdg_runtime_dir: Option<OsString>, config_path: &Path) -> Vec<PathBuf> {
    let beside_config = config_path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .join("heartalk.sock");
    xdg_runtime_dir
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("heartalk.sock"))
        .into_iter()
        .chain([PathBuf::from("/run/heartalk/heartalk.sock"), beside_config])
        .collect()
}

/// [`find_socket`] over `candidates` (the last is the fallback). A socket
/// someone answers on wins over an earlier stale one (a dead supervisor's
/// file); only when none answers is the first socket file taken, so the
/// error names it. A connect creates nothing.
fn find_in(candidates: &[PathBuf]) -> PathBuf {
    let (last, earlier) = candidates.split_last().expect("a fallback place");
    candidates
        .iter()
        .find(|p| is_socket(p) && std::os::unix::net::UnixStream::connect(p).is_ok())
        .or_else(|| candidates.iter().find(|p| is_socket(p)))
        .or_else(|| {
            earlier.iter().find(|p| {
                p.parent().is_some_and(|d| {
                    d.is_dir() && nix::unistd::access(d, nix::unistd::AccessFlags::W_OK).is_ok()
                })
            })
        })
        .unwrap_or(last)
        .clone()
}

/// Whether `path` itself (not a symlink's target) is a Unix socket.
fn is_socket(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

fn writable_dir(dir: &Path) -> bool {
    if !dir.exists() && std::fs::create_dir_all(dir).is_err() {
        return false;
    }
    let probe = dir.join(format!(".heartalk-probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The bound control socket; the file is removed when this is dropped,
/// unless it is no longer ours.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The socket file's (dev, ino) when bound: what is at `path` later is
    /// removed only if it is still this file, never a socket a newer
    /// supervisor bound there after replacing ours.
    id: (u64, u64),
}

impl ControlSocket {
    /// Binds `path` (mode 0600), creating its directory if needed and
    /// replacing a stale socket file — only a socket, and only one nobody
    /// answers on (the connect is refused): a live one is [`ControlError::InUse`],
    /// and any other file is [`ControlError::NotASocket`] and left as it
    /// is, since it may well be the operator's config or data.
    pub fn bind(path: &Path) -> Result<ControlSocket, ControlError> {
        let io_err = |source| ControlError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            if !dir.exists() {
                std::fs::create_dir_all(dir).map_err(io_err)?;
                let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
            }
        }
        match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(e)),
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(ControlError::NotASocket(path.to_path_buf()));
            }
            Ok(_) => match std::os::unix::net::UnixStream::connect(path) {
                Ok(_) => return Err(ControlError::InUse(path.to_path_buf())),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    tracing::warn!(event = "stale_control_socket", path = %path.display(), "removing a control socket nobody answers on");
                    std::fs::remove_file(path).map_err(io_err)?;
                }
                // Not provably stale (e.g. EACCES: another user's): keep it.
                Err(e) => return Err(io_err(e)),
            },
        }
        let (socket, id) = bind_private(path).map_err(io_err)?;
        if let Err(e) = socket.listen(BACKLOG) {
            let _ = std::fs::remove_file(path);
            return Err(io_err(e));
        }
        let std_listener =
            std::os::unix::net::UnixListener::from(std::os::fd::OwnedFd::from(socket));
        std_listener.set_nonblocking(true).map_err(io_err)?;
        let listener = UnixListener::from_std(std_listener).map_err(io_err)?;
        tracing::info!(event = "control_socket", path = %path.display());
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            id,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `listen(2)` backlog of the control socket: the system's maximum
/// (`net.core.somaxconn`), as std's `UnixListener::bind` asks for on Linux.
const BACKLOG: i32 = -1;

/// Binds a Unix stream socket at `path` whose file is mode 0600, without
/// listening yet, with the file's (dev, ino). On error the socket file is
/// removed, unless what is at `path` is no longer a socket (then it is not
/// ours to remove).
///
/// The process umask is never touched: it is process-wide, and changing
/// it, even briefly, races with every other thread creating files (the log
/// writer, the gzip thread, the runtime's). Instead:
///
/// 1. the socket's own inode is made 0600 with `fchmod` *before* `bind`:
///    Linux creates the file with that mode (masked by the umask, which can
///    only remove bits), so the file is private from its first instant and
///    no path is involved;
/// 2. after `bind` the file is checked (`lstat`, which follows no symlink)
///    and, should a kernel not honour step 1, `chmod`ed to 0600 by path;
/// 3. the caller calls `listen` only then. Until `listen`, a `connect` is
///    refused whatever the file's mode, so no client can ever connect
///    through a mode looser than 0600. (`bind` itself fails on an existing
///    path, symlinks included, so step 2 acts on the file `bind` created
///    unless someone who can write the directory swapped it in between —
///    and such a someone could replace the socket at any time anyway,
///    which is why `run` creates a missing socket directory 0700.)
fn bind_private(path: &Path) -> io::Result<(socket2::Socket, (u64, u64))> {
    use std::os::unix::fs::MetadataExt;
    // Close-on-exec (socket2 sets it): workers must not inherit it.
    let socket = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    nix::sys::stat::fchmod(&socket, nix::sys::stat::Mode::from_bits_truncate(0o600))?;
    socket.bind(&socket2::SockAddr::unix(path)?)?;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        // Not ours any more: left alone, like anything that is not a socket.
        return Err(io::Error::other(
            "the socket file was replaced while it was being created",
        ));
    }
    if meta.permissions().mode() & 0o777 != 0o600 {
        if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
    }
    Ok((socket, (meta.dev(), meta.ino())))
}

/// One command for the event loop, with where to send the answer.
pub struct Ask {
    pub command: control::Command,
    pub reply: oneshot::Sender<Body>,
}

/// Accepts connections until the socket is dropped; every well-formed
/// request becomes an [`Ask`] on `asks`.
pub async fn serve(socket: &ControlSocket, asks: mpsc::Sender<Ask>) {
    let me = nix::unistd::geteuid().as_raw();
    loop {
        let stream = match socket.listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(event = "control_accept_failed", error = %e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match stream.peer_cred() {
            Ok(cred) if cred.uid() == me || cred.uid() == 0 => {}
            Ok(cred) => {
                tracing::warn!(
                    event = "control_refused",
                    uid = cred.uid(),
                    "control client runs as another user"
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(event = "control_refused", error = %e, "cannot read the peer's credentials");
                continue;
            }
        }
        tokio::spawn(connection(stream, asks.clone()));
    }
}

/// Serves one client: frames in, frames out, until it closes, idles, or
/// sends something that is not a valid request (answered, then closed).
async fn connection(mut stream: UnixStream, asks: mpsc::Sender<Ask>) {
    loop {
        let mut prefix = [0u8; 4];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut prefix)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = match control::frame_len(prefix) {
            Ok(n) => n,
            Err(e) => {
                let _ = reply(&mut stream, error(ErrorCode::BadRequest, e.to_string())).await;
                return;
            }
        };
        let mut body = vec![0u8; len];
        match tokio::time::timeout(IDLE, stream.read_exact(&mut body)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let answer = match parse(&body) {
            Err((code, message)) => {
                let _ = reply(&mut stream, error(code, message)).await;
                return;
            }
            Ok(command) => {
                let (tx, rx) = oneshot::channel();
                if asks.send(Ask { command, reply: tx }).await.is_err() {
                    error(
                        ErrorCode::Stopping,
                        "the supervisor is shutting down".into(),
                    )
                } else {
                    rx.await.unwrap_or_else(|_| {
                        error(
                            ErrorCode::Stopping,
                            "the supervisor is shutting down".into(),
                        )
                    })
                }
            }
        };
        if reply(&mut stream, answer).await.is_err() {
            return;
        }
    }
}

/// A request body → its command, or the error to answer with. The version
/// is checked before the command, so a newer CLI gets "unsupported
/// version", not a confusing parse error.
fn parse(body: &[u8]) -> Result<control::Command, (ErrorCode, String)> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| (ErrorCode::BadRequest, format!("not JSON: {e}")))?;
    match value.get("version").and_then(serde_json::Value::as_u64) {
        Some(v) if v == u64::from(VERSION) => {}
        Some(v) => {
            return Err((
                ErrorCode::UnsupportedVersion,
                format!("protocol version {v} is not supported; this supervisor speaks {VERSION}"),
            ));
        }
        None => return Err((ErrorCode::BadRequest, "missing protocol version".into())),
    }
    let req: Request =
        serde_json::from_value(value).map_err(|e| (ErrorCode::BadRequest, e.to_string()))?;
    Ok(req.command)
}

fn error(code: ErrorCode, message: String) -> Body {
    Body::Error { code, message }
}

async fn reply(stream: &mut UnixStream, body: Body) -> io::Result<()> {
    let frame = control::encode(&Response {
        version: VERSION,
        body,
    })
    .map_err(io::Error::other)?;
    stream.write_all(&frame).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_is_checked_before_the_command() {
        assert!(matches!(
            parse(br#"{"version":99,"command":{"type":"nope"}}"#),
            Err((ErrorCode::UnsupportedVersion, _))
        ));
        assert!(matches!(parse(b"garbage"), Err((ErrorCode::BadRequest, _))));
        assert!(matches!(
            parse(br#"{"version":1,"command":{"type":"nope"}}"#),
            Err((ErrorCode::BadRequest, _))
        ));
        assert_eq!(
            parse(br#"{"version":1,"command":{"type":"status"}}"#).unwrap(),
            control::Command::Status
        );
    }

    #[tokio::test]
    async fn a_stale_socket_is_replaced_and_a_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        // a socket file nobody listens on (its listener was dropped)
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = ControlSocket::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            ControlSocket::bind(&path),
            Err(ControlError::InUse(_))
        ));
        drop(live);
        assert!(!path.exists(), "removed on drop");
    }

    /// A newer supervisor replaced our socket file (ours was moved aside,
    /// so the new one cannot reuse its inode): dropping ours leaves the
    /// new one in place.
    #[tokio::test]
    async fn dropping_never_removes_a_socket_that_is_not_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let ours = ControlSocket::bind(&path).unwrap();
        std::fs::rename(&path, dir.path().join("old.sock")).unwrap();
        let _theirs = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(ours);
        assert!(is_socket(&path), "the newer socket is still there");
        std::os::unix::net::UnixStream::connect(&path).expect("and still served");
    }

    /// A dead supervisor's socket in an earlier place does not hide a live
    /// one in a later place.
    #[test]
    fn a_live_socket_wins_over_an_earlier_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let places = [dir.path().join("stale.sock"), dir.path().join("live.sock")];
        drop(std::os::unix::net::UnixListener::bind(&places[0]).unwrap());
        assert!(is_socket(&places[0]));
        let _live = std::os::unix::net::UnixListener::bind(&places[1]).unwrap();
        assert_eq!(find_in(&places), places[1]);
        // Nobody answers anywhere: the first socket file, for the message.
        drop(_live);
        assert_eq!(find_in(&places), places[0]);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "nothing created"
        );
    }

    /// The process umask, from `/proc/self/status` (reading it with
    /// `umask(2)` would mean setting it).
    fn process_umask() -> String {
        std::fs::read_to_string("/proc/self/status")
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string()))
            .expect("a Umask: line")
    }

    #[test]
    fn the_socket_is_private_before_anyone_can_connect() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl.sock");
        let umask = process_umask();
        let (socket, _) = bind_private(&path).unwrap();
        // Not listening yet: every connect is refused, whatever the mode...
        let refused = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        // ...and by then the file is already private.
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(process_umask(), umask, "the process umask is never changed");
        socket.listen(BACKLOG).unwrap();
        std::os::unix::net::UnixStream::connect(&path).expect("served once listening");
        // A path that exists already is never bound over.
        assert!(bind_private(&path).is_err());
        assert!(
            std::fs::symlink_metadata(&path)
                .unwrap()
                .file_type()
                .is_socket()
        );
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ecosystem.toml");
        std::fs::write(&file, "[[apps]]\n").unwrap();
        let err = ControlSocket::bind(&file).err().expect("refused");
        assert!(matches!(&err, ControlError::NotASocket(p) if p == &file));
        assert!(err.to_string().contains("is not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "[[apps]]\n");

        // nor a symlink, even one to a stale socket, nor a directory
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&stale, &link).unwrap();
        assert!(matches!(
            ControlSocket::bind(&link),
            Err(ControlError::NotASocket(_))
        ));
        assert!(std::fs::symlink_metadata(&link).is_ok());
        assert!(matches!(
            ControlSocket::bind(dir.path()),
            Err(ControlError::NotASocket(_))
        ));
    }

    #[test]
    fn finding_the_socket_creates_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("runtime/user");
        let beside = dir.path().join("conf");
        std::fs::create_dir(&beside).unwrap();
        let candidates = default_candidates(
            Some(missing.clone().into_os_string()),
            &beside.join("ecosystem.toml"),
        );
        assert_eq!(candidates[0], missing.join("heartalk.sock"));
        assert_eq!(candidates.last().unwrap(), &beside.join("heartalk.sock"));
        // no socket anywhere, no runtime dir: the fallback, nothing made
        let only_ours = [candidates[0].clone(), candidates[2].clone()];
        assert_eq!(find_in(&only_ours), beside.join("heartalk.sock"));
        assert!(!dir.path().join("runtime").exists());
        assert_eq!(std::fs::read_dir(&beside).unwrap().count(), 0);

        // the first place holding a socket wins; a plain file is no socket
        let xdg = dir.path().join("xdg");
        std::fs::create_dir(&xdg).unwrap();
        let places = [xdg.join("heartalk.sock"), beside.join("heartalk.sock")];
        std::fs::write(&places[0], "").unwrap();
        let _live = std::os::unix::net::UnixListener::bind(&places[1]).unwrap();
        assert_eq!(find_in(&places), places[1]);
        std::fs::remove_file(&places[0]).unwrap();
        let _first = std::os::unix::net::UnixListener::bind(&places[0]).unwrap();
        assert_eq!(find_in(&places), places[0]);
        // a writable directory without a socket is where `run` would go
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        let fresh = [empty.join("heartalk.sock"), beside.join("nothing.sock")];
        assert_eq!(find_in(&fresh), fresh[0]);
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0, "not probed");
    }
}
