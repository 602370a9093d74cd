//! The CLI side of the control socket: one request, one answer, with
//! errors an operator can act on ("no supervisor is running", "permission
//! denied") instead of raw I/O errors.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use shared::control::{self, Body, Command, Request, Response, VERSION};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no supervisor is running (nothing listens on {0})")]
    NotRunning(PathBuf),
    #[error("permission denied on the control socket {0} (run as the supervisor's user)")]
    Denied(PathBuf),
    #[error("the supervisor did not answer within {0:?}")]
    Timeout(Duration),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unreadable answer from the supervisor: {0}")]
    Protocol(String),
}

/// Sends `command` and waits up to `timeout` for the answer.
pub fn ask(path: &Path, command: Command, timeout: Duration) -> Result<Body, ClientError> {
    let mut stream = UnixStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
            ClientError::NotRunning(path.to_path_buf())
        }
        io::ErrorKind::PermissionDenied => ClientError::Denied(path.to_path_buf()),
        _ => ClientError::Io {
            path: path.to_path_buf(),
            source: e,
        },
    })?;
    stream.set_read_timeout(Some(timeout)).ok();
    stream.set_write_timeout(Some(timeout)).ok();
    let io_err = |e: io::Error| {
        if matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout(timeout)
        } else if e.kind() == io::ErrorKind::UnexpectedEof {
            // The supervisor closed without answering: it refused us (uid) or is exiting.
            ClientError::Protocol("the supervisor closed the connection without answering".into())
        } else {
            ClientError::Io {
                path: path.to_path_buf(),
                source: e,
            }
        }
    };
    control::write_frame(
        &mut stream,
        &Request {
            version: VERSION,
            command,
        },
    )
    .map_err(|e| match e {
        control::FrameError::Io(e) => io_err(e),
        other => ClientError::Protocol(other.to_string()),
    })?;
    let response: Response = control::read_frame(&mut stream).map_err(|e| match e {
        control::FrameError::Io(e) => io_err(e),
        other => ClientError::Protocol(other.to_string()),
    })?;
    Ok(response.body)
}
