//! The serving lifecycle: accept on every listener, serve each connection
//! (HTTP/1.1 keep-alive with [`crate::http::http1`], h2c with prior knowledge
//! with hyper) under the
//! connection deadlines of [`crate::http::conn_deadline`], tell the
//! supervisor `READY=1`, and on SIGTERM/SIGINT drain: stop accepting, keep
//! idle keep-alive connections for a short linger (answering with
//! `Connection: close`), let in-flight requests finish within
//! `SHUTDOWN_GRACE_SECS` (open streams then get a final error frame), wait
//! for the supervisor's last metrics scrape, then return. It also serves the
//! worker's own metrics (on the supervisor's abstract socket, or on
//! `METRICS_PORT` when running alone).
//!
//! Everything runs on the one-thread runtime built in [`crate::run`]; the
//! accept loop is a single task that polls all listeners, so the
//! graceful-shutdown handle has one owner and needs no locking.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::http::budget::Watch;
use crate::http::conn_deadline::{Activity, DeadlineIo};
use crate::http::state::{AppState, Phase};
use crate::http::{http1, router};

/// How long to pause accepting after a resource error such as `EMFILE`:
/// retrying at once would spin, and a short pause lets finishing
/// connections free descriptors.
pub(crate) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Serves on `listeners` until a stop signal, then drains. Returns `Ok`
/// after a drain, clean or cut short by the grace deadline (which is
/// logged); errors only if the server cannot start.
pub async fn serve(
    listeners: Vec<std::net::TcpListener>,
    state: Arc<AppState>,
) -> anyhow::Result<()> {
    // Handlers go in first: a SIGTERM that arrives right after READY must
    // start a drain, not kill the process with the default action.
    let mut signals = StopSignals::new()?;
    let listeners = crate::http::listener::into_tokio(listeners)?;
    let addrs: Vec<String> = listeners
        .iter()
        .filter_map(|l| l.local_addr().ok())
        .map(|a| a.to_string())
        .collect();
    tracing::info!(addresses = %addrs.join(" "), worker_id = state.ctx.settings.worker_id, "listening");

    // HTTP/2 (h2c with prior knowledge) is hyper's; HTTP/1.1 is ours
    // (`crate::http::http1`, for its per-connection memory). Neither has a
    // header timer of its own: the head deadline is `HEADER_TIMEOUT` in
    // `conn_deadline`, for both.
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let h2 = Arc::new(h2);
    let graceful = GracefulShutdown::new();
    let drain = http1::Drain::default();
    let protocols = Protocols {
        h2: &h2,
        graceful: &graceful,
        drain: &drain,
    };

    state.set_phase(Phase::Ready);
    match notify(&state, "READY=1") {
        Ok(true) => tracing::info!("ready; supervisor notified"),
        Ok(false) => tracing::info!("ready (standalone: no NOTIFY_SOCKET)"),
        Err(e) => tracing::warn!(error = %e, "ready, but notifying the supervisor failed"),
    }
    // From the serving runtime: a stalled accept/serve loop stops the pings.
    tokio::spawn(crate::runtime::watchdog::ping(
        state.notifier.clone(),
        state.ctx.settings.worker_id,
    ));
    let open = state.clone();
    tokio::spawn(crate::runtime::alloc::give_back(
        state.ctx.settings.pipeline.upstream_pool_idle,
        move || open.open_connections(),
    ));

    let reason = accept_loop(&listeners, &protocols, &state, &mut signals).await;

    // Drain. Closing our copies of the listening sockets stops accepting;
    // under the supervisor the sockets stay open in the parent (and in our
    // replacement), so queued connections wait for the next worker rather
    // than being refused.
    state.set_phase(Phase::Draining);
    drop(listeners);
    if let Err(e) = notify(&state, "STOPPING=1") {
        tracing::warn!(error = %e, "notifying the supervisor of STOPPING failed");
    }
    let grace = state.ctx.settings.shutdown_grace;
    let deadline = tokio::time::Instant::now() + grace;
    tracing::info!(
        signal = reason,
        connections = state.open_connections(),
        grace_secs = grace.as_secs(),
        "draining"
    );
    // Keep-alive linger: for a moment, idle connections stay open and every
    // response carries `Connection: close` (the router adds it while
    // draining), so a client that is about to reuse a connection gets its
    // answer and a clean close instead of racing our close of an idle
    // socket (the race that makes "graceful" reloads drop requests).
    let linger = KEEPALIVE_LINGER.min(grace);
    tokio::select! {
        () = wait_idle(&state) => {}
        () = tokio::time::sleep(linger) => {}
        _ = signals.recv() => {}
    }
    // Idle keep-alive connections close now; HTTP/1 requests in flight
    // finish with `Connection: close`; HTTP/2 gets GOAWAY.
    drain.start();
    let drained = async {
        graceful.shutdown().await;
        drain.finished().await;
    };
    tokio::pin!(drained);
    let mut cut_short = None;
    tokio::select! {
        () = &mut drained => tracing::info!("drained"),
        () = tokio::time::sleep_until(deadline) => cut_short = Some("grace period over"),
        second = signals.recv() => {
            tracing::warn!(signal = second, "second stop signal");
            cut_short = Some("second stop signal");
        }
    }
    if let Some(why) = cut_short {
        // Long streams get a final error frame rather than a silent cut.
        let streams = state.ctx.finish_streams();
        tracing::warn!(
            abandoned = state.open_connections(),
            streams,
            grace_secs = grace.as_secs(),
            "{why}; closing open streams with an error frame"
        );
        let _ = tokio::time::timeout(STREAM_FAREWELL, &mut drained).await;
    }
    if state.ctx.settings.metrics_socket.is_some() {
        final_scrape(&state).await;
    }
    Ok(())
}

