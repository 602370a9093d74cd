//! What `heartalk top` shows, computed from the status snapshots alone (no
//! terminal, no socket, no clock of its own), so every figure is a plain
//! function of its inputs: request rates from two snapshots, fleet totals,
//! which columns fit a width, and which worker is selected.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use shared::control::{Status, WorkerStatus};

/// The span a request rate is measured over: the supervisor refreshes a
/// worker's request count every [`crate::scrape::REFRESH`] (2 s), so a
/// rate between two snapshots 1 s apart would swing between 0 and twice
/// the truth; over one scrape period it is steady.
pub const RATE_SPAN: Duration = crate::scrape::REFRESH;

/// A worker's request count at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Count {
    pub at: Instant,
    pub requests: u64,
}

/// Requests per second between two readings of the same process; `None`
/// when no time passed or the count went down (it cannot for one process).
pub fn rate(prev: Count, cur: Count) -> Option<f64> {
    let secs = cur.at.checked_duration_since(prev.at)?.as_secs_f64();
    let served = cur.requests.checked_sub(prev.requests)?;
    (secs > 0.0).then(|| served as f64 / secs)
}

/// One worker as shown: its status, its app, and its request rate.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub app: String,
    pub listen: String,
    pub worker: WorkerStatus,
    pub req_rate: Option<f64>,
}

impl Row {
    /// `app/slot`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.app, self.worker.slot)
    }
}

/// The fleet line's figures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Totals {
    pub online: usize,
    pub workers: usize,
    pub cpu_percent: f64,
    /// PSS summed where known (shared pages counted once), else RSS.
    pub memory: u64,
    pub req_rate: Option<f64>,
    pub connections: Option<u64>,
}

/// Sums `rows`; a rate or connection count is `None` when no worker has one.
pub fn totals(rows: &[Row]) -> Totals {
    Totals {
        online: rows.iter().filter(|r| r.worker.state == "online").count(),
        workers: rows.len(),
        cpu_percent: rows.iter().filter_map(|r| r.worker.cpu_percent).sum(),
        memory: rows
            .iter()
            .filter_map(|r| r.worker.pss_bytes.or(r.worker.rss_bytes))
            .sum(),
        req_rate: rows.iter().filter_map(|r| r.req_rate).reduce(|a, b| a + b),
        connections: rows
            .iter()
            .filter_map(|r| r.worker.connections)
            .reduce(|a, b| a + b),
    }
}

/// Every snapshot's request counts, by pid, for as long as rates need.
#[derive(Debug, Default)]
pub struct Model {
    pub status: Option<Status>,
    pub rows: Vec<Row>,
    /// When the shown status was taken.
    pub taken: Option<Instant>,
    history: VecDeque<(Instant, HashMap<u32, u64>)>,
}

impl Model {
    /// Takes a new snapshot, taken at `at`.
    pub fn update(&mut self, status: Status, at: Instant) {
        let counts: HashMap<u32, u64> = status
            .apps
            .iter()
            .flat_map(|a| &a.workers)
            .filter_map(|w| Some((w.pid?, w.requests?)))
            .collect();
        // The newest earlier snapshot a span old: the refresh ticks are not
        // exact, so one a tenth of a span younger will do.
        let old_enough = |t: &Instant| at.saturating_duration_since(*t) >= RATE_SPAN * 9 / 10;
        let before = self.history.iter().rev().find(|(t, _)| old_enough(t));
        self.rows = status
            .apps
            .iter()
            .flat_map(|app| {
                app.workers.iter().map(move |w| Row {
                    app: app.name.clone(),
                    listen: app.listen.clone(),
                    worker: w.clone(),
                    req_rate: None,
                })
            })
            .collect();
        for row in &mut self.rows {
            let (Some(pid), Some(requests)) = (row.worker.pid, row.worker.requests) else {
                continue;
            };
            row.req_rate = before.and_then(|(t, old)| {
                let prev = Count {
                    at: *t,
                    requests: *old.get(&pid)?,
                };
                rate(prev, Count { at, requests })
            });
        }
        // The oldest snapshot is needed no more once a newer one is a span
        // old: later snapshots will measure against that one.
        while self.history.get(1).is_some_and(|(t, _)| old_enough(t)) {
            self.history.pop_front();
        }
        self.history.push_back((at, counts));
        self.status = Some(status);
        self.taken = Some(at);
    }
}

/// A column of the worker table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Col {
    Pid,
    AppSlot,
    State,
    Cpu,
    Rss,
    Pss,
    ReqRate,
    Conns,
    Restarts,
    Ping,
    Uptime,
    Gen,
    LastExit,
}

