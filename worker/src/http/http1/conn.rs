//! One HTTP/1.1 connection, driven by one task that owns the socket: read
//! a request head, run the handler (feeding it the body when it asks),
//! write the response (head, then every body frame as it comes), and go
//! on with the next request while the connection may be kept.
//!
//! Between requests and while a response streams, the connection holds no
//! buffer: bytes are read through a stack chunk and kept only until they
//! are parsed, the response head is encoded, written and freed, and body
//! frames are written straight from the frame (`writev` of chunk line,
//! data and CRLF). The handler's future is boxed for as long as it runs,
//! so the connection's own future stays small for the life of a stream.
//!
//! What it does as hyper's server does: a client that closes its end while
//! a request is in flight ends the connection and drops the handler or
//! the response body (for a stream, its upstream call); `100 Continue` is
//! sent when the handler first asks for the body; after a response, a
//! request body the handler left unread ends the connection (unless the
//! rest is already here), as does `connection: close` on either side; the
//! drain ([`Drain`]) closes idle connections and ends busy ones after
//! their response.
//!
//! An h2c client's preface is recognised before anything is parsed and
//! the connection is handed back ([`Served::Http2`]) with the bytes read.

use std::future::{Future, poll_fn};
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, Response};
use hyper::body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::watch;

use super::body::{BodyError, RequestBody, Slot};
use super::codec::{self, BodyFraming, Chunk, ChunkedDecoder, Exchange, Framing, MAX_HEAD};
use crate::http::conn_deadline::{Activity, Sniff};
use crate::pipeline::response::Body;

/// The most bytes taken from the socket in one read (through the stack).
const READ_CHUNK: usize = 8192;

const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// How a connection ended.
#[derive(Debug)]
pub enum Served<S> {
    /// The connection is finished (closed by either side, or refused).
    Done,
    /// The client spoke HTTP/2 with prior knowledge: serve `io` with an
    /// HTTP/2 server, `preface` first (the bytes already read).
    Http2 { io: S, preface: Bytes },
}

/// The drain of every HTTP/1 connection of a server: once started, idle
/// connections close and busy ones close after their current response.
#[derive(Debug)]
pub struct Drain(watch::Sender<bool>);

impl Default for Drain {
    fn default() -> Self {
        Drain(watch::channel(false).0)
    }
}

impl Drain {
    /// The signal a new connection watches.
    pub fn signal(&self) -> DrainSignal {
        DrainSignal(self.0.subscribe())
    }

    /// Starts the drain.
    pub fn start(&self) {
        self.0.send_replace(true);
    }

    /// Resolves once every connection given a signal has ended.
    pub async fn finished(&self) {
        self.0.closed().await;
    }
}

/// One connection's view of the [`Drain`] (16 bytes).
#[derive(Debug, Clone)]
pub struct DrainSignal(watch::Receiver<bool>);

impl DrainSignal {
    fn started(&self) -> bool {
        *self.0.borrow()
    }

    async fn wait(&mut self) {
        if self.0.wait_for(|d| *d).await.is_err() {
            // No drain will ever come (the server is gone): wait forever.
            std::future::pending::<()>().await;
        }
    }
}

/// Serves HTTP/1.1 requests on `io` with `handle` until the connection
/// ends. `activity` counts each request in flight from its complete head
/// until its response's last byte has been handed to the socket (the
/// connection deadlines of [`crate::http::conn_deadline`] read it).
pub async fn serve<S, H, F>(
    mut io: S,
    activity: Arc<Activity>,
    mut drain: DrainSignal,
    mut handle: H,
) -> io::Result<Served<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(Request<RequestBody>) -> F,
    F: Future<Output = Response<Body>>,
{
    let mut buf = BytesMut::new();
    let mut first = true;
    loop {
        // (1) The next request head.
        let head = loop {
            if first {
                // The same test the deadline wrapper makes (`Sniff`).
                match Sniff::Undecided(0).feed(&buf) {
                    Sniff::Http2 => {
                        return Ok(Served::Http2 {
                            io,
                            preface: buf.freeze(),
                        });
                    }
                    Sniff::Http1 => first = false,
                    Sniff::Undecided(_) => {}
                }
            }
            if !first && !buf.is_empty() {
                match codec::parse_head(&buf) {
                    Ok(Some((head, used))) => {
                        buf.advance(used);
                        break head;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "refusing a request head");
                        let refusal = codec::refusal(e.status(), &codec::http_date());
                        io.write_all(&refusal).await?;
                        let _ = io.shutdown().await;
                        return Ok(Served::Done);
                    }
                }
            }
            let idle = buf.is_empty();
            if idle {
                // Free what the last request left while the client thinks.
                buf = BytesMut::new();
            }
            let read = tokio::select! {
                biased;
                read = poll_fn(|cx| read_some(&mut io, cx, &mut buf)) => read?,
                () = drain.wait(), if idle => return Ok(Served::Done),
            };
            if read == 0 {
                // Closed, between requests or in a head: nothing to answer.
                return Ok(Served::Done);
            }
        };
        first = false;

        // (2) The request, its handler, and its body on demand.
        let request = activity.request_started();
        let exchange = Exchange {
            head_request: head.method == Method::HEAD,
            version: head.version,
            keep_alive: head.keep_alive,
        };
        let (body, mut reader) = BodyReader::new(head.framing, head.expect_continue);
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        if buf.is_empty() {
            buf = BytesMut::new();
        }
        let mut handler = Box::pin(handle(req));
        let response = poll_fn(|cx| {
            loop {
                if let Poll::Ready(resp) = handler.as_mut().poll(cx) {
                    return Poll::Ready(Ok::<_, io::Error>(resp));
                }
                ready!(reader.poll_step(&mut io, cx, &mut buf))?;
            }
        })
        .await?;
        drop(handler);

        // (3) The response.
        let (mut parts, body) = response.into_parts();
        let body_read = reader.finish_from(&mut buf);
        if !body_read {
            // The rest of the body may still be on its way: this
            // connection cannot carry another request.
            parts.headers.insert(
                http::header::CONNECTION,
                http::HeaderValue::from_static("close"),
            );
        }
        let size = body.size_hint().exact();
        let head = codec::encode_head(
            parts.status,
            &parts.headers,
            size,
            exchange,
            &codec::http_date(),
        );
        drop(parts);
        let keep = exchange.keep_alive && !head.close && body_read && !reader.eof;
        let mut out = Queue::default();
        out.push(Bytes::from(head.bytes));
        // A body that is not sent (HEAD, 204, 304) is dropped now.
        let mut body = (head.framing != BodyFraming::None).then_some(body);
        poll_fn(|cx| write_response(&mut io, cx, &mut out, &mut body, head.framing, &mut buf))
            .await?;
        // Every byte is with the socket: the keep-alive deadline may start.
        drop(request);
        if !keep || drain.started() {
            let _ = io.shutdown().await;
            return Ok(Served::Done);
        }
    }
}