/// Under a supervisor: say the drain is over and wait (briefly) for its
/// last scrape, so requests finished during the drain reach the fleet
/// totals instead of leaving with the process.
async fn final_scrape(state: &AppState) {
    let before = crate::telemetry::scrapes();
    if let Err(e) = notify(state, "STATUS=drained") {
        tracing::debug!(error = %e, "could not announce the end of the drain");
        return;
    }
    let deadline = tokio::time::Instant::now() + FINAL_SCRAPE_WAIT;
    while crate::telemetry::scrapes() == before && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Sends `message` to the supervisor over the socket kept since start
/// ([`AppState::notifier`]), which works even without a free descriptor and
/// never blocks (a full queue gives `WouldBlock` instead of waiting for
/// room). Without that socket (standalone, or it could not be made at
/// start) it falls back to a one-off send, `Ok(false)` when there is no
/// `NOTIFY_SOCKET` at all.
fn notify(state: &AppState, message: &str) -> io::Result<bool> {
    match &state.notifier {
        Some(notifier) => notifier.send(message).map(|()| true),
        None => shared::activation::notify(message),
    }
}

/// How long a drained worker waits for the supervisor's last scrape.
const FINAL_SCRAPE_WAIT: Duration = Duration::from_secs(2);

/// How long idle keep-alive connections stay open after a drain starts.
const KEEPALIVE_LINGER: Duration = Duration::from_secs(1);

/// Time open streams get to write their final error frame.
const STREAM_FAREWELL: Duration = Duration::from_millis(500);

/// Resolves once no connection is open.
async fn wait_idle(state: &AppState) {
    while state.open_connections() > 0 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Accepts until a stop signal arrives; returns the signal's name.
///
/// At the connection budget (`max_connections` open) it stops polling the
/// listeners until a connection closes, so new connections wait in the
/// slot's kernel queue rather than being accepted and failed; [`Watch`]
/// reports the worker degraded when it cannot accept for too long (see
/// [`crate::http::budget`]). Per connection this costs two atomic loads and a
/// few flag tests; at the budget, each wake-up also reads the clock and
/// updates [`crate::http::budget::Starvation`], without allocating.
async fn accept_loop(
    listeners: &[TcpListener],
    protocols: &Protocols<'_>,
    state: &Arc<AppState>,
    signals: &mut StopSignals,
) -> &'static str {
    let mut next = 0usize;
    let mut watch = Watch::new(state.clone());
    // Re-reads the open-file limit and retries an unsent report.
    let mut upkeep = tokio::time::interval(crate::http::budget::LIMIT_RECHECK);
    upkeep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    upkeep.reset();
    loop {
        let (open, max) = (state.open_connections(), state.max_connections());
        if open >= max {
            watch.at_budget(open, max, Instant::now());
            let look = tokio::time::Instant::from_std(watch.next_look(Instant::now()));
            tokio::select! {
                biased;
                sig = signals.recv() => return sig,
                () = state.connection_closed() => {}
                () = tokio::time::sleep_until(look) => watch.tick(),
            }
            continue;
        }
        watch.room();
        // Whether the listeners had nothing queued at some point: after an
        // `accept` failure that means the failing connections are gone.
        let mut empty = false;
        let accepted = tokio::select! {
            biased;
            sig = signals.recv() => return sig,
            _ = upkeep.tick() => None,
            accepted = std::future::poll_fn(|cx| {
                let polled = poll_accept_any(listeners, &mut next, cx);
                empty |= polled.is_pending();
                polled
            }) => Some(accepted),
        };
        if empty {
            watch.accepting();
        }
        match accepted {
            None => watch.tick(),
            Some(Ok((stream, peer))) => {
                watch.accepting();
                spawn_connection(stream, peer, protocols, state);
            }
            // The peer gave up between SYN and accept: nothing to do.
            Some(Err(e)) if is_per_connection(&e) => {
                tracing::debug!(error = %e, "accept: connection-level error");
            }
            // EMFILE, ENFILE, ENOBUFS, ENOMEM...: the loop must survive.
            Some(Err(e)) => {
                watch.accept_failed(&e, Instant::now());
                tracing::warn!(error = %e, backoff_ms = ACCEPT_BACKOFF.as_millis() as u64, "accept failed; backing off");
                tokio::select! {
                    sig = signals.recv() => return sig,
                    () = tokio::time::sleep(ACCEPT_BACKOFF) => {}
                }
            }
        }
    }
}

/// Polls every listener, starting after the one that last produced a
/// connection so a busy listener cannot starve the others.
fn poll_accept_any(
    listeners: &[TcpListener],
    next: &mut usize,
    cx: &mut Context<'_>,
) -> Poll<io::Result<(TcpStream, SocketAddr)>> {
    let n = listeners.len();
    for k in 0..n {
        let i = (*next + k) % n;
        if let Poll::Ready(res) = listeners[i].poll_accept(cx) {
            *next = (i + 1) % n;
            return Poll::Ready(res);
        }
    }
    Poll::Pending
}

/// Errors that concern only the connection being accepted.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// What a connection task needs from the server: the HTTP/2 builder and
/// graceful-shutdown watcher (for h2c clients, served by hyper) and the
/// drain of the HTTP/1 connections (served by [`crate::http::http1`]).
struct Protocols<'a> {
    h2: &'a Arc<http2::Builder<TokioExecutor>>,
    graceful: &'a GracefulShutdown,
    drain: &'a http1::Drain,
}

