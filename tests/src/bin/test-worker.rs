//! A deliberately misbehaving worker for the end-to-end tests.
//!
//! It speaks the same contract as `heartalk-worker` (sockets from
//! `LISTEN_FDS`, `READY=1` on `NOTIFY_SOCKET`, drain on SIGTERM) but can be
//! told, through its first argument, to do what the production worker must
//! never do: exit at once, ignore SIGTERM, never become ready, or leave an
//! orphaned grandchild behind. Keeping these switches here keeps them out of
//! the production binary. Plain std threads and a tiny HTTP/1.0-style
//! responder keep it small; `GET /slow?ms=N` answers after N milliseconds.
//!
//! Modes: `serve` (default), `exit-now[=CODE]`, `ignore-term`, `no-ready`,
//! `orphan=SECONDS` (spawns `sleep SECONDS` as an orphan, then serves).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    if let Some(rest) = mode.strip_prefix("exit-now") {
        let code = rest.trim_start_matches('=').parse().unwrap_or(3);
        eprintln!("test-worker: exiting at once with {code}");
        std::process::exit(code);
    }
    // Block SIGTERM in every thread; a dedicated thread takes it with sigwait.
    // SAFETY: plain libc signal-mask calls on a local, initialised sigset,
    // before any other thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    if let Some(secs) = mode.strip_prefix("orphan=") {
        // sh starts `sleep` in the background and exits at once, so the
        // sleep is orphaned and reparented to the nearest subreaper.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "sleep {secs} & echo $! > \"${{ORPHAN_PID_FILE:-/dev/null}}\""
            ))
            .status()
            .expect("sh");
        assert!(status.success());
    }

    let listeners: Vec<TcpListener> = match shared::activation::take_listen_fds() {
        Ok(fds) if !fds.is_empty() => fds.into_iter().map(|i| TcpListener::from(i.fd)).collect(),
        _ => {
            let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
            vec![TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind")]
        }
    };
    for l in &listeners {
        l.set_nonblocking(false).expect("blocking accept");
    }
    let slot = std::env::var("HEARTALK_WORKER_ID").unwrap_or_else(|_| "0".into());
    let inflight = Arc::new(AtomicUsize::new(0));
    let raw_fds: Vec<i32> = listeners.iter().map(|l| l.as_raw_fd()).collect();
    for l in listeners {
        let slot = slot.clone();
        let inflight = inflight.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { break };
                inflight.fetch_add(1, Ordering::SeqCst);
                let slot = slot.clone();
                let inflight = inflight.clone();
                std::thread::spawn(move || {
                    handle(conn, &slot);
                    inflight.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    }
    if mode != "no-ready" {
        shared::activation::notify("READY=1").expect("notify");
    }
    loop {
        let mut sig = 0;
        // SAFETY: waits for the blocked SIGTERM on the initialised set.
        unsafe { libc::sigwait(&set, &mut sig) };
        if mode == "ignore-term" {
            eprintln!("test-worker: ignoring SIGTERM");
            continue;
        }
        break;
    }
    // Stop accepting: shutdown() wakes the threads blocked in accept().
    for fd in raw_fds {
        // SAFETY: shutdown on a listening fd we own; it stays open until exit.
        unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
    }
    while inflight.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::exit(0);
}

fn handle(mut conn: TcpStream, slot: &str) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    if let Some(ms) = path.strip_prefix("/slow?ms=") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1000)));
    }
    let body = format!("{{\"pid\":{},\"slot\":\"{slot}\"}}", std::process::id());
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Worker-Id: {slot}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
