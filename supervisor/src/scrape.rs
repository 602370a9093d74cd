//! How worker metrics reach the supervisor, and the supervisor's own.
//!
//! Every worker serves its Prometheus text on a private abstract Unix
//! socket (`HEARTALK_METRICS_SOCKET`). On each scrape (and every
//! [`REFRESH`] in the background, so the last known numbers of a worker
//! that is killed are recent) the supervisor fetches all of them at once,
//! keeps each worker's latest exposition, and merges them with
//! [`crate::metrics::Aggregator`]: a worker that left the fleet is retired
//! with its last numbers, so fleet counters never go backwards. Scrapes are
//! serialised by an async mutex, so a retired worker cannot be re-added by
//! a slower concurrent scrape.
//!
//! Chosen over shared memory or pushing over the control channel because
//! it needs nothing from the worker but an ordinary `/metrics` endpoint
//! (any Prometheus-instrumented program can be supervised), and a scrape
//! of 16 workers in parallel costs a few milliseconds.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::os::linux::net::SocketAddrExt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::fleet::FleetView;
use crate::metrics::{Aggregator, Exposition, WorkerLabel, parse};

/// Background refresh period of the workers' last known numbers.
pub const REFRESH: Duration = Duration::from_secs(2);
/// How long one worker may take to answer a scrape.
const WORKER_TIMEOUT: Duration = Duration::from_millis(500);
/// Largest exposition read from one worker.
const MAX_BODY: usize = 16 << 20;

/// One worker to scrape.
#[derive(Debug, Clone)]
pub struct Target {
    pub id: String,
    pub label: WorkerLabel,
}

/// The targets of a fleet: every worker holding a slot, then every worker
/// still draining. Draining ones come last: they share a slot label with
/// its new worker, and the merge keeps the first worker's gauges for a
/// label, while every worker's counters are summed — so what a draining
/// worker counts keeps adding up until it exits and is retired.
pub fn targets(view: &FleetView) -> Vec<Target> {
    let current = view.apps.iter().flat_map(|a| {
        a.slots.iter().filter_map(move |s| {
            s.worker.as_ref().map(|w| Target {
                id: w.metrics_id.clone(),
                label: WorkerLabel {
                    app: a.name.clone(),
                    slot: s.slot,
                },
            })
        })
    });
    let draining = view.draining.iter().map(|(app, slot, id)| Target {
        id: id.clone(),
        label: WorkerLabel {
            app: app.clone(),
            slot: *slot,
        },
    });
    current.chain(draining).collect()
}

#[derive(Default)]
struct State {
    last: HashMap<String, (WorkerLabel, Exposition)>,
    aggregator: Aggregator,
}

/// The merged metrics of the fleet, and each worker's own figures.
#[derive(Default)]
pub struct FleetMetrics {
    state: tokio::sync::Mutex<State>,
    figures: Mutex<HashMap<String, Figures>>,
}

/// What `heartalk status` shows of a worker's metrics, at the last scrape.
#[derive(Debug, Clone, Copy)]
struct Figures {
    requests: u64,
    /// `ai_connections_open`; `None` when the worker does not export it.
    connections: Option<u64>,
}

impl FleetMetrics {
    /// Scrapes `targets`, retires workers that are gone, and renders the
    /// fleet-wide exposition with `extra` (the supervisor's families).
    pub async fn collect(&self, targets: Vec<Target>, extra: String) -> String {
        let mut st = self.state.lock().await;
        self.update(&mut st, &targets).await;
        let live: Vec<(WorkerLabel, &Exposition)> = targets
            .iter()
            .filter_map(|t| st.last.get(&t.id).map(|(l, e)| (l.clone(), e)))
            .collect();
        st.aggregator.render(&live, &extra)
    }

    /// [`FleetMetrics::collect`] without rendering: keeps the last known
    /// numbers fresh (the background scrape).
    pub async fn refresh(&self, targets: Vec<Target>) {
        let mut st = self.state.lock().await;
        self.update(&mut st, &targets).await;
    }

