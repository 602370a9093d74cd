//! Request coalescing (API.md §9): one upstream call shared by every
//! identical request in flight at the same moment.
//!
//! A [`Flight`] is the log of one upstream call: the stream deltas so far,
//! whether the upstream has answered 2xx yet, and the final outcome. The
//! call itself runs in its own task (see [`super::ResponseCache::drive`]),
//! not in any one client's request, so the first client leaving does not
//! cancel the answer the others wait for. Each waiting request holds a
//! [`Subscription`]; a late joiner replays the log from the start, then
//! follows live. When the last subscription is dropped, the flight is
//! abandoned and its task drops the upstream call (the cancellation rule of
//! §5.3 and §9: cancelled only when its last listener leaves).

use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::Entry;
use crate::provider::{EventStream, StreamEvent, UpstreamError};

/// One streamed delta, in arrival order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Delta {
    #[serde(rename = "c")]
    Content(String),
    #[serde(rename = "r")]
    Reasoning(String),
}

impl From<&Delta> for StreamEvent {
    fn from(d: &Delta) -> StreamEvent {
        match d {
            Delta::Content(s) => StreamEvent::Content(s.clone()),
            Delta::Reasoning(s) => StreamEvent::Reasoning(s.clone()),
        }
    }
}

#[derive(Default)]
struct Log {
    deltas: Vec<Delta>,
    /// The upstream answered 2xx (a stream may begin).
    started: bool,
    outcome: Option<Result<Arc<Entry>, UpstreamError>>,
}

/// The shared log of one upstream call.
pub struct Flight {
    log: Mutex<Log>,
    /// The answer came from another process's call (through Redis).
    remote: std::sync::atomic::AtomicBool,
    /// Bumped on every change; receivers are the subscriptions.
    tx: watch::Sender<u64>,
}

impl Flight {
    pub fn new() -> Arc<Flight> {
        Arc::new(Flight {
            log: Mutex::new(Log::default()),
            remote: std::sync::atomic::AtomicBool::new(false),
            tx: watch::Sender::new(0),
        })
    }

    /// A new listener; it sees the whole log from the start.
    pub fn subscribe(self: &Arc<Self>) -> Subscription {
        Subscription {
            flight: self.clone(),
            rx: self.tx.subscribe(),
            next: 0,
            done: false,
            replay: None,
        }
    }

    /// Listeners currently subscribed.
    pub fn listeners(&self) -> usize {
        self.tx.receiver_count()
    }

    fn update(&self, f: impl FnOnce(&mut Log)) {
        if let Ok(mut log) = self.log.lock() {
            f(&mut log);
        }
        self.tx.send_modify(|v| *v += 1);
    }

    /// Notes that another process made the call (`X-Cache: COALESCED`).
    pub fn mark_remote(&self) {
        self.remote
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// The upstream answered 2xx: streams may send their headers.
    pub fn start(&self) {
        self.update(|l| l.started = true);
    }

    pub fn push(&self, d: Delta) {
        self.update(|l| l.deltas.push(d));
    }

    /// A copy of the deltas so far (the call's whole answer once it is
    /// done): the log is the one record of them while the call runs.
    pub fn deltas(&self) -> Vec<Delta> {
        self.log
            .lock()
            .map(|l| l.deltas.clone())
            .unwrap_or_default()
    }

    /// The final outcome; later calls are ignored.
    pub fn finish(&self, outcome: Result<Arc<Entry>, UpstreamError>) {
        self.update(|l| {
            if l.outcome.is_none() {
                l.started = true;
                l.outcome = Some(outcome);
            }
        });
    }

    pub fn is_finished(&self) -> bool {
        self.log.lock().map(|l| l.outcome.is_some()).unwrap_or(true)
    }

    /// Resolves once no listener is left (it may fire again later if one
    /// joins and leaves: the caller re-checks [`Flight::listeners`]).
    pub async fn abandoned(&self) {
        self.tx.closed().await;
    }
}

/// One request's view of a [`Flight`].
pub struct Subscription {
    flight: Arc<Flight>,
    rx: watch::Receiver<u64>,
    next: usize,
    done: bool,
    /// Set when the flight produced a whole answer: its chunked replay.
    replay: Option<std::vec::IntoIter<Result<StreamEvent, UpstreamError>>>,
}

impl Subscription {
    /// `X-Cache` for the leader's request: `MISS`, or `COALESCED` when
    /// another process's call answered this flight (through Redis).
    pub fn leader_x_cache(&self) -> &'static str {
        if self
            .flight
            .remote
            .load(std::sync::atomic::Ordering::Relaxed)
        {
            "COALESCED"
        } else {
            "MISS"
        }
    }

    /// Waits until `ready` says something about the log (checked now and
    /// after every change); `Cancelled` if the flight is gone.
    async fn wait_for<T>(
        &mut self,
        ready: impl Fn(&Log) -> Option<Result<T, UpstreamError>>,
    ) -> Result<T, UpstreamError> {
        loop {
            {
                let log = self
                    .flight
                    .log
                    .lock()
                    .map_err(|_| UpstreamError::Cancelled)?;
                if let Some(r) = ready(&log) {
                    return r;
                }
            }
            if self.rx.changed().await.is_err() {
                return Err(UpstreamError::Cancelled);
            }
        }
    }

    /// Waits until the upstream has answered 2xx (Ok) or the call failed
    /// before that (the error, for an ordinary JSON error response).
    pub async fn started(&mut self) -> Result<(), UpstreamError> {
        self.wait_for(|log| match &log.outcome {
            Some(Err(e)) if log.deltas.is_empty() => Some(Err(e.clone())),
            _ if log.started => Some(Ok(())),
            _ => None,
        })
        .await
    }

    /// Waits for the final outcome.
    pub async fn answer(&mut self) -> Result<Arc<Entry>, UpstreamError> {
        self.wait_for(|log| log.outcome.clone()).await
    }

    /// The next item of the replay-then-live stream, `None` after the end.
    async fn next_event(&mut self) -> Option<Result<StreamEvent, UpstreamError>> {
        loop {
            if let Some(replay) = &mut self.replay {
                return replay.next();
            }
            if self.done {
                return None;
            }
            {
                let log = self.flight.log.lock().ok()?;
                if let Some(d) = log.deltas.get(self.next) {
                    self.next += 1;
                    return Some(Ok(StreamEvent::from(d)));
                }
                match &log.outcome {
                    // A whole (non-streamed) answer: replay it in chunks.
                    Some(Ok(entry)) if log.deltas.is_empty() => {
                        self.replay = Some(entry.replay().into_iter());
                        continue;
                    }
                    Some(Ok(entry)) => {
                        self.done = true;
                        return Some(Ok(entry.done_event()));
                    }
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Err(e.clone()));
                    }
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                self.done = true;
                return Some(Err(UpstreamError::Cancelled));
            }
        }
    }

    /// The flight as a stream of deltas ending in `Done` or an error.
    /// Dropping the stream drops the subscription.
    pub fn into_events(self) -> EventStream {
        futures_util::stream::unfold(self, |mut s| async move {
            s.next_event().await.map(|item| (item, s))
        })
        .boxed()
    }
}
