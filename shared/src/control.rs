//! The control protocol between `heartalk` CLI verbs and a running
//! supervisor, over its Unix control socket.
//!
//! Frames are a 4-byte big-endian length followed by that many bytes of
//! JSON; a frame over [`MAX_FRAME`] is refused before it is read, so a
//! confused or hostile client cannot make the supervisor allocate without
//! bound. Every request and response carries [`VERSION`]; a supervisor
//! answers a request of another version with an error response (never a
//! hang), so old and new CLIs fail clearly. The status types here are the
//! documented, stable `heartalk status --json` schema (docs/operations.md):
//! fields may be added, never renamed or removed, within a version.

use serde::{Deserialize, Serialize};

/// The protocol version this build speaks.
pub const VERSION: u32 = 1;

/// Largest frame either side accepts (metrics of many workers fit easily).
pub const MAX_FRAME: usize = 8 << 20;

/// A request from a CLI verb.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    pub command: Command,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// The fleet's state ([`Status`]).
    Status,
    /// Reload the config; the answer comes when the reload that covered
    /// this request has committed, rolled back or been refused
    /// ([`ReloadResult`]). A request made during a rollout is answered by
    /// the reload that follows it, not by the running one.
    Reload,
    /// Graceful stop; answered at once, then the supervisor drains and exits.
    Stop,
    /// Fleet-wide Prometheus text (what `GET /metrics` serves).
    Metrics,
    /// Replace every worker (of `app`, or of every app) with a fresh one
    /// running the same config, with zero downtime; answered when every
    /// slot has had its turn ([`RestartResult`]).
    Restart {
        #[serde(default)]
        app: Option<String>,
    },
    /// Change `app`'s worker count live: `instances` is a count, `max`, or
    /// `file` (back to the config's); answered once the slots are added or
    /// removed ([`ScaleResult`]), before new workers are ready.
    Scale { app: String, instances: String },
    /// One app in full ([`Description`]): its effective config (secrets
    /// masked), slots, restarts by reason, recent exits, last reload.
    Describe { app: String },
}

/// The supervisor's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    #[serde(flatten)]
    pub body: Body,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Body {
    Status(Status),
    Reload(ReloadResult),
    Stopping,
    Metrics { text: String },
    Restart(RestartResult),
    Scale(ScaleResult),
    Describe(Box<Description>),
    Error { code: ErrorCode, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request's version is not [`VERSION`].
    UnsupportedVersion,
    /// The frame was not a valid request.
    BadRequest,
    /// The supervisor is stopping and does not take this command.
    Stopping,
    /// Something failed inside the supervisor.
    Internal,
    /// The command cannot be done now or as asked (an unknown app, a
    /// reload or restart already running); the message says which.
    Refused,
}

/// `heartalk describe APP`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    pub app: String,
    /// The program the workers run, resolved, and its arguments.
    pub program: String,
    pub args: Vec<String>,
    pub cwd: String,
    pub listen: String,
    /// The file's `instances`, and `heartalk scale`'s count if it overrides it.
    pub instances: String,
    pub scaled: Option<String>,
    /// Every other setting of the app, as the config file spells it
    /// (`kill_timeout: "35s"`, `max_memory: "256MiB"` ...), in file order.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// The app's `[apps.env]`, values of secrets masked (`********`);
    /// workers also inherit the supervisor's environment, not shown.
    pub env: std::collections::BTreeMap<String, String>,
    pub workers: Vec<WorkerStatus>,
    /// Restarts so far, by reason (`crash`, `memory`, `reload`, `hung`, `restart`).
    pub restarts: std::collections::BTreeMap<String, u64>,
    /// Watchdog expiries so far, by reason (`silent`, `trigger`).
    pub hangs: std::collections::BTreeMap<String, u64>,
    /// The latest worker exits, newest first.
    pub recent_exits: Vec<ExitRecord>,
    pub last_reload: Option<ReloadResult>,
}

/// A worker's end, in `describe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    /// How long ago it happened.
    pub ago_secs: f64,
    pub slot: usize,
    pub pid: u32,
    pub generation: u64,
    pub reason: String,
    pub code: Option<i32>,
    pub signal: Option<String>,
}

/// What a `heartalk scale` did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleResult {
    pub app: String,
    /// Slots before and after.
    pub from: usize,
    pub to: usize,
    /// The override now in force (`None`: the file's `instances`).
    pub scaled: Option<String>,
    /// The file's `instances`.
    pub instances: String,
}

/// How a `heartalk restart` ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartResult {
    /// The apps it covered.
    pub apps: Vec<String>,
    /// Workers replaced by a fresh one that became READY.
    pub replaced: u32,
    /// Slots not serving when their turn came (they restart anyway).
    pub skipped: u32,
    /// Replacements that failed (the old worker kept serving), why.
    pub failed: Vec<String>,
    /// `done`, or `stopped` when a stop cut it short.
    pub outcome: String,
}