    async fn update(&self, st: &mut State, targets: &[Target]) {
        let live: HashSet<&str> = targets.iter().map(|t| t.id.as_str()).collect();
        let gone: Vec<String> = st
            .last
            .keys()
            .filter(|id| !live.contains(id.as_str()))
            .cloned()
            .collect();
        for id in gone {
            if let Some((label, exp)) = st.last.remove(&id) {
                st.aggregator.retire(&label.app, &exp);
            }
        }
        let fetched = join_all(targets.iter().map(|t| fetch(&t.id))).await;
        for (t, result) in targets.iter().zip(fetched) {
            match result.and_then(|text| parse(&text).map_err(|e| e.to_string())) {
                Ok(exp) => {
                    st.last.insert(t.id.clone(), (t.label.clone(), exp));
                }
                // Keep the previous numbers: a worker that is starting or
                // busy must not vanish from the sums for one scrape.
                Err(e) => tracing::debug!(event = "scrape_failed", worker = %t.id, error = %e),
            }
        }
        let figures: HashMap<String, Figures> = st
            .last
            .iter()
            .map(|(id, (_, exp))| {
                let figures = Figures {
                    requests: requests_served(exp),
                    connections: family_sum(exp, "ai_connections_open"),
                };
                (id.clone(), figures)
            })
            .collect();
        *self.figures.lock().unwrap_or_else(|e| e.into_inner()) = figures;
    }

    /// Requests a worker had answered at the last scrape.
    pub fn requests(&self, id: &str) -> Option<u64> {
        self.figures(id).map(|f| f.requests)
    }

    /// Client connections a worker had open at the last scrape (`None`
    /// also when it does not export `ai_connections_open`).
    pub fn connections(&self, id: &str) -> Option<u64> {
        self.figures(id).and_then(|f| f.connections)
    }

    fn figures(&self, id: &str) -> Option<Figures> {
        self.figures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }
}

/// The sum of `http_requests_total` over all its series.
fn requests_served(exp: &Exposition) -> u64 {
    family_sum(exp, "http_requests_total").unwrap_or(0)
}

/// The sum of family `name` over its series, if the worker exports it.
fn family_sum(exp: &Exposition, name: &str) -> Option<u64> {
    exp.families
        .get(name)
        .map(|f| f.samples.iter().map(|s| s.value).sum::<f64>() as u64)
}

/// `GET /metrics` over a worker's abstract socket.
async fn fetch(id: &str) -> Result<String, String> {
    let attempt = async {
        let name = id.strip_prefix('@').ok_or("not an abstract socket name")?;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .map_err(|e| e.to_string())?;
        let std_stream =
            std::os::unix::net::UnixStream::connect_addr(&addr).map_err(|e| e.to_string())?;
        std_stream
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let mut stream = tokio::net::UnixStream::from_std(std_stream).map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: worker\r\n\r\n")
            .await
            .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        stream
            .take(MAX_BODY as u64)
            .read_to_end(&mut raw)
            .await
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8(raw).map_err(|_| "not UTF-8".to_string())?;
        let (head, body) = text
            .split_once("\r\n\r\n")
            .ok_or("incomplete HTTP response")?;
        if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
            return Err(format!("answered {}", head.lines().next().unwrap_or("")));
        }
        Ok(body.to_string())
    };
    match tokio::time::timeout(WORKER_TIMEOUT, attempt).await {
        Ok(r) => r,
        Err(_) => Err(format!("no answer within {WORKER_TIMEOUT:?}")),
    }
}

/// Remembers each worker's CPU time to report CPU % between two looks.
#[derive(Default)]
pub struct CpuSampler {
    last: HashMap<i32, (Instant, f64)>,
}

impl CpuSampler {
    /// CPU % of `pid` since the previous call (or over its life on the
    /// first), plus its total CPU seconds.
    pub fn sample(
        &mut self,
        pid: nix::unistd::Pid,
        started: Instant,
        now: Instant,
    ) -> Option<(f64, f64)> {
        let total = crate::sys::cpu_seconds(pid)?;
        let (since, before) = self
            .last
            .insert(pid.as_raw(), (now, total))
            .unwrap_or((started, 0.0));
        let wall = now.saturating_duration_since(since).as_secs_f64();
        let pct = if wall > 0.0 {
            100.0 * (total - before).max(0.0) / wall
        } else {
            0.0
        };
        Some((pct, total))
    }

