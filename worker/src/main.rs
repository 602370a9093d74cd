//! `heartalk-worker`: sets up JSON logging and runs [`heartalk_worker::run`].
//! Any start-up failure is logged with its context chain and becomes exit
//! status 1, which the supervisor treats as a failed start; settings it
//! refuses (secrets that cannot be used, bad token rules: see
//! [`heartalk_worker::Refused`]) are logged one per line and exit 64.

use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// mimalloc instead of glibc malloc: the request path allocates many small,
/// short-lived buffers, and glibc's allocator was ~16 % of a worker's CPU
/// under load (measured with perf; see docs/benchmarks.md).
#[cfg(not(feature = "dhat-heap"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features dhat-heap`, every allocation goes through dhat instead,
/// which records where live memory was allocated (for the streams
/// breakdown in docs/benchmarks.md); never in a production build.
#[cfg(feature = "dhat-heap")]
#[global_allocator]
static GLOBAL: dhat::Alloc = dhat::Alloc;

fn main() -> ExitCode {
    // Writes dhat-heap.json when main returns (after the drain).
    #[cfg(feature = "dhat-heap")]
    let _profiler = dhat::Profiler::new_heap();
    // Flushes what is still buffered when main returns.
    let _log_flush = init_tracing();
    match heartalk_worker::run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => match e.downcast_ref::<heartalk_worker::Refused>() {
            Some(refused) => {
                for why in &refused.0 {
                    tracing::error!(error = %why, "setting refused");
                }
                ExitCode::from(shared::EXIT_REFUSED)
            }
            None => {
                tracing::error!(error = format!("{e:#}"), "worker failed");
                ExitCode::FAILURE
            }
        },
    }
}

/// JSON lines on stdout (the supervisor frames and tags them), at the level
/// named by `LOG_LEVEL` (default `info`). The Node.js service used winston
/// level names, so `http`/`verbose` map to `debug` and `silly` to `trace`;
/// full `tracing` filter directives are accepted too. An invalid value
/// falls back to `info` rather than stopping the worker.
fn init_tracing() -> heartalk_worker::logs::FlushOnDrop<std::io::Stdout> {
    let level = std::env::var("LOG_LEVEL").unwrap_or_default();
    let directive = match level.trim().to_ascii_lowercase().as_str() {
        "" => "info".to_string(),
        "http" | "verbose" => "debug".to_string(),
        "silly" => "trace".to_string(),
        _ => level.trim().to_string(),
    };
    let filter = EnvFilter::try_new(&directive).unwrap_or_else(|_| EnvFilter::new("info"));
    // Batched in memory, written in large writes (see `logs`).
    let (writer, guard) = heartalk_worker::logs::Batched::stdout();
    tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_span_list(false)
        .with_env_filter(filter)
        .with_writer(writer)
        .init();
    guard
}
