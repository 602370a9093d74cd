//! A minimal HTTP/1.1 client for the tests: one-shot and keep-alive
//! requests, response parsing (chunked included), JSON posts, SSE frames,
//! and whether a connection was accepted yet.

use super::*;

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of the header `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// A response from its head (status line and header lines, as curl's
    /// `-D` writes them) and a body that is already decoded (taken as is,
    /// never de-chunked). An error when there is no status line.
    pub fn from_head(head: &str, body: String) -> std::io::Result<Response> {
        let (status, headers) = parse_head(head)?;
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<Response> {
    read_answer(send_get(addr, path, timeout)?)
}

/// The first half of [`http_get`]: sends the request on a fresh connection
/// and returns the connection, for [`read_answer`].
pub fn send_get(addr: SocketAddr, path: &str, timeout: Duration) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    Ok(s)
}

/// The second half of [`http_get`]: the whole answer, read to the end.
pub fn read_answer(mut s: TcpStream) -> std::io::Result<Response> {
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// A raw HTTP/1.1 response, head and body (de-chunked if it is chunked).
pub fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("incomplete response: {text:?}")))?;
    let (status, headers) = parse_head(head)?;
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The status and headers of a response head (its status line first).
pub(super) fn parse_head(head: &str) -> std::io::Result<(u16, Vec<(String, String)>)> {
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok((status, headers))
}

/// Reads one HTTP/1.1 message head: its first line and header lines, each
/// with its line ending, up to the blank line (read, not returned).
/// `Ok(None)` when the peer closed before sending a byte; an
/// `UnexpectedEof` error when it closed in the middle of the head.
pub(super) fn read_head(r: &mut impl BufRead) -> std::io::Result<Option<String>> {
    let mut head = String::new();
    loop {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line)? == 0 {
            if head.is_empty() {
                return Ok(None);
            }
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {} bytes of the head", head.len()),
            ));
        }
        if line == b"\r\n" {
            return Ok(Some(head));
        }
        let line = String::from_utf8(line)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        head.push_str(&line);
    }
}

/// The `Content-Length` of a message head, if it has one that parses.
pub(super) fn content_length(head: &str) -> Option<usize> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse().ok())?
    })
}

pub(super) fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Whether the server has accepted the connection of `client` (a local
/// TCP connection): in `/proc/net/tcp`, the server's end of a connection
/// still in the listen backlog has no socket inode yet.
pub fn accepted(client: &TcpStream) -> bool {
    let (ours, theirs) = (
        client.local_addr().expect("local address").port(),
        client.peer_addr().expect("peer address").port(),
    );
    let port = |addr: &str| {
        addr.rsplit_once(':')
            .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
    };
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .any(|table| {
            table.lines().skip(1).any(|line| {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl, local, remote, st, queues, timer, retransmits, uid,
                // timeout, inode
                f.len() > 9 && port(f[1]) == Some(theirs) && port(f[2]) == Some(ours) && f[9] != "0"
            })
        })
}

/// Sends `POST /api/v1/chat/stream` with `body` as `token`'s user and
/// reads until the first content frame has arrived: the stream is under
/// way. Returns the connection (`Connection: close`) and what was read.
pub fn stream_until_content(addr: SocketAddr, token: &str, body: &str) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, DEADLINE).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(
        s,
        "POST /api/v1/chat/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("send the stream request");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\"type\":\"content\"") {
        let n = s.read(&mut buf).expect("read the stream");
        assert!(
            n > 0,
            "stream ended early: {}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    (s, got)
}

/// One raw HTTP/1.1 request on a fresh connection; `headers` are added as given.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let timeout = Duration::from_secs(30);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    // A server may answer (413) and close before reading a large body; the
    // answer is still there to read.
    let _ = s.write_all(body);
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// POST a JSON body with an optional bearer token.
pub fn post_json(addr: SocketAddr, path: &str, token: Option<&str>, body: &Value) -> Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a.as_str()));
    }
    request(addr, "POST", path, &headers, body.to_string().as_bytes()).expect("POST")
}

/// `GET /internal/api/v1/test` as the backend calls it: `X-API-Key: key`
/// and a service JWT (`service: "ai-service"`, 5 minutes) signed with
/// `secret`.
pub fn internal_get(addr: SocketAddr, secret: &str, key: &str) -> Response {
    internal_request(addr, secret, key).expect("GET internal")
}

/// [`internal_get`], with a transport error returned rather than a panic.
pub fn internal_request(addr: SocketAddr, secret: &str, key: &str) -> std::io::Result<Response> {
    let now = super::now_unix();
    let token = super::jwt(
        &json!({"service": "ai-service", "iat": now, "exp": now + 300}),
        secret,
    );
    let auth = format!("Bearer {token}");
    request(
        addr,
        "GET",
        "/internal/api/v1/test",
        &[("Authorization", &auth), ("X-API-Key", key)],
        b"",
    )
}

/// GET with a bearer token.
pub fn get_auth(addr: SocketAddr, path: &str, token: &str) -> Response {
    let auth = format!("Bearer {token}");
    request(addr, "GET", path, &[("Authorization", &auth)], b"").expect("GET")
}

/// The SSE events of a body, each as its raw text (`data: ...` or `: ping`),
/// without the blank-line terminator.
pub fn sse_events(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// The JSON payloads of the `data:` events.
pub fn sse_json(body: &str) -> Vec<Value> {
    sse_events(body)
        .iter()
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap_or_else(|err| panic!("bad frame {d}: {err}")))
        .collect()
}

/// A minimal HTTP/1.1 keep-alive client: reuses its connection until the
/// server answers `Connection: close`, then reconnects. It never retries:
/// a request lost on a reused connection is an error, which is exactly
/// what a graceful drain must not cause.
pub struct KeepAlive {
    addr: SocketAddr,
    conn: Option<BufReader<TcpStream>>,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr) -> KeepAlive {
        KeepAlive { addr, conn: None }
    }

    pub fn get(&mut self, path: &str) -> std::io::Result<Response> {
        if self.conn.is_none() {
            let s = TcpStream::connect_timeout(&self.addr, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            self.conn = Some(BufReader::new(s));
        }
        let result = self.exchange(path);
        match &result {
            Ok(r)
                if r.header("connection")
                    .is_some_and(|v| v.eq_ignore_ascii_case("close")) =>
            {
                self.conn = None
            }
            Ok(_) => {}
            Err(_) => self.conn = None,
        }
        result
    }

    fn exchange(&mut self, path: &str) -> std::io::Result<Response> {
        let conn = self.conn.as_mut().expect("connected");
        write!(
            conn.get_mut(),
            "GET {path} HTTP/1.1\r\nHost: {}\r\n\r\n",
            self.addr
        )?;
        let head = read_head(conn)?.ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            )
        })?;
        let length = content_length(&head)
            .ok_or_else(|| std::io::Error::other(format!("no content-length in {head:?}")))?;
        let mut body = vec![0u8; length];
        conn.read_exact(&mut body)?;
        let mut raw = head.into_bytes();
        raw.extend_from_slice(b"\r\n");
        raw.extend_from_slice(&body);
        parse_response(&raw)
    }
}