    /// Drops `pid`'s reading. Called as each child is reaped, so the map
    /// holds only live processes whether or not anyone asks for `status`
    /// or `/metrics`, and a reused pid starts afresh.
    pub fn forget(&mut self, pid: nix::unistd::Pid) {
        self.last.remove(&pid.as_raw());
    }
}

/// The supervisor's own families (appended to the merged exposition).
pub fn supervisor_families(
    view: &FleetView,
    cpu: &mut CpuSampler,
    now: Instant,
    log: Option<crate::logs::LogStats>,
) -> String {
    let mut out = String::new();
    let esc = |s: &str| {
        let mut out = String::with_capacity(s.len());
        crate::metrics::escape_into(&mut out, s, true);
        out
    };

    by_app(
        &mut out,
        &esc,
        "heartalk_worker_restarts_total",
        "Worker restarts by reason (crash, memory, reload, hung)",
        "reason",
        &view.restarts_by,
    );
    by_app(
        &mut out,
        &esc,
        "heartalk_worker_hung_total",
        "Workers found hung and replaced, by reason (silent: no watchdog ping in time; trigger: WATCHDOG=trigger)",
        "reason",
        &view.hangs_by,
    );
    by_app(
        &mut out,
        &esc,
        "heartalk_reloads_total",
        "Reloads by outcome (committed, rolled_back, refused)",
        "outcome",
        &view.reloads_by,
    );
    let mut up = String::new();
    let mut state = String::new();
    let mut memory = String::new();
    let mut rss_lines = String::new();
    let mut cpu_lines = String::new();
    let mut ping_lines = String::new();
    for app in &view.apps {
        let a = esc(&app.name);
        for s in &app.slots {
            let online = u8::from(s.state == crate::fleet::SlotState::Online);
            let _ = writeln!(
                up,
                "heartalk_worker_up{{app=\"{a}\",slot=\"{}\"}} {online}",
                s.slot
            );
            for st in crate::fleet::SlotState::ALL {
                let v = u8::from(s.state == st);
                let _ = writeln!(
                    state,
                    "heartalk_worker_state{{app=\"{a}\",slot=\"{}\",state=\"{st}\"}} {v}",
                    s.slot
                );
            }
            let Some(w) = &s.worker else { continue };
            if let Some(ping) = w.last_ping {
                let age = now.saturating_duration_since(ping).as_secs_f64();
                let _ = writeln!(
                    ping_lines,
                    "heartalk_worker_watchdog_ping_age_seconds{{app=\"{a}\",slot=\"{}\"}} {age:.3}",
                    s.slot
                );
            }
            if let Some(rss) = crate::memory::rss(w.pid) {
                let _ = writeln!(
                    memory,
                    "heartalk_worker_memory_bytes{{app=\"{a}\",slot=\"{}\",kind=\"rss\"}} {rss}",
                    s.slot
                );
                let _ = writeln!(
                    rss_lines,
                    "process_resident_memory_bytes{{app=\"{a}\",worker=\"{}\",pid=\"{}\"}} {rss}",
                    s.slot, w.pid
                );
            }
            if let Some(pss) = w.pss {
                let _ = writeln!(
                    memory,
                    "heartalk_worker_memory_bytes{{app=\"{a}\",slot=\"{}\",kind=\"pss\"}} {pss}",
                    s.slot
                );
            }
            if let Some((_, total)) = cpu.sample(w.pid, w.started, now) {
                let _ = writeln!(
                    cpu_lines,
                    "process_cpu_seconds_total{{app=\"{a}\",worker=\"{}\",pid=\"{}\"}} {total}",
                    s.slot, w.pid
                );
            }
        }
    }
    family(
        &mut out,
        "heartalk_worker_up",
        "gauge",
        "1 when the slot's worker is online and serving (0 while degraded or hung)",
    );
    out.push_str(&up);
    family(
        &mut out,
        "heartalk_worker_state",
        "gauge",
        "The slot's state (1 for the current one)",
    );
    out.push_str(&state);
    family(
        &mut out,
        "heartalk_worker_watchdog_ping_age_seconds",
        "gauge",
        "Seconds since the slot's worker last pinged WATCHDOG=1 (absent: it never pinged)",
    );
    out.push_str(&ping_lines);
    family(
        &mut out,
        "heartalk_worker_memory_bytes",
        "gauge",
        "Worker memory by kind (rss, pss)",
    );
    out.push_str(&memory);
    family(
        &mut out,
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory of each worker process",
    );
    out.push_str(&rss_lines);
    family(
        &mut out,
        "process_cpu_seconds_total",
        "counter",
        "CPU time of each worker process (a new pid starts a new series)",
    );
    out.push_str(&cpu_lines);
    if let Some(log) = log {
        family(
            &mut out,
            "heartalk_log_lines_dropped_total",
            "counter",
            "Log lines dropped (queue full or log disk failing)",
        );
        let _ = writeln!(out, "heartalk_log_lines_dropped_total {}", log.dropped);
        family(
            &mut out,
            "heartalk_log_writes_failing",
            "gauge",
            "1 while writing the log file fails (disk full or failing), else 0",
        );
        let _ = writeln!(out, "heartalk_log_writes_failing {}", u8::from(log.failing));
    }
    family(
        &mut out,
        "heartalk_supervisor_resident_memory_bytes",
        "gauge",
        "Resident memory of the supervisor",
    );
    if let Some(rss) = crate::memory::rss(nix::unistd::Pid::this()) {
        let _ = writeln!(out, "heartalk_supervisor_resident_memory_bytes {rss}");
    }
    out
}

