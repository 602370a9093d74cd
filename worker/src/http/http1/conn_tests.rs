//! The connection driver against an in-memory client: keep-alive and
//! pipelining, bodies on demand (chunked, `100 Continue`, left unread),
//! streamed responses frame by frame, a client hanging up mid-request and
//! mid-stream, refusals, the h2c hand-over, the drain, and how little the
//! driver holds.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::mpsc;

use super::*;
use crate::pipeline::response::{BoxError, full};

const WAIT: Duration = Duration::from_secs(10);

/// Starts the driver on one end of a pipe with `handle`; returns the
/// client's end, the drain, and the driver's task.
fn start<H, F>(
    handle: H,
) -> (
    DuplexStream,
    Drain,
    Arc<Activity>,
    tokio::task::JoinHandle<io::Result<Served<DuplexStream>>>,
)
where
    H: FnMut(Request<RequestBody>) -> F + Send + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 16);
    let drain = Drain::default();
    let activity = Activity::new();
    let task = tokio::spawn(serve(server, activity.clone(), drain.signal(), handle));
    (client, drain, activity, task)
}

/// Reads until `needle` has arrived (or the deadline), returning all read.
async fn read_until(c: &mut DuplexStream, seen: &mut Vec<u8>, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !String::from_utf8_lossy(seen).contains(needle) {
        let mut b = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline, c.read(&mut b))
            .await
            .expect("timed out waiting for the server")
            .unwrap();
        assert!(
            n > 0,
            "closed before {needle:?}; got {:?}",
            String::from_utf8_lossy(seen)
        );
        seen.extend_from_slice(&b[..n]);
    }
    String::from_utf8_lossy(seen).into_owned()
}

/// Reads to EOF.
async fn read_to_end(c: &mut DuplexStream) -> String {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, c.read_to_end(&mut all))
        .await
        .expect("the server did not close")
        .unwrap();
    String::from_utf8(all).unwrap()
}

async fn echo_path(req: Request<RequestBody>) -> Response<Body> {
    Response::new(full(req.uri().path().to_owned()))
}

/// A handler that answers with the request body's length and content.
async fn echo_body(req: Request<RequestBody>) -> Response<Body> {
    match req.into_body().collect().await.map(|c| c.to_bytes()) {
        Ok(b) => Response::new(full(format!("{}:{}", b.len(), String::from_utf8_lossy(&b)))),
        Err(e) => Response::new(full(format!("error: {e}"))),
    }
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let (mut c, _drain, activity, task) = start(echo_path);
    c.write_all(b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let text = read_until(&mut c, &mut seen, "/two").await;
    let one = text.find("content-length: 4\r\n").unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(
        text[one..].contains("\r\n\r\n/oneHTTP/1.1 200 OK\r\n"),
        "{text}"
    );
    assert!(text.contains("date: "));
    // Both are finished once their bytes are written.
    assert_eq!(activity.counts(), (0, 2));
    drop(c);
    assert!(matches!(task.await.unwrap().unwrap(), Served::Done));
}

#[tokio::test]
async fn chunked_and_sized_bodies_reach_the_handler_whole() {
    let (mut c, _drain, _a, _task) = start(echo_body);
    c.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.write_all(b"2\r\nde\r\n0\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nxyz")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let text = read_until(&mut c, &mut seen, "3:xyz").await;
    assert!(text.contains("\r\n\r\n5:abcde"), "{text}");
}

#[tokio::test]
async fn expect_continue_is_answered_when_the_handler_reads() {
    let (mut c, _drain, _a, _task) = start(echo_body);
    c.write_all(b"POST / HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let text = read_until(&mut c, &mut seen, "\r\n\r\n").await;
    assert_eq!(text, "HTTP/1.1 100 Continue\r\n\r\n");
    c.write_all(b"hi").await.unwrap();
    read_until(&mut c, &mut seen, "2:hi").await;
}

#[tokio::test]
async fn a_body_left_unread_closes_the_connection_after_the_answer() {
    let (mut c, _drain, _a, task) = start(echo_path);
    // 10 bytes declared, 3 sent: the rest could still come.
    c.write_all(b"POST /early HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .unwrap();
    let text = read_to_end(&mut c).await;
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.ends_with("/early"));
    assert!(matches!(task.await.unwrap().unwrap(), Served::Done));
    // A body already here in full is discarded and the connection kept.
    let (mut c, _drain, _a, _task) = start(echo_path);
    c.write_all(b"POST /a HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /b HTTP/1.1\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let text = read_until(&mut c, &mut seen, "/b").await;
    assert!(!text.contains("connection: close"), "{text}");
}

/// A streamed response and the sender of its frames.
fn stream_body() -> (mpsc::Sender<&'static str>, Body) {
    let (tx, rx) = mpsc::channel::<&'static str>(4);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        let s = rx.recv().await?;
        Some((
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(s.as_bytes()))),
            rx,
        ))
    });
    (tx, StreamBody::new(frames).boxed())
}

