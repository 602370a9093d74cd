//! What the pipeline runs in: the settings, the long-lived [`Services`],
//! and the drain deadline that open streams listen for.
//!
//! The HTTP edge holds it in an `Arc` (in its connection state) and hands
//! it to the pipeline's endpoints; a stream keeps its own clone for as long
//! as it is open. It carries nothing about connections or the process's
//! lifecycle: those stay with the edge.

use crate::pipeline::services::Services;
use crate::settings::Settings;

/// The context the pipeline runs in, one per worker.
pub struct Pipeline {
    pub settings: Settings,
    /// Provider, router, history client, limiter, response cache.
    pub services: Services,
    /// Flips to true when the drain deadline passes: open SSE streams send
    /// their final error frame and end.
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl Pipeline {
    pub fn new(settings: Settings, services: Services) -> Self {
        Pipeline {
            settings,
            services,
            shutdown: tokio::sync::watch::Sender::new(false),
        }
    }

    /// Subscribes a stream to the drain deadline.
    pub fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells every open stream to finish now; returns how many listen.
    pub fn finish_streams(&self) -> usize {
        self.shutdown.send_replace(true);
        self.shutdown.receiver_count()
    }
}
