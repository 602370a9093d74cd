//! Continuous load from client threads that counts every failure.

use super::*;

/// Continuous GET load from several client threads: even ones reuse a
/// keep-alive connection, odd ones open a connection per request. Every
/// failure is recorded; [`Load::finish`] stops the clients and returns them.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    served: Arc<std::sync::atomic::AtomicUsize>,
    clients: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize, path: &'static str) -> Load {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let stop = Arc::new(AtomicBool::new(false));
        let served = Arc::new(AtomicUsize::new(0));
        let clients = (0..clients)
            .map(|i| {
                let (stop, served) = (stop.clone(), served.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut keep_alive = KeepAlive::new(addr);
                    while !stop.load(Ordering::Relaxed) {
                        let r = if i % 2 == 0 {
                            keep_alive.get(path)
                        } else {
                            http_get(addr, path, Duration::from_secs(30))
                        };
                        match r {
                            Ok(r) if r.status == 200 => {
                                served.fetch_add(1, Ordering::Relaxed);
                            }
                            other => errors.push(format!("client {i}: {other:?}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            served,
            clients,
        }
    }

    /// Requests answered with 200 so far.
    pub fn served(&self) -> usize {
        self.served.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `n` more requests than now have been served.
    pub fn wait_more(&self, n: usize) {
        let target = self.served() + n;
        wait_for("more traffic", DEADLINE, || {
            (self.served() >= target).then_some(())
        });
    }

    /// Stops the clients and fails the test if any request failed.
    pub fn finish_clean(self) {
        let served = self.served();
        let errors = self.finish();
        assert!(
            errors.is_empty(),
            "{} failed of {served}: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        );
    }

    /// Stops the clients; returns every failure they saw.
    pub fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.clients
            .into_iter()
            .flat_map(|c| c.join().unwrap())
            .collect()
    }
}

/// Rate-limit windows are fixed and aligned to the minute: when the current
/// one ends within 10 s, waits for the next to begin, so a test's requests
/// all land in one window.
pub fn stay_in_one_window() {
    let into_window = now_unix() % 60;
    if into_window > 50 {
        std::thread::sleep(Duration::from_secs(61 - into_window));
    }
}
