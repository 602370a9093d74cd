//! Holds many chat streams open at once, for `scripts/bench.sh streams`:
//! opens N connections (spread over a ramp), sends one streaming request on
//! each with `Connection: close`, reads every answer to its end, and
//! measures what a streaming deployment is sized by — how many streams
//! were open at once and what the workers' memory did meanwhile.
//!
//! Usage: `stream-load --addr HOST:PORT --streams N --path PATH --body JSON
//! [--token JWT] [--ramp-secs S] [--pids PID,PID…] [--after-secs S]`
//!
//! A stream counts as open from the moment its connection is being made
//! until its answer has been read to the end (or it failed).
//!
//! With `--pids`, the resident memory of those processes is read before the
//! first connection (idle), sampled every 200 ms while streams run (kept at
//! the moment the most streams were open: peak), and every 500 ms for
//! `--after-secs` after the last stream ended (when the sum fell under
//! 1.5 × idle + 16 MiB, and the last value).
//! Prints one JSON object on stdout; progress goes to stderr.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

struct Args {
    addr: String,
    streams: usize,
    path: String,
    body: String,
    token: Option<String>,
    ramp: Duration,
    pids: Vec<u32>,
    after: Duration,
}

fn args() -> Args {
    let mut a = Args {
        addr: String::new(),
        streams: 100,
        path: "/api/v1/chat/stream".into(),
        body: r#"{"message":"hello"}"#.into(),
        token: None,
        ramp: Duration::from_secs(3),
        pids: Vec::new(),
        after: Duration::ZERO,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--addr" => a.addr = v,
            "--streams" => a.streams = v.parse().expect("--streams N"),
            "--path" => a.path = v,
            "--body" => a.body = v,
            "--token" => a.token = Some(v),
            "--ramp-secs" => a.ramp = Duration::from_secs_f64(v.parse().expect("--ramp-secs S")),
            "--pids" => {
                a.pids = v
                    .split(',')
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse().expect("--pids PID,PID"))
                    .collect()
            }
            "--after-secs" => a.after = Duration::from_secs_f64(v.parse().expect("--after-secs S")),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.addr.is_empty(), "--addr HOST:PORT is required");
    a
}

/// Resident memory of `pid` in bytes (0 if it is gone).
fn rss(pid: u32) -> u64 {
    heartalk_e2e::rss(pid).unwrap_or(0)
}

#[derive(Default)]
struct Counts {
    open: AtomicUsize,
    ok: AtomicUsize,
    failed: AtomicUsize,
}

/// One stream: the time to its first response byte, or why it failed.
async fn one(addr: &str, request: &[u8]) -> Result<Duration, String> {
    let mut s = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let t0 = Instant::now();
    s.write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = vec![0u8; 4096];
    let mut head = Vec::new();
    let ttfb;
    loop {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the head".into());
        }
        head.extend_from_slice(&buf[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            ttfb = t0.elapsed();
            let status = String::from_utf8_lossy(&head[..end]);
            if !status.starts_with("HTTP/1.1 200") {
                return Err(format!(
                    "status: {}",
                    status.lines().next().unwrap_or_default()
                ));
            }
            head.drain(..end + 4);
            break;
        }
    }
    // Keep only a tail: the last frame says how the stream ended.
    let mut tail = head;
    loop {
        let n = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            break;
        }
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 8192 {
            tail.drain(..tail.len() - 4096);
        }
    }
    let text = String::from_utf8_lossy(&tail);
    if text.contains("\"type\":\"complete\"") || text.contains("data: [DONE]") {
        Ok(ttfb)
    } else {
        Err(format!(
            "no final frame: …{}",
            &text[text.len().saturating_sub(200)..]
        ))
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() {
    let a = args();
    // Every stream is a descriptor.
    heartalk_e2e::raise_nofile();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(a));
}

async fn run(a: Args) {
    let auth = a
        .token
        .as_ref()
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request: Arc<[u8]> = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
        a.path,
        a.addr,
        a.body.len(),
        a.body
    )
    .into_bytes()
    .into();
    let idle: Vec<u64> = a.pids.iter().map(|&p| rss(p)).collect();
    let counts = Arc::new(Counts::default());
    let ttfbs = Arc::new(Mutex::new(Vec::with_capacity(a.streams)));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(a.streams);
    for i in 0..a.streams {
        let delay = a.ramp.mul_f64(i as f64 / a.streams.max(1) as f64);
        let (addr, request) = (a.addr.clone(), request.clone());
        let (counts, ttfbs, errors) = (counts.clone(), ttfbs.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // Pacing: the ramp spreads the streams' starts.
            tokio::time::sleep_until(tokio::time::Instant::from_std(start + delay)).await;
            counts.open.fetch_add(1, Ordering::Relaxed);
            let r = one(&addr, &request).await;
            counts.open.fetch_sub(1, Ordering::Relaxed);
            match r {
                Ok(t) => {
                    counts.ok.fetch_add(1, Ordering::Relaxed);
                    ttfbs.lock().await.push(t.as_secs_f64() * 1000.0);
                }
                Err(e) => {
                    counts.failed.fetch_add(1, Ordering::Relaxed);
                    let mut errs = errors.lock().await;
                    if errs.len() < 10 {
                        errs.push(e);
                    }
                }
            }
        }));
    }
    // Sample until every stream has ended.
    let mut peak_open = 0usize;
    let mut peak_rss = idle.clone();
    let mut last_report = Instant::now();
    loop {
        let done = counts.ok.load(Ordering::Relaxed) + counts.failed.load(Ordering::Relaxed);
        let open = counts.open.load(Ordering::Relaxed);
        if open >= peak_open && open > 0 {
            peak_open = open;
            peak_rss = a.pids.iter().map(|&p| rss(p)).collect();
        }
        if last_report.elapsed() >= Duration::from_secs(1) {
            eprintln!(
                "t={:.0}s open={open} ok={} failed={}",
                start.elapsed().as_secs_f64(),
                counts.ok.load(Ordering::Relaxed),
                counts.failed.load(Ordering::Relaxed)
            );
            last_report = Instant::now();
        }
        if done == a.streams {
            break;
        }
        // The sampling period of the measurement.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    let ended = Instant::now();
    let streams_secs = ended.duration_since(start).as_secs_f64();
    // Memory given back: when the sum fell under 1.5 × idle + 16 MiB.
    let idle_sum: u64 = idle.iter().sum();
    let target = idle_sum as f64 * 1.5 + 16.0 * 1048576.0;
    let mut back_after = None;
    let mut after = a.pids.iter().map(|&p| rss(p)).collect::<Vec<_>>();
    while !a.pids.is_empty() && ended.elapsed() < a.after {
        after = a.pids.iter().map(|&p| rss(p)).collect();
        if back_after.is_none() && (after.iter().sum::<u64>() as f64) < target {
            back_after = Some(ended.elapsed().as_secs_f64());
        }
        // The sampling period of the measurement (for `a.after` in all).
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut t = ttfbs.lock().await.clone();
    t.sort_by(f64::total_cmp);
    let out = json!({
        "streams": a.streams,
        "peak_open": peak_open,
        "ok": counts.ok.load(Ordering::Relaxed),
        "failed": counts.failed.load(Ordering::Relaxed),
        "errors": *errors.lock().await,
        "ttfb_p50_ms": percentile(&t, 50.0),
        "ttfb_p99_ms": percentile(&t, 99.0),
        "seconds": streams_secs,
        "pids": a.pids,
        "idle_rss": idle,
        "peak_rss": peak_rss,
        "after_rss": after,
        "back_after_secs": back_after,
    });
    println!("{out}");
}
