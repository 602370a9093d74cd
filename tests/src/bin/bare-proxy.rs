//! `bare-proxy PORT UPSTREAM_URL`: the benchmark's floor for the added
//! latency target. It is the worker's HTTP stack with nothing of the
//! pipeline: the same hyper server settings, current-thread runtime,
//! allocator and pooled reqwest client, one process per CPU on a shared
//! SO_REUSEPORT port, forwarding every request as one fixed chat-completions
//! POST and answering with the upstream's bytes. No JSON, no JWT, no
//! routing, no metrics: whatever latency it adds over the upstream alone is
//! what the machine and the libraries cost, and `scripts/bench.sh pipeline`
//! reports it beside HearTalk's.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What the worker sends upstream for the benchmark's question.
const UPSTREAM_BODY: &str = r#"{"model":"ep-chat","messages":[{"role":"user","content":"你好"}],"temperature":0.7,"max_tokens":2000,"top_p":1,"frequency_penalty":0,"presence_penalty":0}"#;

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(port), Some(upstream)) = (
        args.next().and_then(|a| a.parse::<u16>().ok()),
        args.next().and_then(|a| reqwest::Url::parse(&a).ok()),
    ) else {
        eprintln!("usage: bare-proxy PORT UPSTREAM_URL");
        std::process::exit(64);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(serve(port, upstream));
}

async fn serve(port: u16, upstream: reqwest::Url) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_reuse_port(true).expect("SO_REUSEPORT");
    socket.set_reuse_address(true).expect("SO_REUSEADDR");
    socket.bind(&addr.into()).expect("bind");
    socket.listen(4096).expect("listen");
    socket.set_nonblocking(true).expect("nonblocking");
    let listener = tokio::net::TcpListener::from_std(socket.into()).expect("listener");
    // The worker's client settings (worker/src/provider/ark.rs).
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(1024)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, say: do not spin on it.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (client, upstream) = (client.clone(), upstream.clone());
        let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let (client, upstream) = (client.clone(), upstream.clone());
            async move {
                let _ = req.into_body().collect().await;
                // The upstream's status passes through and a failed call
                // is a 502, so the benchmark's non-2xx column sees failures.
                let (status, answer) = match client
                    .post(upstream)
                    .header("content-type", "application/json")
                    .body(UPSTREAM_BODY)
                    .send()
                    .await
                {
                    Ok(r) => match (r.status(), r.bytes().await) {
                        (status, Ok(body)) => (status, body),
                        (_, Err(_)) => (http::StatusCode::BAD_GATEWAY, Bytes::new()),
                    },
                    Err(_) => (http::StatusCode::BAD_GATEWAY, Bytes::new()),
                };
                let mut resp = hyper::Response::new(Full::new(answer));
                *resp.status_mut() = status;
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        tokio::spawn(async move {
            let _ = conn.await;
        });
    }
}