/// Reads what the socket has (at most [`READ_CHUNK`]) onto `buf`; `Ok(0)`
/// when the client has closed its end.
fn read_some<S: AsyncRead + Unpin>(
    io: &mut S,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut rb = ReadBuf::uninit(&mut chunk);
    ready!(Pin::new(io).poll_read(cx, &mut rb))?;
    let got = rb.filled();
    buf.extend_from_slice(got);
    Poll::Ready(Ok(got.len()))
}

/// The request side of an exchange while its handler runs: the body's
/// decoder and slot, the `100 Continue` still to send, and whether the
/// client has closed its end.
struct BodyReader {
    decoder: Decoder,
    slot: Option<Arc<Slot>>,
    /// Bytes of `100 Continue` written so far, while it is owed.
    continue_sent: Option<usize>,
    /// The client closed its end (only seen while reading a body).
    eof: bool,
}

enum Decoder {
    /// No body, or all of it decoded.
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    /// The body cannot be read to its end.
    Failed,
}

impl BodyReader {
    fn new(framing: Framing, expect_continue: bool) -> (RequestBody, BodyReader) {
        let (body, slot, decoder) = match framing {
            Framing::Empty => (RequestBody::empty(), None, Decoder::Done),
            Framing::Length(n) => {
                let (b, s) = RequestBody::with_slot(Some(n));
                (b, Some(s), Decoder::Length(n))
            }
            Framing::Chunked => {
                let (b, s) = RequestBody::with_slot(None);
                (b, Some(s), Decoder::Chunked(ChunkedDecoder::Size))
            }
        };
        let continue_sent = (expect_continue && slot.is_some()).then_some(0);
        let reader = BodyReader {
            decoder,
            slot,
            continue_sent,
            eof: false,
        };
        (body, reader)
    }

