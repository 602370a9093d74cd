//! A deliberately misbehaving worker for the end-to-end tests.
//!
//! It speaks the same contract as `heartalk-worker` (sockets from
//! `LISTEN_FDS`, `READY=1` on `NOTIFY_SOCKET`, drain on SIGTERM) but can be
//! told, through its first argument, to do what the production worker must
//! never do: exit at once, ignore SIGTERM, never become ready, leave an
//! orphaned grandchild behind, or leak memory. Keeping these switches here
//! keeps them out of the production binary. Plain std threads and a tiny
//! HTTP/1.0-style responder keep it small.
//!
//! Modes: `serve` (default), `exit-now[=CODE]`, `ignore-term`, `no-ready`,
//! `slow-ready=MS`, `orphan=SECONDS` (spawns `sleep SECONDS` as an orphan,
//! then serves), `leak=KB` (every request keeps KB of touched memory),
//! `grow=MB_PER_SEC` (memory grows steadily, whatever the load).
//! Output (any argument, combinable): `spam=N` writes N numbered lines
//! `line <slot> <i>` to stdout before READY; `tick=MS` writes `tick <slot>
//! <n>` every MS ms forever; `bigline=MB` writes an MB-megabyte line without
//! a newline, then `\nbigline-done`.
//! Paths: `GET /slow?ms=N` answers after N ms; `GET /balloon?mb=N` touches
//! N MB at once; `GET /spin` answers, then its "event loop" (the acceptor
//! threads and the watchdog pinger) spins in a busy loop forever, as a
//! worker stuck in a hot loop would; anything else answers
//! `{"pid":…,"slot":…}`.
//! Watchdog: with `WATCHDOG_USEC` set it pings `WATCHDOG=1` at half that
//! interval from a thread of its own, like the real worker (`no-ping`
//! turns that off, as for a plain sd_notify program).

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Memory kept on purpose (`leak=` and `/balloon`).
static HOARD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Set by `GET /spin`: the serving threads and the pinger spin from then on.
static SPIN: AtomicBool = AtomicBool::new(false);