/// A counter family with one series per (app, `label`) pair.
fn by_app(
    out: &mut String,
    esc: &dyn Fn(&str) -> String,
    name: &str,
    help: &str,
    label: &str,
    rows: &[(String, &'static str, u64)],
) {
    family(out, name, "counter", help);
    for (app, value, n) in rows {
        let _ = writeln!(
            out,
            "{name}{{app=\"{}\",{label}=\"{value}\"}} {n}",
            esc(app)
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use nix::unistd::Pid;

    use super::*;

    #[test]
    fn a_workers_figures_come_from_its_exposition() {
        let exp = parse(
            "http_requests_total{code=\"200\"} 5\nhttp_requests_total{code=\"404\"} 2\n\
             ai_connections_open 3\n",
        )
        .unwrap();
        assert_eq!(requests_served(&exp), 7);
        assert_eq!(family_sum(&exp, "ai_connections_open"), Some(3));
        assert_eq!(family_sum(&exp, "ai_connections_max"), None);
    }

    #[test]
    fn a_forgotten_pid_leaves_no_reading() {
        let mut cpu = CpuSampler::default();
        let me = Pid::this();
        let started = Instant::now();
        let now = started + Duration::from_secs(1);
        // Some CPU of our own first, so the total read cannot be zero: spin
        // until the kernel has counted a tick (on a loaded machine 30 ms
        // of wall time can be less than one tick of CPU).
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut x = 0u64;
        let total = loop {
            let spin = Instant::now();
            while spin.elapsed() < Duration::from_millis(20) {
                x = std::hint::black_box(x.wrapping_add(1));
            }
            let (_, total) = cpu.sample(me, started, now).expect("this process");
            if total > 0.0 || Instant::now() > deadline {
                break total;
            }
        };
        assert!(total > 0.0, "{total}");
        assert_eq!(cpu.last.len(), 1);
        // Another pid's reading is kept when one is forgotten.
        cpu.last.insert(i32::MAX, (now, 1.0));
        cpu.forget(me);
        assert_eq!(cpu.last.keys().copied().collect::<Vec<_>>(), [i32::MAX]);
        // A pid that is gone is not sampled (nothing is added for it).
        assert!(
            cpu.sample(Pid::from_raw(i32::MAX - 1), started, now)
                .is_none()
        );
        assert_eq!(cpu.last.len(), 1);
    }
}