/// Left to right.
pub const COLUMNS: [Col; 13] = [
    Col::Pid,
    Col::AppSlot,
    Col::State,
    Col::Cpu,
    Col::Rss,
    Col::Pss,
    Col::ReqRate,
    Col::Conns,
    Col::Restarts,
    Col::Ping,
    Col::Uptime,
    Col::Gen,
    Col::LastExit,
];

/// Which columns go first when the table is too wide: what the details
/// pane shows anyway, then the figures least watched live. Pid, app/slot
/// and state always stay.
pub const DROP_ORDER: [Col; 10] = [
    Col::LastExit,
    Col::Gen,
    Col::Uptime,
    Col::Pss,
    Col::Ping,
    Col::Restarts,
    Col::Conns,
    Col::Rss,
    Col::Cpu,
    Col::ReqRate,
];

/// Blank characters between two columns.
pub const GAP: u16 = 1;
/// Widest app/slot cell; longer names are cut.
pub const MAX_APP_SLOT: u16 = 24;

impl Col {
    pub fn header(self) -> &'static str {
        match self {
            Col::Pid => "PID",
            Col::AppSlot => "APP/SLOT",
            Col::State => "STATE",
            Col::Cpu => "CPU",
            Col::Rss => "RSS",
            Col::Pss => "PSS",
            Col::ReqRate => "REQ/S",
            Col::Conns => "CONNS",
            Col::Restarts => "RESTARTS",
            Col::Ping => "PING",
            Col::Uptime => "UPTIME",
            Col::Gen => "GEN",
            Col::LastExit => "LAST EXIT",
        }
    }

    /// Width in characters; `app_slot` is that column's (see [`app_slot_width`]).
    pub fn width(self, app_slot: u16) -> u16 {
        match self {
            Col::Pid => 7,
            Col::AppSlot => app_slot,
            Col::State => 8,
            Col::Cpu => 6,
            Col::Rss | Col::Pss => 9,
            Col::ReqRate => 7,
            Col::Conns => 5,
            Col::Restarts => 8,
            Col::Ping => 6,
            Col::Uptime => 7,
            Col::Gen => 4,
            Col::LastExit => 20,
        }
    }
}

/// The app/slot column's width: its longest cell, at least its header.
pub fn app_slot_width(rows: &[Row]) -> u16 {
    let longest = rows.iter().map(|r| r.name().chars().count()).max();
    (longest.unwrap_or(0) as u16).clamp(Col::AppSlot.header().len() as u16, MAX_APP_SLOT)
}

/// The columns that fit in `width` characters, in table order: columns
/// are dropped in [`DROP_ORDER`] until the rest fit (never wrapped).
pub fn fit_columns(width: u16, app_slot: u16) -> Vec<Col> {
    let mut cols = COLUMNS.to_vec();
    let needed = |cols: &[Col]| -> u16 {
        cols.iter().map(|c| c.width(app_slot)).sum::<u16>()
            + GAP * (cols.len() as u16).saturating_sub(1)
    };
    for drop in DROP_ORDER {
        if needed(&cols) <= width {
            break;
        }
        cols.retain(|c| *c != drop);
    }
    cols
}

/// The selected row, kept within the rows there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Selection(usize);

impl Selection {
    /// The selected index among `len` rows (`None`: there are none).
    pub fn index(self, len: usize) -> Option<usize> {
        (len > 0).then(|| self.0.min(len - 1))
    }

    /// One row up or down, `delta` rows, stopping at either end.
    pub fn step(&mut self, delta: isize, len: usize) {
        let at = self.index(len).unwrap_or(0) as isize;
        self.0 = (at + delta).clamp(0, len.saturating_sub(1) as isize) as usize;
    }

