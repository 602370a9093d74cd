//! A stub HTTP server that records requests and answers with a canned
//! response (for probes and webhooks).

use super::*;

/// One request a [`StubHttp`] read.
#[derive(Clone, Debug)]
pub struct StubRequest {
    /// The request line and header lines as sent, each with its `\r\n`.
    pub head: String,
    /// The request target: path and query.
    pub target: String,
    /// The body (as many bytes as `Content-Length` said), as text.
    pub body: String,
}

impl StubRequest {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("request body not JSON ({e}): {}", self.body))
    }
}

/// A stub HTTP/1.1 server on 127.0.0.1 for the programs under test to call
/// (health probes, webhooks, a fake engine's health endpoint). Each
/// connection is served on its own thread: each request on it is read
/// whole (head, and the body its `Content-Length` gives), recorded, and
/// answered with `answer(n)` as raw bytes, `n` counting requests from 0 in
/// the order they were read. After an answer with `Connection: close` the
/// connection is closed, after any other the next request is read from it;
/// a `None` answer holds the connection open, silent, until the client
/// closes it. The threads live as long as the test process: dropping this
/// stops nothing.
pub struct StubHttp {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<StubRequest>>>,
}

impl StubHttp {
    pub fn start(answer: impl Fn(usize) -> Option<String> + Send + Sync + 'static) -> StubHttp {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a stub server");
        let addr = listener.local_addr().expect("stub server address");
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let answer = Arc::new(answer);
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let (kept, answer) = (kept.clone(), answer.clone());
                std::thread::spawn(move || {
                    let _ = stub_serve(conn, &kept, &*answer);
                });
            }
        });
        StubHttp { addr, requests }
    }

    /// Every request read so far, in order.
    pub fn requests(&self) -> Vec<StubRequest> {
        self.requests.lock().unwrap().clone()
    }
}

fn stub_serve(
    conn: TcpStream,
    kept: &Mutex<Vec<StubRequest>>,
    answer: &(dyn Fn(usize) -> Option<String> + Send + Sync),
) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn);
    while let Some(head) = read_head(&mut reader)? {
        let mut body = vec![0; content_length(&head).unwrap_or(0)];
        reader.read_exact(&mut body)?;
        let target = head.split_whitespace().nth(1).unwrap_or("").to_string();
        let n = {
            let mut kept = kept.lock().unwrap();
            kept.push(StubRequest {
                head,
                target,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
            kept.len() - 1
        };
        let Some(a) = answer(n) else {
            // Silent: hold the connection until the client closes it.
            let _ = reader.read_to_end(&mut Vec::new());
            return Ok(());
        };
        reader.get_mut().write_all(a.as_bytes())?;
        let close = parse_response(a.as_bytes()).is_ok_and(|r| {
            r.header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        });
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// `http://<addr>/api/v1/health`: the service's health endpoint at `addr`.
pub fn health_url(addr: SocketAddr) -> String {
    format!("http://{addr}/api/v1/health")
}

/// A whole HTTP/1.1 answer for a [`StubHttp`]: `status` (`"200 OK"`), a
/// JSON content type, `body` with its exact `Content-Length`, and
/// `Connection: close`.
pub fn http_answer(status: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// An empty 200 that keeps the connection open (a webhook receiver's).
pub const EMPTY_200: &str = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