    /// The next piece of the body from `buf`, without I/O.
    fn decode(&mut self, buf: &mut BytesMut) -> Result<Chunk, &'static str> {
        match &mut self.decoder {
            Decoder::Done => Ok(Chunk::End),
            Decoder::Failed => Err("body unreadable"),
            Decoder::Length(left) => {
                if *left == 0 {
                    self.decoder = Decoder::Done;
                    return Ok(Chunk::End);
                }
                if buf.is_empty() {
                    return Ok(Chunk::Incomplete);
                }
                let take = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
                *left -= take as u64;
                Ok(Chunk::Data(buf.split_to(take).freeze()))
            }
            Decoder::Chunked(dec) => {
                let res = dec.decode(buf);
                if res == Ok(Chunk::End) {
                    self.decoder = Decoder::Done;
                } else if res.is_err() {
                    self.decoder = Decoder::Failed;
                }
                res
            }
        }
    }

    /// One step while the handler waits: feed its body if it asks,
    /// otherwise watch the socket for the client closing. `Ready(Ok)` when
    /// something changed (poll the handler again), `Ready(Err)` when the
    /// connection is lost.
    fn poll_step<S>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
    ) -> Poll<io::Result<()>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if let Some(slot) = self.slot.clone().filter(|s| s.wanted(cx)) {
            if let Some(sent) = self.continue_sent {
                let n = ready!(Pin::new(&mut *io).poll_write(cx, &CONTINUE[sent..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.continue_sent = Some(sent + n).filter(|&s| s < CONTINUE.len());
                return Poll::Ready(Ok(()));
            }
            match self.decode(buf) {
                Ok(Chunk::Data(piece)) => slot.put(piece),
                Ok(Chunk::End) => slot.end(Ok(())),
                Err(why) => slot.end(Err(BodyError(why))),
                Ok(Chunk::Incomplete) => match ready!(read_some(io, cx, buf)) {
                    Ok(0) => {
                        self.eof = true;
                        self.decoder = Decoder::Failed;
                        slot.end(Err(BodyError("connection closed")));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        slot.end(Err(BodyError("connection failed")));
                        return Poll::Ready(Err(e));
                    }
                },
            }
            return Poll::Ready(Ok(()));
        }
        if self.eof || buf.len() >= MAX_HEAD {
            return Poll::Pending;
        }
        match ready!(read_some(io, cx, buf)) {
            // The client hung up: the handler is dropped with the connection.
            Ok(0) => Poll::Ready(Err(client_gone())),
            Ok(_) => Poll::Ready(Ok(())),
            Err(e) => Poll::Ready(Err(e)),
        }
    }

    /// After the handler: decodes (and discards) whatever of the body is
    /// already here. Whether the body has been read to its end, so the
    /// connection can carry another request.
    fn finish_from(&mut self, buf: &mut BytesMut) -> bool {
        loop {
            match self.decode(buf) {
                Ok(Chunk::Data(_)) => {}
                Ok(Chunk::End) => return true,
                Ok(Chunk::Incomplete) | Err(_) => return false,
            }
        }
    }
}

fn client_gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "client closed the connection mid-request",
    )
}

/// Writes the queued head and then the body's frames as they come, in
/// `framing`. While the body has nothing and nothing is left to write,
/// it watches the socket: a client that closes its end fails the
/// response (and so drops the body).
fn write_response<S>(
    io: &mut S,
    cx: &mut Context<'_>,
    out: &mut Queue,
    body: &mut Option<Body>,
    framing: BodyFraming,
    buf: &mut BytesMut,
) -> Poll<io::Result<()>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        // Take frames while there is room: a head and a small body go out
        // in one write.
        if let Some(b) = body.as_mut().filter(|_| out.room() >= 3) {
            match Pin::new(b).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        if !data.is_empty() {
                            if framing == BodyFraming::Chunked {
                                out.push(codec::chunk_line(data.len()));
                                out.push(data);
                                out.push(Bytes::from_static(b"\r\n"));
                            } else {
                                out.push(data);
                            }
                        }
                    }
                    continue;
                }
                Poll::Ready(None) => {
                    *body = None;
                    if framing == BodyFraming::Chunked {
                        out.push(Bytes::from_static(b"0\r\n\r\n"));
                    }
                    continue;
                }
                Poll::Ready(Some(Err(e))) => {
                    // Cut the response short without its end, so the client
                    // sees it broken rather than complete.
                    return Poll::Ready(Err(io::Error::other(e)));
                }
                Poll::Pending => {}
            }
        }
        if !out.is_empty() {
            ready!(out.poll_write(io, cx))?;
            continue;
        }
        if body.is_none() {
            return Poll::Ready(Ok(()));
        }
        if buf.len() >= MAX_HEAD {
            return Poll::Pending;
        }
        match ready!(read_some(io, cx, buf)) {
            Ok(0) => return Poll::Ready(Err(client_gone())),
            // A pipelined request: kept for after this response.
            Ok(_) => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
}

/// Bytes waiting to be written, in order, without copying them together.
#[derive(Default)]
struct Queue {
    parts: [Bytes; 5],
    start: usize,
    end: usize,
}

impl Queue {
    fn room(&self) -> usize {
        self.parts.len() - self.end
    }

    fn is_empty(&self) -> bool {
        self.start == self.end
    }

    fn push(&mut self, b: Bytes) {
        self.parts[self.end] = b;
        self.end += 1;
    }

    /// One vectored write; `Ready(Ok)` once some bytes went.
    fn poll_write<S: AsyncWrite + Unpin>(
        &mut self,
        io: &mut S,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        let live = &self.parts[self.start..self.end];
        let mut slices = [IoSlice::new(&[]); 5];
        for (slice, part) in slices.iter_mut().zip(live) {
            *slice = IoSlice::new(part);
        }
        let mut n = ready!(Pin::new(io).poll_write_vectored(cx, &slices[..live.len()]))?;
        if n == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        while n > 0 && self.start < self.end {
            let part = &mut self.parts[self.start];
            if n >= part.len() {
                n -= part.len();
                *part = Bytes::new();
                self.start += 1;
            } else {
                part.advance(n);
                n = 0;
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Poll::Ready(Ok(()))
    }
}

/// A connection whose first bytes were already read: they are read again
/// first, then the socket. (HTTP/2 after the preface was sniffed.)
pub struct Rewind<S> {
    pre: Bytes,
    io: S,
}

impl<S> Rewind<S> {
    pub fn new(pre: Bytes, io: S) -> Rewind<S> {
        Rewind { pre, io }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(buf.remaining());
            buf.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
#[path = "conn_tests.rs"]
mod tests;