/// Burns CPU forever once `/spin` was asked for; returns otherwise.
fn spin_if_asked() {
    if SPIN.load(Ordering::SeqCst) {
        let mut x = 0u64;
        loop {
            x = std::hint::black_box(x.wrapping_add(1));
        }
    }
}

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_else(|| "serve".into());
    if let Some(rest) = mode.strip_prefix("exit-now") {
        let code = rest.trim_start_matches('=').parse().unwrap_or(3);
        eprintln!("test-worker: exiting at once with {code}");
        std::process::exit(code);
    }
    // Block SIGTERM in every thread; the main thread takes it with sigwait.
    // SAFETY: plain libc signal-mask calls on a local, initialised sigset,
    // before any other thread exists.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |prefix: &str| {
        args.iter()
            .find_map(|a| a.strip_prefix(prefix).map(str::to_string))
    };
    let slot_id =
        std::env::var(shared::activation::env::HEARTALK_WORKER_ID).unwrap_or_else(|_| "0".into());
    if let Some(n) = arg("spam=").and_then(|n| n.parse::<u64>().ok()) {
        let mut out = std::io::stdout().lock();
        for i in 0..n {
            writeln!(out, "line {slot_id} {i}").expect("stdout");
        }
    }
    if let Some(mb) = arg("bigline=").and_then(|n| n.parse::<usize>().ok()) {
        let mut out = std::io::stdout().lock();
        let chunk = vec![b'x'; 1 << 20];
        for _ in 0..mb {
            out.write_all(&chunk).expect("stdout");
        }
        writeln!(out, "\nbigline-done").expect("stdout");
    }
    if let Some(ms) = arg("tick=").and_then(|n| n.parse::<u64>().ok()) {
        let slot_id = slot_id.clone();
        std::thread::spawn(move || {
            for n in 0u64.. {
                println!("tick {slot_id} {n}");
                // Pacing the output as asked (`tick=MS`).
                std::thread::sleep(Duration::from_millis(ms));
            }
        });
    }
    if let Some(secs) = mode.strip_prefix("orphan=") {
        // sh starts `sleep` in the background and exits at once, so the
        // sleep is orphaned and reparented to the nearest subreaper.
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("sleep {secs} &"))
            .status()
            .expect("sh");
        assert!(status.success());
    }
    let leak_kb: usize = mode
        .strip_prefix("leak=")
        .and_then(|k| k.parse().ok())
        .unwrap_or(0);
    if let Some(rate) = mode
        .strip_prefix("grow=")
        .and_then(|r| r.parse::<u64>().ok())
    {
        // 1 MiB every 1/rate seconds.
        let every = Duration::from_micros(1_000_000 / rate.max(1));
        std::thread::spawn(move || {
            loop {
                hoard(1 << 20);
                // Pacing the growth as asked (`grow=`).
                std::thread::sleep(every);
            }
        });
    }

    let listeners: Vec<TcpListener> = match shared::activation::take_listen_fds() {
        Ok(fds) if !fds.is_empty() => fds.into_iter().map(|i| TcpListener::from(i.fd)).collect(),
        _ => {
            let port = std::env::var("PORT").unwrap_or_else(|_| "0".into());
            vec![TcpListener::bind(format!("127.0.0.1:{port}")).expect("bind")]
        }
    };
    let slot =
        std::env::var(shared::activation::env::HEARTALK_WORKER_ID).unwrap_or_else(|_| "0".into());
    let inflight = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut acceptors = Vec::new();
    for l in listeners {
        // Polling accept: a stop flag ends the loop and the listener fd is
        // closed. (shutdown() would stop the *shared* socket for everyone,
        // including the worker replacing this one.)
        l.set_nonblocking(true).expect("nonblocking accept");
        let (slot, inflight, stop) = (slot.clone(), inflight.clone(), stop.clone());
        acceptors.push(std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                spin_if_asked();
                match l.accept() {
                    Ok((conn, _)) => {
                        inflight.fetch_add(1, Ordering::SeqCst);
                        let (slot, inflight) = (slot.clone(), inflight.clone());
                        std::thread::spawn(move || {
                            handle(conn, &slot, leak_kb);
                            inflight.fetch_sub(1, Ordering::SeqCst);
                        });
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }));
    }
    if let Some(ms) = mode.strip_prefix("slow-ready=") {
        // The slow start asked for (`slow-ready=MS`).
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(500)));
    }
    if mode != "no-ready" {
        shared::activation::notify("READY=1").expect("notify");
    }
    if let Some(interval) = shared::activation::watchdog_interval() {
        if !args.iter().any(|a| a == "no-ping") {
            std::thread::spawn(move || {
                loop {
                    spin_if_asked();
                    let _ = shared::activation::notify("WATCHDOG=1");
                    // The ping period, as the real worker's.
                    std::thread::sleep(interval / 2);
                }
            });
        }
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
    stop.store(true, Ordering::SeqCst);
    for a in acceptors {
        let _ = a.join();
    }
    // The drain: poll until the requests in flight are done (the
    // supervisor's kill_timeout is the deadline).
    while inflight.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::process::exit(0);
}

/// Allocates `bytes` and touches every page so it counts in RSS.
fn hoard(bytes: usize) {
    let mut v = vec![0u8; bytes];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    HOARD.lock().unwrap().push(v);
}

fn handle(mut conn: TcpStream, slot: &str, leak_kb: usize) {
    let _ = conn.set_nonblocking(false);
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
        // The slow answer asked for.
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(1000)));
    }
    if let Some(mb) = path.strip_prefix("/balloon?mb=") {
        hoard(mb.parse::<usize>().unwrap_or(1) << 20);
    }
    if path == "/spin" {
        SPIN.store(true, Ordering::SeqCst);
    }
    if leak_kb > 0 {
        hoard(leak_kb << 10);
    }
    let body = format!("{{\"pid\":{},\"slot\":\"{slot}\"}}", std::process::id());
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nX-Worker-Id: {slot}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
