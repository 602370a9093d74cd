//! `heartalk status`: the supervisor builds a [`Status`] (the stable JSON
//! schema of `shared::control`) from the fleet and /proc, and the CLI
//! prints it as a table at least as rich as `pm2 ls`.

use std::fmt::Write as _;
use std::time::Instant;

use shared::control::{
    AppStatus, ExitStatus, ReloadResult, ReloadState, Status, SupervisorStatus, WorkerStatus,
};

use crate::fleet::FleetView;
use crate::scrape::{CpuSampler, FleetMetrics};

/// Facts about the supervisor itself.
pub struct Supervisor<'a> {
    pub started: Instant,
    pub config: &'a str,
    pub pid1: bool,
    pub tcp_migrate_req: Option<bool>,
}

/// The status report of a running fleet.
pub fn build(
    view: &FleetView,
    me: &Supervisor,
    metrics: &FleetMetrics,
    cpu: &mut CpuSampler,
    now: Instant,
) -> Status {
    let apps = view
        .apps
        .iter()
        .map(|app| AppStatus {
            name: app.name.clone(),
            listen: app.listen.to_string(),
            instances: app.instances_file.clone(),
            scaled: app.scaled.clone(),
            workers: app
                .slots
                .iter()
                .map(|s| {
                    let w = s.worker.as_ref();
                    let cpu_now = w.and_then(|w| cpu.sample(w.pid, w.started, now));
                    WorkerStatus {
                        slot: s.slot,
                        pid: w.map(|w| w.pid.as_raw() as u32),
                        generation: w.map(|w| w.generation),
                        state: s.state.to_string(),
                        uptime_secs: w
                            .map(|w| now.saturating_duration_since(w.started).as_secs_f64()),
                        restarts: s.restarts,
                        unstable_restarts: s.unstable_restarts,
                        last_exit: s.last_exit.as_ref().map(|e| ExitStatus {
                            reason: e.reason.to_string(),
                            code: e.code,
                            signal: e.signal.clone(),
                        }),
                        cpu_percent: cpu_now.map(|(pct, _)| tenths(pct)),
                        rss_bytes: w.and_then(|w| crate::memory::rss(w.pid)),
                        pss_bytes: w.and_then(|w| w.pss),
                        requests: w.and_then(|w| metrics.requests(&w.metrics_id)),
                        connections: w.and_then(|w| metrics.connections(&w.metrics_id)),
                        watchdog_ping_age_secs: w
                            .and_then(|w| w.last_ping)
                            .map(|p| tenths(now.saturating_duration_since(p).as_secs_f64())),
                    }
                })
                .collect(),
        })
        .collect();
    Status {
        supervisor: SupervisorStatus {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_secs: now.saturating_duration_since(me.started).as_secs_f64(),
            config: me.config.to_string(),
            pid1: me.pid1,
            tcp_migrate_req: me.tcp_migrate_req,
            state: if view.stopping { "stopping" } else { "running" }.to_string(),
            generation: view.generation,
            reload: ReloadState {
                in_progress: view.reloading,
                last: view.last_reload.as_ref().map(ReloadResult::from),
            },
        },
        apps,
    }
}

/// `x` rounded to one decimal, as `status` reports figures.
fn tenths(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// `1h 2m`, `3m 4s`, `5s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `12.3 MB` (binary units, as PM2 shows them).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[i])
    }
}