/// Serves one connection on its own task: HTTP/1.1 with [`crate::http::http1`],
/// or HTTP/2 with hyper when the client sends the h2c preface.
fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    protocols: &Protocols<'_>,
    state: &Arc<AppState>,
) {
    // Responses are written whole; Nagle would only delay their last
    // segment behind the client's delayed ACK.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(%peer, error = %e, "setting TCP_NODELAY failed");
    }
    // The connection's idle deadlines (first byte, head, keep-alive, and
    // send: a client that stops reading) live in its IO; the server tells
    // it which requests are in flight, from the complete head until the
    // response's last byte.
    let activity = Activity::new();
    let io = DeadlineIo::new(
        stream,
        activity.clone(),
        state.ctx.settings.connection.idle(),
    );
    let guard = state.connection_opened();
    let drain = protocols.drain.signal();
    let state = state.clone();
    // Only an h2c connection needs these; both are small (a pointer and a
    // watch receiver), and taken now because the server's handles are not
    // `'static`.
    let h2 = protocols.h2.clone();
    let watcher = protocols.graceful.watcher();
    tokio::spawn(async move {
        let served = {
            let state = &state;
            http1::serve(io, activity.clone(), drain, move |req| {
                router::handle(req, state.clone(), peer)
            })
            .await
        };
        match served {
            Ok(http1::Served::Done) => {}
            Ok(http1::Served::Http2 { io, preface }) => {
                // Boxed: the HTTP/2 connection's state is large and most
                // connections never need it.
                let io = http1::Rewind::new(preface, io);
                Box::pin(serve_h2(io, &h2, watcher, activity, state.clone(), peer)).await;
            }
            // Resets and half-finished requests from clients are routine.
            Err(e) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
        }
        drop(guard);
    });
}

