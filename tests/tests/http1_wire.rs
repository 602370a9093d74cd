//! The worker's HTTP/1.1 server (docs/api.md "The HTTP/1.1 server") on the
//! real binary, over raw TCP: pipelined requests answered in order on one
//! connection, `100 Continue` before a body, a chunked request body, `HEAD`
//! without body bytes, an oversized head refused with 431 and a malformed
//! one with 400, and a body left unread closing the connection with
//! `connection: close`.

mod helper;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

use helper::*;

/// One response read off the wire: status code, lowercase headers, body.
struct Wire {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Wire {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn connect(svc: &Service) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect_timeout(&svc.addr, DEADLINE).expect("connect");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.set_write_timeout(Some(DEADLINE)).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

/// Reads one response; `head_request` for a response without body bytes.
fn read_response(r: &mut BufReader<TcpStream>, head_request: bool) -> Wire {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (n, v) = h.split_once(": ").expect("header");
        assert_eq!(n, n.to_ascii_lowercase(), "header names are lowercase");
        headers.push((n.to_owned(), v.to_owned()));
    }
    let mut w = Wire {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 100 {
        return w;
    }
    if let Some(n) = w.header("content-length") {
        let mut body = vec![0; n.parse().unwrap()];
        r.read_exact(&mut body).unwrap();
        w.body = body;
    } else {
        assert_eq!(w.header("transfer-encoding"), Some("chunked"));
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            w.body.extend_from_slice(&chunk[..n]);
        }
    }
    w
}

/// Whether the worker closed the connection (EOF or reset) after what
/// was read.
fn closed(r: &mut BufReader<TcpStream>) -> bool {
    let mut rest = Vec::new();
    match r.read_to_end(&mut rest) {
        Ok(_) => rest.is_empty(),
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
    }
}

fn generate_head(len: usize, extra: &str) -> String {
    format!(
        "POST /api/v1/chat/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\n{extra}Content-Length: {len}\r\n\r\n",
        user_token()
    )
}

const BODY: &str = r#"{"messages":[{"role":"user","content":"hello"}]}"#;

#[test]
fn pipelined_requests_are_answered_in_order_with_head_and_bodies_intact() {
    let svc = Service::start(1, &[]);
    let (mut s, mut r) = connect(&svc);
    // Three requests in one write: a HEAD must leave no body bytes
    // between its head and the next response.
    let wire = format!(
        "GET /health HTTP/1.1\r\nHost: t\r\n\r\nHEAD /health HTTP/1.1\r\nHost: t\r\n\r\n{}{BODY}",
        generate_head(BODY.len(), "")
    );
    s.write_all(wire.as_bytes()).unwrap();
    let first = read_response(&mut r, false);
    assert_eq!(first.status, 200);
    assert!(first.header("date").is_some());
    let health: serde_json::Value = serde_json::from_slice(&first.body).unwrap();
    assert!(health.is_object());
    let head = read_response(&mut r, true);
    assert_eq!(head.status, 200);
    assert!(head.header("content-length").is_some_and(|n| n != "0"));
    let third = read_response(&mut r, false);
    assert_eq!(
        third.status,
        200,
        "{}",
        String::from_utf8_lossy(&third.body)
    );
    let answer: serde_json::Value = serde_json::from_slice(&third.body).unwrap();
    assert_eq!(answer["success"], true, "{answer}");
}

#[test]
fn expect_continue_and_a_chunked_body_reach_the_chat_pipeline() {
    let svc = Service::start(1, &[]);
    let (mut s, mut r) = connect(&svc);
    s.write_all(generate_head(BODY.len(), "Expect: 100-continue\r\n").as_bytes())
        .unwrap();
    let cont = read_response(&mut r, false);
    assert_eq!(cont.status, 100);
    s.write_all(BODY.as_bytes()).unwrap();
    assert_eq!(read_response(&mut r, false).status, 200);

    // The same body in three chunks, on the same connection.
    let head =
        generate_head(0, "Transfer-Encoding: chunked\r\n").replace("Content-Length: 0\r\n", "");
    let (a, b) = BODY.split_at(10);
    let chunked = format!(
        "{head}{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n0\r\n\r\n",
        a.len(),
        b.len()
    );
    s.write_all(chunked.as_bytes()).unwrap();
    let w = read_response(&mut r, false);
    assert_eq!(w.status, 200, "{}", String::from_utf8_lossy(&w.body));
}

#[test]
fn bad_heads_are_refused_bare_and_the_connection_closed() {
    let svc = Service::start(1, &[]);
    let (mut s, mut r) = connect(&svc);
    let big = "a".repeat(70 * 1024);
    // The worker may answer and close before taking all of it.
    let _ = s.write_all(format!("GET /health HTTP/1.1\r\nX-Big: {big}\r\n\r\n").as_bytes());
    let w = read_response(&mut r, false);
    assert_eq!(w.status, 431);
    assert!(closed(&mut r));

    let (mut s, mut r) = connect(&svc);
    s.write_all(b"POST /health HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
        .unwrap();
    let w = read_response(&mut r, false);
    assert_eq!((w.status, w.header("content-length")), (400, Some("0")));
    assert!(closed(&mut r));
}

#[test]
fn a_body_the_route_did_not_read_ends_the_connection_with_a_word() {
    let svc = Service::start(1, &[]);
    let (mut s, mut r) = connect(&svc);
    // No token: refused (401) before the body is read, with most of the
    // declared body still to come.
    s.write_all(
        b"POST /api/v1/chat/generate HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"a\":",
    )
    .unwrap();
    let w = read_response(&mut r, false);
    assert_eq!(w.status, 401);
    assert_eq!(w.header("connection"), Some("close"));
    assert!(closed(&mut r));
}
