//! `GET /metrics` on the service port, under a supervisor: the fleet-wide
//! numbers come from the supervisor (which scrapes every worker and keeps
//! what departed workers counted), asked over its control socket.
//!
//! A worker alone has no fleet to report, so without a supervisor the path
//! does not exist on the service port (its own numbers are on
//! `METRICS_PORT`).

use std::path::Path;
use std::time::Duration;

use shared::control::{self, Body, Command, Request, VERSION};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// How long a scrape may wait for the supervisor.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Asks the supervisor at `socket` for the fleet-wide exposition.
pub async fn fetch(socket: &Path) -> Result<String, String> {
    match tokio::time::timeout(TIMEOUT, ask(socket)).await {
        Ok(r) => r,
        Err(_) => Err(format!("the supervisor did not answer within {TIMEOUT:?}")),
    }
}

async fn ask(socket: &Path) -> Result<String, String> {
    let mut stream = UnixStream::connect(socket)
        .await
        .map_err(|e| format!("cannot reach the supervisor at {}: {e}", socket.display()))?;
    let request = control::encode(&Request {
        version: VERSION,
        command: Command::Metrics,
    })
    .map_err(|e| e.to_string())?;
    stream
        .write_all(&request)
        .await
        .map_err(|e| e.to_string())?;
    let mut prefix = [0u8; 4];
    stream
        .read_exact(&mut prefix)
        .await
        .map_err(|e| e.to_string())?;
    let mut body = vec![0u8; control::frame_len(prefix).map_err(|e| e.to_string())?];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    let response: control::Response = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    match response.body {
        Body::Metrics { text } => Ok(text),
        Body::Error { message, .. } => Err(message),
        other => Err(format!("unexpected answer: {other:?}")),
    }
}