/// The human table of `heartalk status`.
pub fn render_table(s: &Status) -> String {
    let sup = &s.supervisor;
    let mut out = String::new();
    let reload = match (&sup.reload.last, sup.reload.in_progress) {
        (_, true) => "in progress".to_string(),
        (Some(r), false) => match &r.reason {
            Some(why) => format!("generation {} {} ({why})", r.generation, r.outcome),
            None => format!("generation {} {}", r.generation, r.outcome),
        },
        (None, false) => "none yet".to_string(),
    };
    let migrate = match sup.tcp_migrate_req {
        Some(true) => "on",
        Some(false) => "off",
        None => "unknown",
    };
    let _ = writeln!(
        out,
        "heartalk {} · pid {}{} · up {} · {} · generation {} · last reload: {} · tcp_migrate_req {}",
        sup.version,
        sup.pid,
        if sup.pid1 { " (PID 1)" } else { "" },
        duration(sup.uptime_secs),
        sup.state,
        sup.generation,
        reload,
        migrate
    );
    let _ = writeln!(out, "config {}", sup.config);
    for app in &s.apps {
        if let Some(n) = &app.scaled {
            let _ = writeln!(
                out,
                "app {} scaled to {n} by `heartalk scale` (file: {}; `heartalk scale {} file` resets)",
                app.name, app.instances, app.name
            );
        }
    }
    let header = [
        "app",
        "slot",
        "pid",
        "gen",
        "state",
        "uptime",
        "restarts",
        "unstable",
        "last exit",
        "cpu",
        "rss",
        "pss",
        "requests",
        "ping",
        "listen",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    let dash = || "-".to_string();
    for app in &s.apps {
        for w in &app.workers {
            let last = w
                .last_exit
                .as_ref()
                .map_or_else(dash, |e| match (&e.signal, e.code) {
                    (Some(sig), _) => format!("{} ({sig})", e.reason),
                    (None, Some(c)) => format!("{} ({c})", e.reason),
                    (None, None) => e.reason.clone(),
                });
            rows.push(vec![
                app.name.clone(),
                w.slot.to_string(),
                w.pid.map_or_else(dash, |p| p.to_string()),
                w.generation.map_or_else(dash, |g| g.to_string()),
                w.state.clone(),
                w.uptime_secs.map_or_else(dash, duration),
                w.restarts.to_string(),
                w.unstable_restarts.to_string(),
                last,
                w.cpu_percent.map_or_else(dash, |c| format!("{c:.1}%")),
                w.rss_bytes.map_or_else(dash, bytes),
                w.pss_bytes.map_or_else(dash, bytes),
                w.requests.map_or_else(dash, |r| r.to_string()),
                w.watchdog_ping_age_secs
                    .map_or_else(dash, |a| format!("{a:.1}s ago")),
                app.listen.clone(),
            ]);
        }
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(125.0), "2m 5s");
        assert_eq!(duration(7300.0), "2h 1m");
        assert_eq!(duration(90000.0), "1d 1h");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MB");
    }

    #[test]
    fn table_lists_every_worker_with_its_facts() {
        let w = |slot, pid: Option<u32>, state: &str| WorkerStatus {
            slot,
            pid,
            generation: pid.map(|_| 2),
            state: state.into(),
            uptime_secs: pid.map(|_| 61.0),
            restarts: 1,
            unstable_restarts: 0,
            last_exit: Some(ExitStatus {
                reason: "crash".into(),
                code: None,
                signal: Some("SIGKILL".into()),
            }),
            cpu_percent: pid.map(|_| 1.25),
            rss_bytes: pid.map(|_| 10 << 20),
            pss_bytes: pid.map(|_| 8 << 20),
            requests: pid.map(|_| 42),
            connections: pid.map(|_| 3),
            watchdog_ping_age_secs: pid.map(|_| 2.5),
        };
        let s = Status {
            supervisor: SupervisorStatus {
                pid: 7,
                version: "0.1.0".into(),
                uptime_secs: 3.0,
                config: "/etc/ecosystem.toml".into(),
                pid1: true,
                tcp_migrate_req: Some(true),
                state: "running".into(),
                generation: 2,
                reload: ReloadState {
                    in_progress: false,
                    last: Some(ReloadResult {
                        generation: 2,
                        outcome: "committed".into(),
                        reason: None,
                    }),
                },
            },
            apps: vec![AppStatus {
                name: "heartalk".into(),
                listen: "0.0.0.0:8001".into(),
                instances: "2".into(),
                scaled: Some("4".into()),
                workers: vec![w(0, Some(100), "online"), w(1, None, "waiting")],
            }],
        };
        let t = render_table(&s);
        assert!(t.starts_with("heartalk 0.1.0 · pid 7 (PID 1)"), "{t}");
        assert!(t.contains("generation 2 committed"));
        assert!(
            t.contains("app heartalk scaled to 4 by `heartalk scale` (file: 2;"),
            "{t}"
        );
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 6, "{t}");
        assert!(
            lines[4].contains("100")
                && lines[4].contains("online")
                && lines[4].contains("crash (SIGKILL)")
        );
        assert!(
            lines[4].contains("10.0 MB") && lines[4].contains("42") && lines[4].contains("1.2%")
        );
        assert!(lines[3].contains("ping"), "{t}");
        assert!(lines[4].contains("2.5s ago"), "{t}");
        assert!(lines[5].contains("waiting") && lines[5].contains(" - "));
    }
}