/// `heartalk status --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub supervisor: SupervisorStatus,
    pub apps: Vec<AppStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SupervisorStatus {
    pub pid: u32,
    pub version: String,
    pub uptime_secs: f64,
    pub config: String,
    /// Whether the supervisor is PID 1 of its namespace.
    pub pid1: bool,
    /// `net.ipv4.tcp_migrate_req`: `true`, `false`, or `null` if unknown.
    pub tcp_migrate_req: Option<bool>,
    /// `running` or `stopping`.
    pub state: String,
    /// The newest worker generation.
    pub generation: u64,
    pub reload: ReloadState,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReloadState {
    pub in_progress: bool,
    pub last: Option<ReloadResult>,
}

/// How a reload ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadResult {
    pub generation: u64,
    /// `committed`, `rolled_back` or `refused`.
    pub outcome: String,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppStatus {
    pub name: String,
    pub listen: String,
    /// The file's `instances` (`4` or `max`).
    #[serde(default)]
    pub instances: String,
    /// `heartalk scale`'s count while it overrides the file's.
    #[serde(default)]
    pub scaled: Option<String>,
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: usize,
    /// `None` while the slot has no process (waiting for a restart, errored).
    pub pid: Option<u32>,
    pub generation: Option<u64>,
    /// `starting`, `online`, `degraded` (cannot accept connections),
    /// `hung` (watchdog expired, being replaced), `waiting`, `stopping`,
    /// `stopped`, `errored`.
    pub state: String,
    pub uptime_secs: Option<f64>,
    pub restarts: u32,
    pub unstable_restarts: u32,
    pub last_exit: Option<ExitStatus>,
    pub cpu_percent: Option<f64>,
    pub rss_bytes: Option<u64>,
    pub pss_bytes: Option<u64>,
    /// HTTP requests this worker has answered (from its metrics).
    pub requests: Option<u64>,
    /// Client connections it has open (its `ai_connections_open` gauge at
    /// the last scrape); `None` when unknown or not exported.
    #[serde(default)]
    pub connections: Option<u64>,
    /// Seconds since its latest watchdog ping (`None`: it never pinged, so
    /// no watchdog watches it).
    #[serde(default)]
    pub watchdog_ping_age_secs: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    pub reason: String,
    pub code: Option<i32>,
    pub signal: Option<String>,
}

/// Framing and decoding errors.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {0} bytes is over the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("malformed frame: {0}")]
    Json(#[from] serde_json::Error),
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// A frame: length prefix plus JSON.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, FrameError> {
    let json = serde_json::to_vec(value)?;
    if json.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(json.len()));
    }
    let mut out = Vec::with_capacity(4 + json.len());
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    Ok(out)
}

/// The body length announced by a frame's 4-byte prefix, checked.
pub fn frame_len(prefix: [u8; 4]) -> Result<usize, FrameError> {
    let n = u32::from_be_bytes(prefix) as usize;
    if n > MAX_FRAME {
        return Err(FrameError::TooLarge(n));
    }
    Ok(n)
}

/// Blocking read of one frame (CLI side).
pub fn read_frame<T: for<'de> Deserialize<'de>>(
    r: &mut impl std::io::Read,
) -> Result<T, FrameError> {
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)?;
    let mut body = vec![0u8; frame_len(prefix)?];
    r.read_exact(&mut body)?;
    Ok(serde_json::from_slice(&body)?)
}

/// Blocking write of one frame (CLI side).
pub fn write_frame<T: Serialize>(w: &mut impl std::io::Write, value: &T) -> Result<(), FrameError> {
    w.write_all(&encode(value)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let req = Request {
            version: VERSION,
            command: Command::Reload,
        };
        let bytes = encode(&req).unwrap();
        assert_eq!(&bytes[..4], &((bytes.len() - 4) as u32).to_be_bytes());
        let back: Request = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, req);
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"version":1,"command":{"type":"reload"}}"#
        );
    }

    #[test]
    fn responses_are_tagged_by_result() {
        let r = Response {
            version: VERSION,
            body: Body::Error {
                code: ErrorCode::UnsupportedVersion,
                message: "nope".into(),
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"result":"error","code":"unsupported_version","message":"nope"}"#
        );
        let stop = Response {
            version: VERSION,
            body: Body::Stopping,
        };
        assert_eq!(
            serde_json::to_string(&stop).unwrap(),
            r#"{"version":1,"result":"stopping"}"#
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_reading() {
        let prefix = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(frame_len(prefix), Err(FrameError::TooLarge(_))));
        let mut bytes = prefix.to_vec();
        bytes.extend_from_slice(b"{}");
        assert!(matches!(
            read_frame::<Request>(&mut &bytes[..]),
            Err(FrameError::TooLarge(_))
        ));
    }

    #[test]
    fn garbage_is_a_json_error() {
        let mut bytes = 5u32.to_be_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        assert!(matches!(
            read_frame::<Request>(&mut &bytes[..]),
            Err(FrameError::Json(_))
        ));
    }
}