/// Serves an h2c connection with hyper, watched by the graceful shutdown.
async fn serve_h2<S>(
    io: S,
    builder: &http2::Builder<TokioExecutor>,
    watcher: Watcher,
    activity: Arc<Activity>,
    state: Arc<AppState>,
    peer: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = service_fn(move |req| {
        let state = state.clone();
        let request = activity.request_started();
        async move {
            let resp = router::handle(req, state, peer).await;
            Ok::<_, Infallible>(resp.map(|body| request.track(body)))
        }
    });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
    }
}

/// SIGTERM and SIGINT, either of which starts a drain.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn new() -> anyhow::Result<Self> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    /// Waits for the next stop signal and names it.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// This worker's metrics as an HTTP response (Prometheus text format).
fn metrics_response(
    req: &http::Request<hyper::body::Incoming>,
    state: &AppState,
) -> http::Response<crate::pipeline::response::Body> {
    if req.uri().path() == crate::http::endpoints::METRICS_PATH {
        // Read now rather than counted on every open and close.
        crate::telemetry::connections_open(state.open_connections());
        let mut r = http::Response::new(crate::pipeline::response::full(
            crate::telemetry::render_for_scrape(),
        ));
        r.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(crate::telemetry::CONTENT_TYPE),
        );
        r
    } else {
        let mut r = http::Response::new(crate::pipeline::response::full("not found\n"));
        *r.status_mut() = http::StatusCode::NOT_FOUND;
        r
    }
}

/// Serves one metrics connection (HTTP/1, `GET /metrics` only).
fn serve_metrics_connection<S>(stream: S, state: Arc<AppState>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
            let state = state.clone();
            async move { Ok::<_, Infallible>(metrics_response(&req, &state)) }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(TokioIo::new(stream), service)
            .await;
    });
}

/// Serves `GET /metrics` (this worker's own numbers) on `0.0.0.0:port`:
/// `METRICS_PORT` for a worker running without a supervisor. Failing to
/// bind is logged, not fatal: metrics must not take the service down.
pub async fn serve_metrics(port: u16, state: Arc<AppState>) {
    let listener = match TcpListener::bind(("0.0.0.0", port)).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(port, error = %e, "cannot bind METRICS_PORT; /metrics disabled");
            return;
        }
    };
    tracing::info!(port, "serving /metrics");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => serve_metrics_connection(stream, state.clone()),
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}

/// Serves this worker's metrics to its supervisor on the abstract Unix
/// socket named by `HEARTALK_METRICS_SOCKET` (`@name`): the supervisor
/// scrapes every worker and serves the fleet-wide sum.
pub async fn serve_metrics_unix(name: String, state: Arc<AppState>) {
    use std::os::linux::net::SocketAddrExt;
    let bound = name
        .strip_prefix('@')
        .ok_or_else(|| io::Error::other("not an abstract socket name (must start with @)"))
        .and_then(|n| std::os::unix::net::SocketAddr::from_abstract_name(n.as_bytes()))
        .and_then(|addr| std::os::unix::net::UnixListener::bind_addr(&addr))
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::UnixListener::from_std(l)
        });
    let listener = match bound {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(socket = %name, error = %e, "cannot serve metrics to the supervisor");
            return;
        }
    };
    loop {
        match listener.accept().await {
            Ok((stream, _)) => serve_metrics_connection(stream, state.clone()),
            Err(_) => tokio::time::sleep(ACCEPT_BACKOFF).await,
        }
    }
}