#[tokio::test]
async fn a_streamed_response_goes_out_frame_by_frame_and_ends_cleanly() {
    let (tx, body) = stream_body();
    let mut body = Some(body);
    let (mut c, _drain, activity, _task) = start(move |_req| {
        let b = body.take().unwrap();
        async move { Response::new(b) }
    });
    c.write_all(b"POST /s HTTP/1.1\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    let text = read_until(&mut c, &mut seen, "\r\n\r\n").await;
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
    tx.send("data: a\n\n").await.unwrap();
    read_until(&mut c, &mut seen, "9\r\ndata: a\n\n\r\n").await;
    assert_eq!(activity.counts(), (1, 0), "in flight while streaming");
    tx.send("data: [DONE]\n\n").await.unwrap();
    drop(tx);
    let text = read_until(&mut c, &mut seen, "0\r\n\r\n").await;
    assert!(
        text.ends_with("e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n"),
        "{text:?}"
    );
    // Finished once the last bytes are written.
    let deadline = tokio::time::Instant::now() + WAIT;
    while activity.counts() != (0, 1) {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_stream_drops_the_body() {
    let (tx, body) = stream_body();
    let mut body = Some(body);
    let (mut c, _drain, _a, task) = start(move |_req| {
        let b = body.take().unwrap();
        async move { Response::new(b) }
    });
    c.write_all(b"GET /s HTTP/1.1\r\n\r\n").await.unwrap();
    tx.send("x").await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut c, &mut seen, "1\r\nx\r\n").await;
    drop(c);
    // The body (and so its sender's receiver) is dropped: the producer
    // sees it at once, as a stream's upstream call would.
    tokio::time::timeout(WAIT, tx.closed()).await.unwrap();
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_drops_the_handler() {
    struct Dropped(Arc<AtomicUsize>);
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let d = drops.clone();
    let started = Arc::new(tokio::sync::Notify::new());
    let s = started.clone();
    let (mut c, _drain, _a, task) = start(move |_req| {
        let guard = Dropped(d.clone());
        let started = s.clone();
        async move {
            let _guard = guard;
            started.notify_one();
            std::future::pending::<()>().await;
            Response::new(full(""))
        }
    });
    c.write_all(b"GET /slow HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::timeout(WAIT, started.notified())
        .await
        .expect("the handler did not start");
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    drop(c);
    assert!(task.await.unwrap().is_err());
    assert_eq!(drops.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn bad_heads_get_hypers_bare_refusals() {
    for (raw, status) in [
        (&b"GARBAGE\0 / HTTP/1.1\r\n\r\n"[..], "400 Bad Request"),
        (
            b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "400 Bad Request",
        ),
    ] {
        let (mut c, _drain, _a, _task) = start(echo_path);
        c.write_all(raw).await.unwrap();
        let text = read_to_end(&mut c).await;
        assert!(
            text.starts_with(&format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n")),
            "{text}"
        );
    }
    let (mut c, _drain, _a, _task) = start(echo_path);
    let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
    big.resize(codec::MAX_HEAD + 10, b'a');
    let writer = tokio::spawn(async move {
        let _ = c.write_all(&big).await;
        c
    });
    let mut c = writer.await.unwrap();
    let text = read_to_end(&mut c).await;
    assert!(text.starts_with("HTTP/1.1 431 "), "{text}");
}

#[tokio::test]
async fn head_responses_carry_no_body_and_http_1_0_closes() {
    let (mut c, _drain, _a, _task) = start(echo_path);
    c.write_all(b"HEAD /abc HTTP/1.1\r\n\r\nGET /x HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let text = read_to_end(&mut c).await;
    let (head, rest) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.contains("content-length: 4"), "{head}");
    assert!(rest.starts_with("HTTP/1.0 200 OK\r\n"), "{rest}");
    assert!(rest.ends_with("\r\n\r\n/x"), "{rest}");
}

#[tokio::test]
async fn the_h2c_preface_hands_the_connection_over_with_its_bytes() {
    let (mut c, _drain, _a, task) = start(echo_path);
    c.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(20)).await;
    c.write_all(b"\r\nSM\r\n\r\n\0\0").await.unwrap();
    match task.await.unwrap().unwrap() {
        Served::Http2 { preface, .. } => {
            assert!(preface.starts_with(crate::http::conn_deadline::H2_PREFACE))
        }
        Served::Done => panic!("not handed over"),
    }
}

#[tokio::test]
async fn the_drain_closes_idle_connections_and_busy_ones_after_their_answer() {
    let (mut idle, drain, _a, idle_task) = start(echo_path);
    idle.write_all(b"GET /1 HTTP/1.1\r\n\r\n").await.unwrap();
    let mut seen = Vec::new();
    read_until(&mut idle, &mut seen, "/1").await;

    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let mut wait = Some(wait);
    let (started, handling) = tokio::sync::oneshot::channel::<()>();
    let mut started = Some(started);
    let (mut busy, server) = tokio::io::duplex(1 << 16);
    let busy_task = tokio::spawn(serve(
        server,
        Activity::new(),
        drain.signal(),
        move |_req| {
            let w = wait.take();
            let s = started.take();
            async move {
                if let Some(s) = s {
                    let _ = s.send(());
                }
                if let Some(w) = w {
                    let _ = w.await;
                }
                Response::new(full("late"))
            }
        },
    ));
    busy.write_all(b"GET /busy HTTP/1.1\r\n\r\n").await.unwrap();
    tokio::time::timeout(WAIT, handling)
        .await
        .expect("the handler did not start")
        .unwrap();
    drain.start();
    // The idle one closes at once; the busy one answers, then closes.
    read_to_end(&mut idle).await;
    assert!(matches!(idle_task.await.unwrap().unwrap(), Served::Done));
    release.send(()).unwrap();
    let text = read_to_end(&mut busy).await;
    assert!(text.ends_with("late"), "{text}");
    busy_task.await.unwrap().unwrap();
    tokio::time::timeout(WAIT, drain.finished()).await.unwrap();
}

#[test]
fn the_driver_holds_little_while_a_response_streams() {
    // The driver's own future (the handler is boxed, bodies are boxed):
    // this is what a connection costs beyond its socket while a stream
    // waits on the model, where hyper's dispatcher and buffers took ~38 KB
    // (1.5 KB when written).
    let (_, server) = tokio::io::duplex(64);
    let fut = serve(
        server,
        Activity::new(),
        Drain::default().signal(),
        echo_path,
    );
    let size = std::mem::size_of_val(&fut);
    assert!(size <= 2048, "the connection future is {size} bytes");
}