    /// After a refresh: the rows may be fewer (workers gone, a scale down),
    /// so the selection moves to the last one that is left.
    pub fn clamp(&mut self, len: usize) {
        self.0 = self.index(len).unwrap_or(0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{status, worker};
    use super::*;

    #[test]
    fn a_rate_is_requests_over_the_time_between_two_readings() {
        let t0 = Instant::now();
        let at = |ms, requests| Count {
            at: t0 + Duration::from_millis(ms),
            requests,
        };
        assert_eq!(rate(at(0, 100), at(2000, 150)), Some(25.0));
        assert_eq!(rate(at(0, 100), at(500, 100)), Some(0.0));
        // No time, time backwards, or a count that went down: no rate.
        assert_eq!(rate(at(1000, 100), at(1000, 150)), None);
        assert_eq!(rate(at(2000, 100), at(1000, 150)), None);
        assert_eq!(rate(at(0, 150), at(2000, 100)), None);
    }

    #[test]
    fn rates_come_from_snapshots_a_scrape_period_apart_of_the_same_pid() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut m = Model::default();
        m.update(status(vec![worker(0, 10, 100), worker(1, 11, 0)]), s(0));
        assert!(m.rows.iter().all(|r| r.req_rate.is_none()));
        // One second on: not a whole scrape period yet.
        m.update(status(vec![worker(0, 10, 100), worker(1, 11, 0)]), s(1));
        assert!(m.rows.iter().all(|r| r.req_rate.is_none()));
        // Two seconds on: against the first snapshot. Slot 1 was replaced
        // (a new pid starts counting from 0): no rate for it.
        m.update(status(vec![worker(0, 10, 300), worker(1, 12, 7)]), s(2));
        assert_eq!(m.rows[0].req_rate, Some(100.0));
        assert_eq!(m.rows[1].req_rate, None);
        assert_eq!(totals(&m.rows).req_rate, Some(100.0));
        // Three seconds on: against the one at 1 s.
        m.update(status(vec![worker(0, 10, 400), worker(1, 12, 9)]), s(3));
        assert_eq!(m.rows[0].req_rate, Some(150.0));
        assert_eq!(m.rows[1].req_rate, None);
        m.update(status(vec![worker(0, 10, 400), worker(1, 12, 11)]), s(4));
        assert_eq!(m.rows[0].req_rate, Some(50.0));
        assert_eq!(m.rows[1].req_rate, Some(2.0));
        // Old snapshots are let go.
        assert!(m.history.len() <= 3, "{}", m.history.len());
    }

    #[test]
    fn totals_add_up_the_workers() {
        let mut stopped = worker(1, 11, 0);
        stopped.state = "waiting".into();
        stopped.pss_bytes = None;
        stopped.connections = None;
        let mut m = Model::default();
        m.update(status(vec![worker(0, 10, 0), stopped]), Instant::now());
        let t = totals(&m.rows);
        assert_eq!((t.online, t.workers), (1, 2));
        assert_eq!(t.cpu_percent, 3.0);
        assert_eq!(t.memory, (20 << 20) + (30 << 20));
        assert_eq!(t.connections, Some(2));
        assert_eq!(t.req_rate, None);
    }

    #[test]
    fn columns_are_dropped_in_order_to_fit_the_width() {
        // 80 columns: 76 inside the borders and the selection mark.
        let narrow = fit_columns(76, 11);
        assert_eq!(
            narrow,
            [
                Col::Pid,
                Col::AppSlot,
                Col::State,
                Col::Cpu,
                Col::Rss,
                Col::ReqRate,
                Col::Conns,
                Col::Restarts,
                Col::Ping
            ]
        );
        // 120: everything but the last exit.
        let wide = fit_columns(116, 11);
        assert_eq!(wide.len(), COLUMNS.len() - 1);
        assert!(!wide.contains(&Col::LastExit));
        // 200: everything.
        assert_eq!(fit_columns(196, 11), COLUMNS);
        // Tiny: pid, app/slot and state stay whatever the width.
        assert_eq!(fit_columns(10, 11), [Col::Pid, Col::AppSlot, Col::State]);
        for width in [28, 40, 60, 76, 116, 196] {
            let cols = fit_columns(width, 11);
            let used: u16 =
                cols.iter().map(|c| c.width(11)).sum::<u16>() + GAP * (cols.len() as u16 - 1);
            assert!(used <= width, "{width}: {cols:?}");
        }
    }

    #[test]
    fn the_app_slot_column_fits_its_names() {
        let mut m = Model::default();
        m.update(
            status(vec![worker(0, 10, 0), worker(11, 11, 0)]),
            Instant::now(),
        );
        assert_eq!(app_slot_width(&m.rows), "heartalk/11".len() as u16);
        assert_eq!(app_slot_width(&[]), "APP/SLOT".len() as u16);
    }

    #[test]
    fn the_selection_stays_on_a_row_that_exists() {
        let mut sel = Selection::default();
        assert_eq!(sel.index(0), None);
        sel.step(1, 3);
        sel.step(1, 3);
        assert_eq!(sel.index(3), Some(2));
        // Past the end: stays on the last.
        sel.step(1, 3);
        assert_eq!(sel.index(3), Some(2));
        // Two workers gone: the last one left.
        sel.clamp(1);
        assert_eq!(sel.index(1), Some(0));
        // Every worker gone, then back: the first.
        sel.clamp(0);
        assert_eq!(sel.index(0), None);
        assert_eq!(sel.index(2), Some(0));
        sel.step(-1, 2);
        assert_eq!(sel.index(2), Some(0));
        sel.step(1, 2);
        assert_eq!(sel.index(2), Some(1));
    }
}
