//! Status snapshots for the tests of `heartalk top`.

use shared::control::{AppStatus, ReloadState, Status, SupervisorStatus, WorkerStatus};

/// An online worker of app `heartalk` that has answered `requests`.
pub fn worker(slot: usize, pid: u32, requests: u64) -> WorkerStatus {
    WorkerStatus {
        slot,
        pid: Some(pid),
        generation: Some(1),
        state: "online".into(),
        uptime_secs: Some(5.0),
        restarts: 0,
        unstable_restarts: 0,
        last_exit: None,
        cpu_percent: Some(1.5),
        rss_bytes: Some(30 << 20),
        pss_bytes: Some(20 << 20),
        requests: Some(requests),
        connections: Some(2),
        watchdog_ping_age_secs: Some(0.5),
    }
}

/// The supervisor of app `heartalk` with these workers.
pub fn status(workers: Vec<WorkerStatus>) -> Status {
    Status {
        supervisor: SupervisorStatus {
            pid: 1,
            version: "0.1.0".into(),
            uptime_secs: 9.0,
            config: "ecosystem.toml".into(),
            pid1: false,
            tcp_migrate_req: None,
            state: "running".into(),
            generation: 1,
            reload: ReloadState {
                in_progress: false,
                last: None,
            },
        },
        apps: vec![AppStatus {
            name: "heartalk".into(),
            listen: "127.0.0.1:8001".into(),
            instances: "2".into(),
            scaled: None,
            workers,
        }],
    }
}
