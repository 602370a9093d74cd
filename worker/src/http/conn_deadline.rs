//! Connection deadlines: this module owns the *idle* deadlines of one
//! accepted connection — its first byte (`FIRST_BYTE_TIMEOUT`), each
//! request head (`HEADER_TIMEOUT`), keep-alive idleness
//! (`KEEPALIVE_TIMEOUT`) and the client taking what it is sent
//! (`SEND_TIMEOUT`) — and the per-connection bookkeeping that tells an
//! idle connection from a busy one. The deadline of a request *body*
//! (`BODY_TIMEOUT`) is not here: it is kept where the body is read
//! (`router::read_json`), so it can be answered with a 408.
//!
//! Three parts:
//! - [`Policy`], the pure state machine: from what the connection has seen
//!   (bytes arriving, requests in flight, requests finished, writes the
//!   socket would not take) it decides what the connection waits for
//!   ([`Wait`]) and until when.
//! - [`Activity`], shared by the connection's IO and its service: the
//!   number of requests in flight and of requests finished. The service
//!   takes a [`RequestGuard`] when hyper hands it a request, and the guard
//!   rides in the response body ([`TrackedBody`]) until that body has ended
//!   or is dropped.
//! - [`DeadlineIo`], the wrapper around the socket: it feeds the policy on
//!   every read and on every write that would block or that the socket
//!   takes, keeps one resettable timer on the current deadline, and fails
//!   the read or write (`TimedOut`) when the deadline passes, which makes
//!   hyper close the connection.
//!
//! Why not a plain "read pending for too long" timer: hyper keeps reading
//! while a response streams (to notice a client that hangs up), so such a
//! timer would cut every long SSE stream. Here no read deadline is armed
//! while a request is in flight — from its complete head to the end of its
//! response body — whatever the reads do.
//!
//! The client that stops reading: a write the socket will not take (its
//! receive window is full) puts the connection in [`Wait::Send`], whatever
//! the requests do: `send` from that write, and any bytes the socket takes
//! end it (a deadline between two successive writes, like nginx's
//! `send_timeout`, not on the whole response). When it passes, the write
//! fails, hyper closes the connection and drops the response body — for a
//! stream, its upstream call with it, as when the client hangs up. A
//! stalled write also keeps the connection busy for the read side, so the
//! keep-alive deadline starts only once the last response's bytes have
//! been handed to the socket, not when hyper took its last body frame.
//! The two never overlap (a stalled connection has no read deadline), so
//! one timer serves both.
//!
//! HTTP/2 (h2c with prior knowledge) goes through the same wrapper; the
//! only difference is that bytes arriving on an idle HTTP/2 connection are
//! frames (`PING`, `WINDOW_UPDATE`, `SETTINGS`), not the start of a
//! request head, so they do not replace the keep-alive deadline (see
//! [`Policy::observe`]). The connection's protocol is recognised from its
//! first bytes, as hyper does ([`Sniff`]).
//!
//! Per-connection cost: one shared [`Activity`] (two counters and a waker
//! slot), one boxed `Sleep`, the timeouts and a few words of policy state
//! (the send deadline reuses the policy's `since` and the timer).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::ready;
use futures_util::task::AtomicWaker;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The idle deadlines of a connection (from the settings).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleTimeouts {
    /// From accept to the connection's first byte.
    pub first_byte: Duration,
    /// From the first byte of a request head to the request being handed
    /// to the service (the head complete).
    pub header: Duration,
    /// From the end of the last response, with no request in flight, to
    /// the first byte of the next request.
    pub keep_alive: Duration,
    /// From a write the socket would not take (the client is not reading)
    /// to the socket taking bytes again.
    pub send: Duration,
}

impl crate::settings::ConnectionTimeouts {
    /// The idle deadlines, as the connection wrapper takes them.
    pub fn idle(&self) -> IdleTimeouts {
        IdleTimeouts {
            first_byte: self.first_byte,
            header: self.header,
            keep_alive: self.keep_alive,
            send: self.send,
        }
    }
}

/// What a connection is waiting for, and so which deadline applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Accepted, nothing received yet: `first_byte` from accept.
    FirstByte,
    /// Bytes of a request head have arrived and no request is in flight:
    /// `header` from the first of those bytes. A total deadline: more bytes
    /// do not extend it.
    Head,
    /// At least one request is in flight (its body being read, its handler
    /// running or its response being sent), or a stalled write has just
    /// made progress: no idle deadline.
    Busy,
    /// The last request has finished, its response's bytes have been
    /// handed to the socket, and nothing has arrived since: `keep_alive`
    /// from the moment that was noticed.
    KeepAlive,
    /// A write is waiting for the client to take bytes (the socket's
    /// buffers are full): `send` from the first write that would block,
    /// whatever else the connection is doing. A write the socket takes
    /// ends it (back to [`Wait::Busy`]).
    Send,
}

impl Wait {
    /// The name used in the error a timed-out read or write returns.
    pub fn name(self) -> &'static str {
        match self {
            Wait::FirstByte => "first-byte",
            Wait::Head => "request-head",
            Wait::Busy => "busy",
            Wait::KeepAlive => "keep-alive",
            Wait::Send => "send",
        }
    }
}

/// The pure deadline policy of one connection. It holds no clock and no
/// timer: [`Policy::observe`] is told the time and what was seen, and
/// [`Policy::deadline`] says until when the connection may stay as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    wait: Wait,
    /// When the current wait began.
    since: Instant,
    /// The finished-request count when last observed: a change means a
    /// request ended since, even one that began and ended unobserved.
    finished: u32,
}

impl Policy {
    /// A connection accepted at `accepted`: waiting for its first byte.
    pub fn new(accepted: Instant) -> Policy {
        Policy {
            wait: Wait::FirstByte,
            since: accepted,
            finished: 0,
        }
    }

    /// Updates the state at `now` from the connection's counters and
    /// whether the read that prompted this call brought bytes. `http2`:
    /// the connection speaks HTTP/2, whose idle connections receive frames
    /// that are not request heads.
    ///
    /// Transitions, in this order:
    /// 0. a stalled write ([`Wait::Send`]) stays so: only the socket taking
    ///    bytes ends it ([`Policy::write_progress`]);
    /// 1. a request in flight → [`Wait::Busy`];
    /// 2. none in flight, and the last observation was busy or a request
    ///    finished since → [`Wait::KeepAlive`] from `now`;
    /// 3. bytes while waiting for the first byte → [`Wait::Head`] from `now`;
    ///    bytes during keep-alive → [`Wait::Head`] from `now` on HTTP/1 (the
    ///    next request has begun), no change on HTTP/2 (frames on an idle
    ///    connection do not keep it open).
    pub fn observe(
        &mut self,
        now: Instant,
        in_flight: u32,
        finished: u32,
        bytes: bool,
        http2: bool,
    ) {
        if self.wait == Wait::Send {
            self.finished = finished;
            return;
        }
        if in_flight > 0 {
            self.wait = Wait::Busy;
            self.finished = finished;
            return;
        }
        if self.wait == Wait::Busy || finished != self.finished {
            self.wait = Wait::KeepAlive;
            self.since = now;
            self.finished = finished;
        }
        if bytes {
            match self.wait {
                Wait::FirstByte => self.begin_head(now),
                Wait::KeepAlive if !http2 => self.begin_head(now),
                Wait::KeepAlive | Wait::Head | Wait::Busy | Wait::Send => {}
            }
        }
    }

    fn begin_head(&mut self, now: Instant) {
        self.wait = Wait::Head;
        self.since = now;
    }

    /// A write at `now` would block: the client is not taking what it is
    /// sent. Begins [`Wait::Send`] unless already there (more writes that
    /// block do not move the deadline).
    pub fn write_pending(&mut self, now: Instant) {
        if self.wait != Wait::Send {
            self.wait = Wait::Send;
            self.since = now;
        }
    }

    /// The socket took bytes: a stalled write ends, and the connection
    /// counts as busy until the next [`Policy::observe`] decides (a
    /// request in flight, or keep-alive from then). Writes that never
    /// stalled change nothing.
    pub fn write_progress(&mut self) {
        if self.wait == Wait::Send {
            self.wait = Wait::Busy;
        }
    }

    /// What the connection waits for.
    pub fn wait(&self) -> Wait {
        self.wait
    }

    /// When the current wait expires; `None` while busy (or if the sum
    /// overflows the clock, which validated settings cannot cause).
    pub fn deadline(&self, t: &IdleTimeouts) -> Option<Instant> {
        let limit = match self.wait {
            Wait::FirstByte => t.first_byte,
            Wait::Head => t.header,
            Wait::KeepAlive => t.keep_alive,
            Wait::Send => t.send,
            Wait::Busy => return None,
        };
        self.since.checked_add(limit)
    }
}

/// The HTTP/2 connection preface, which an h2c client with prior knowledge
/// sends first (the same test hyper's version detection makes).
pub(crate) const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What the first bytes of a connection say about its protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sniff {
    /// Every byte so far matches this many bytes of the HTTP/2 preface.
    Undecided(u8),
    Http1,
    Http2,
}

impl Sniff {
    /// The verdict after `chunk`, the next bytes read.
    pub fn feed(self, chunk: &[u8]) -> Sniff {
        let Sniff::Undecided(matched) = self else {
            return self;
        };
        let matched = usize::from(matched);
        let want = &H2_PREFACE[matched..];
        let n = want.len().min(chunk.len());
        if chunk[..n] != want[..n] {
            Sniff::Http1
        } else if matched + n == H2_PREFACE.len() {
            Sniff::Http2
        } else {
            // At most 23: fits.
            Sniff::Undecided((matched + n) as u8)
        }
    }
}

/// What a connection's IO and its service share: requests in flight and
/// requests finished, and the connection task's waker, woken when the last
/// request in flight finishes so the IO arms the keep-alive deadline at
/// once.
#[derive(Debug, Default)]
pub struct Activity {
    in_flight: AtomicU32,
    finished: AtomicU32,
    waker: AtomicWaker,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity::default())
    }

    /// Counts a request in flight until the guard is dropped. Called when
    /// hyper hands the request to the service, that is when its head is
    /// complete.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        RequestGuard(self.clone())
    }

    /// (in flight, finished). `in_flight` is read first and a request
    /// counts as finished before it stops counting as in flight, so a
    /// reader never sees a request that ended as neither.
    pub fn counts(&self) -> (u32, u32) {
        let in_flight = self.in_flight.load(Ordering::SeqCst);
        (in_flight, self.finished.load(Ordering::SeqCst))
    }
}

/// One request in flight on its connection; dropping it ends the request.
#[derive(Debug)]
pub struct RequestGuard(Arc<Activity>);

impl RequestGuard {
    /// `body` as the response body, ending the request when it ends.
    pub fn track<B>(self, body: B) -> TrackedBody<B> {
        TrackedBody {
            body,
            request: Some(self),
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.finished.fetch_add(1, Ordering::SeqCst);
        if a.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            a.waker.wake();
        }
    }
}

/// A response body that keeps its request counted as in flight until the
/// body has ended (its last frame or an error was read) or been dropped
/// (hyper drops a body it does not send, as for `HEAD`).
#[derive(Debug)]
pub struct TrackedBody<B> {
    body: B,
    request: Option<RequestGuard>,
}

impl<B> Body for TrackedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        if matches!(polled, Poll::Ready(None | Some(Err(_)))) {
            this.request = None;
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket under its idle deadlines: reads and writes fail
/// with `TimedOut` once the [`Policy`]'s deadline has passed, so hyper
/// closes the connection.
///
/// The policy is fed on every read, on every write that would block and
/// on every write the socket takes after one that blocked; writes that
/// never block cost one comparison. The timer is (re)armed only when a
/// read or write would block, which is when hyper waits for the client; it
/// is not polled while the connection is busy. A flush or shutdown that
/// would block counts as a stalled write too, but only bytes taken by a
/// write end a stall: `S` is a socket, whose flush is a no-op, so a flush
/// that succeeds says nothing about the client reading.
pub struct DeadlineIo<S> {
    io: S,
    activity: Arc<Activity>,
    timeouts: IdleTimeouts,
    policy: Policy,
    sniff: Sniff,
    sleep: Pin<Box<Sleep>>,
}

impl<S> DeadlineIo<S> {
    /// Wraps a connection accepted just now.
    pub fn new(io: S, activity: Arc<Activity>, timeouts: IdleTimeouts) -> DeadlineIo<S> {
        let now = Instant::now();
        let policy = Policy::new(now);
        let first = policy.deadline(&timeouts).unwrap_or(now);
        DeadlineIo {
            io,
            activity,
            timeouts,
            policy,
            sniff: Sniff::Undecided(0),
            sleep: Box::pin(tokio::time::sleep_until(first)),
        }
    }

    /// Waits for the policy's current deadline, if any, on the one timer;
    /// `Ready` with the error to fail the read or write once it has
    /// passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(deadline) = self.policy.deadline(&self.timeouts) else {
            return Poll::Pending;
        };
        if self.sleep.deadline() != deadline {
            self.sleep.as_mut().reset(deadline);
        }
        ready!(self.sleep.as_mut().poll(cx));
        let wait = self.policy.wait().name();
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("connection closed: {wait} deadline passed"),
        ))
    }

    /// A write, flush or shutdown would block: the client is not taking
    /// what it is sent. Starts the send deadline (unless already running)
    /// and fails the call once it has passed.
    fn stalled<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        self.policy.write_pending(Instant::now());
        self.poll_deadline(cx).map(Err)
    }

    /// After a write: bytes taken end a stall, a write that would block
    /// starts or continues one.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match polled {
            Poll::Ready(Ok(n)) if n > 0 => {
                self.policy.write_progress();
                polled
            }
            Poll::Pending => self.stalled(cx),
            ready => ready,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for DeadlineIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        let fresh = &buf.filled()[before..];
        let bytes = matches!(polled, Poll::Ready(Ok(()))) && !fresh.is_empty();
        if bytes {
            this.sniff = this.sniff.feed(fresh);
        }
        let (in_flight, finished) = this.activity.counts();
        this.policy.observe(
            Instant::now(),
            in_flight,
            finished,
            bytes,
            this.sniff == Sniff::Http2,
        );
        if polled.is_ready() {
            return polled;
        }
        // The client has nothing more for now: wake when a request ends
        // (to arm the keep-alive deadline) or when the deadline passes
        // (while a write is stalled, that is the send deadline: a read
        // fails with it too, should hyper not retry the write first).
        this.activity.waker.register(cx.waker());
        this.poll_deadline(cx).map(Err)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_flush(cx) {
            Poll::Pending => this.stalled(cx),
            ready => ready,
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_shutdown(cx) {
            Poll::Pending => this.stalled(cx),
            ready => ready,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: IdleTimeouts = IdleTimeouts {
        first_byte: Duration::from_secs(10),
        header: Duration::from_secs(30),
        keep_alive: Duration::from_secs(75),
        send: Duration::from_secs(60),
    };

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn a_silent_connection_has_the_first_byte_deadline() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        assert_eq!(p.wait(), Wait::FirstByte);
        assert_eq!(p.deadline(&T), Some(t0 + secs(10)));
        // Reads that bring nothing change nothing.
        p.observe(t0 + secs(5), 0, 0, false, false);
        assert_eq!(p.deadline(&T), Some(t0 + secs(10)));
    }

    #[test]
    fn the_head_deadline_runs_from_the_first_byte_and_is_not_extended() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0 + secs(2), 0, 0, true, false);
        assert_eq!(p.wait(), Wait::Head);
        assert_eq!(p.deadline(&T), Some(t0 + secs(32)));
        // A trickle of head bytes does not buy more time.
        p.observe(t0 + secs(20), 0, 0, true, false);
        p.observe(t0 + secs(31), 0, 0, true, false);
        assert_eq!(p.deadline(&T), Some(t0 + secs(32)));
    }

    #[test]
    fn nothing_is_armed_while_a_request_is_in_flight() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 0, true, false);
        p.observe(t0 + secs(1), 1, 0, false, false);
        assert_eq!(p.wait(), Wait::Busy);
        assert_eq!(p.deadline(&T), None);
        // A long stream: reads (client bytes or none) keep it busy.
        p.observe(t0 + secs(100), 1, 0, true, false);
        p.observe(t0 + secs(500), 1, 0, false, false);
        assert_eq!(p.deadline(&T), None);
    }

    #[test]
    fn keep_alive_starts_when_the_last_request_ends() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 0, true, false);
        p.observe(t0 + secs(1), 1, 0, false, false);
        p.observe(t0 + secs(9), 0, 1, false, false);
        assert_eq!(p.wait(), Wait::KeepAlive);
        assert_eq!(p.deadline(&T), Some(t0 + secs(84)));
        // Still idle later: the deadline does not move.
        p.observe(t0 + secs(50), 0, 1, false, false);
        assert_eq!(p.deadline(&T), Some(t0 + secs(84)));
    }

    #[test]
    fn a_request_that_began_and_ended_unobserved_still_counts() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 0, true, false);
        // The next observation already sees it finished.
        p.observe(t0 + secs(3), 0, 1, false, false);
        assert_eq!(p.wait(), Wait::KeepAlive);
        assert_eq!(p.deadline(&T), Some(t0 + secs(78)));
        // The finished count wraps without confusion.
        let mut q = Policy {
            wait: Wait::KeepAlive,
            since: t0,
            finished: u32::MAX,
        };
        q.observe(t0 + secs(1), 0, 0, false, false);
        assert_eq!(q.deadline(&T), Some(t0 + secs(76)));
    }

    #[test]
    fn http1_bytes_after_keep_alive_begin_the_next_head() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 1, false, false);
        assert_eq!(p.wait(), Wait::KeepAlive);
        p.observe(t0 + secs(60), 0, 1, true, false);
        assert_eq!(p.wait(), Wait::Head);
        assert_eq!(p.deadline(&T), Some(t0 + secs(90)));
        // The response that ends in the same read as new bytes arrive.
        let mut q = Policy::new(t0);
        q.observe(t0, 1, 0, true, false);
        q.observe(t0 + secs(5), 0, 1, true, false);
        assert_eq!(q.wait(), Wait::Head);
        assert_eq!(q.deadline(&T), Some(t0 + secs(35)));
    }

    #[test]
    fn http2_frames_on_an_idle_connection_do_not_keep_it_open() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        // The preface counts as the first byte, as on HTTP/1.
        p.observe(t0, 0, 0, true, true);
        assert_eq!(p.wait(), Wait::Head);
        p.observe(t0 + secs(1), 2, 0, true, true);
        assert_eq!(p.wait(), Wait::Busy);
        p.observe(t0 + secs(4), 0, 2, false, true);
        assert_eq!(p.deadline(&T), Some(t0 + secs(79)));
        // PING / WINDOW_UPDATE later: still the same keep-alive deadline.
        p.observe(t0 + secs(40), 0, 2, true, true);
        assert_eq!(p.wait(), Wait::KeepAlive);
        assert_eq!(p.deadline(&T), Some(t0 + secs(79)));
    }

    #[test]
    fn a_stalled_write_has_the_send_deadline_whatever_the_requests() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 0, true, false);
        p.observe(t0 + secs(1), 1, 0, false, false);
        // A stream the client stops reading.
        p.write_pending(t0 + secs(10));
        assert_eq!(p.wait(), Wait::Send);
        assert_eq!(p.deadline(&T), Some(t0 + secs(70)));
        // More writes that would block, reads (with or without bytes) and
        // the request ending do not move it.
        p.write_pending(t0 + secs(30));
        p.observe(t0 + secs(40), 1, 0, true, false);
        p.observe(t0 + secs(50), 0, 1, false, false);
        assert_eq!(p.wait(), Wait::Send);
        assert_eq!(p.deadline(&T), Some(t0 + secs(70)));
        // The socket takes bytes: the next stall starts afresh (a
        // deadline between two writes, not on the response).
        let mut q = p;
        q.write_progress();
        q.write_pending(t0 + secs(69));
        assert_eq!(q.deadline(&T), Some(t0 + secs(129)));
    }

    #[test]
    fn keep_alive_starts_once_the_last_response_is_handed_to_the_socket() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 0, true, false);
        p.observe(t0 + secs(1), 1, 0, false, false);
        // hyper took the last body frame at 2 s; the socket is full.
        p.write_pending(t0 + secs(2));
        p.observe(t0 + secs(3), 0, 1, false, false);
        assert_eq!(p.wait(), Wait::Send, "not keep-alive: bytes still to send");
        // A slow reader: the socket takes some, is full again, takes the
        // rest at 100 s — long past the keep-alive from the body's end.
        p.write_progress();
        assert_eq!(p.wait(), Wait::Busy);
        assert_eq!(p.deadline(&T), None);
        p.write_pending(t0 + secs(40));
        p.observe(t0 + secs(41), 0, 1, false, false);
        p.write_progress();
        p.observe(t0 + secs(100), 0, 1, false, false);
        assert_eq!(p.wait(), Wait::KeepAlive);
        assert_eq!(p.deadline(&T), Some(t0 + secs(175)));
        // Progress while a request is in flight: busy again.
        let mut q = Policy::new(t0);
        q.observe(t0, 1, 0, true, false);
        q.write_pending(t0 + secs(1));
        q.write_progress();
        q.observe(t0 + secs(2), 1, 0, false, false);
        assert_eq!(q.wait(), Wait::Busy);
    }

    #[test]
    fn writes_that_never_block_change_nothing() {
        let t0 = Instant::now();
        let mut p = Policy::new(t0);
        p.observe(t0, 0, 0, true, false);
        p.observe(t0 + secs(1), 0, 1, false, false);
        assert_eq!(p.deadline(&T), Some(t0 + secs(76)));
        p.write_progress();
        assert_eq!(p.wait(), Wait::KeepAlive);
        assert_eq!(p.deadline(&T), Some(t0 + secs(76)));
        // A write that blocks on an idle connection (HTTP/2 frames the
        // client does not read) is a stall like any other.
        p.write_pending(t0 + secs(5));
        assert_eq!(p.deadline(&T), Some(t0 + secs(65)));
    }

    #[test]
    fn sniffing_the_preface() {
        let u = Sniff::Undecided(0);
        assert_eq!(u.feed(b"GET / HTTP/1.1\r\n"), Sniff::Http1);
        assert_eq!(u.feed(b"P"), Sniff::Undecided(1));
        assert_eq!(u.feed(b"P").feed(b"OST"), Sniff::Http1);
        assert_eq!(u.feed(b"PRI * HTTP/2.0\r\n"), Sniff::Undecided(16));
        assert_eq!(
            u.feed(b"PRI * HTTP/2.0\r\n").feed(b"\r\nSM\r\n\r\n\0\0"),
            Sniff::Http2
        );
        assert_eq!(u.feed(H2_PREFACE), Sniff::Http2);
        assert_eq!(Sniff::Http2.feed(b"GET"), Sniff::Http2);
        assert_eq!(Sniff::Http1.feed(H2_PREFACE), Sniff::Http1);
    }

    #[test]
    fn activity_counts_and_tracked_bodies() {
        use http_body_util::BodyExt;
        let a = Activity::new();
        let first = a.request_started();
        let second = a.request_started();
        assert_eq!(a.counts(), (2, 0));
        drop(first);
        assert_eq!(a.counts(), (1, 1));
        let body = second.track(http_body_util::Full::new(bytes::Bytes::from_static(b"hi")));
        assert_eq!(a.counts(), (1, 1), "in flight until the body ends");
        let collected = rt().block_on(async move {
            let mut body = body;
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                out.extend_from_slice(&frame.unwrap().into_data().unwrap());
            }
            // The body has ended; it is still alive.
            let counts = a.counts();
            drop(body);
            (out, counts, a)
        });
        assert_eq!(collected.0, b"hi");
        assert_eq!(
            collected.1,
            (0, 2),
            "ended with its last frame, not at drop"
        );
        assert_eq!(
            collected.2.counts(),
            (0, 2),
            "dropping it counts nothing twice"
        );
    }

    /// Small real-time deadlines for the IO tests (tokio's paused clock
    /// needs a feature this crate does not enable).
    const FAST: IdleTimeouts = IdleTimeouts {
        first_byte: Duration::from_millis(100),
        header: Duration::from_millis(300),
        keep_alive: Duration::from_millis(150),
        send: Duration::from_millis(200),
    };

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap()
    }

    /// `elapsed` is at least `at` and not far beyond it (a loaded machine
    /// may be late, never early).
    fn around(elapsed: Duration, at: Duration) {
        assert!(elapsed >= at, "{elapsed:?} < {at:?}");
        assert!(
            elapsed < at + Duration::from_secs(2),
            "{elapsed:?} ≫ {at:?}"
        );
    }

    #[test]
    fn the_io_times_out_a_silent_connection() {
        rt().block_on(async {
            use tokio::io::AsyncReadExt;
            let (_client, server) = tokio::io::duplex(64);
            let started = Instant::now();
            let mut io = DeadlineIo::new(server, Activity::new(), FAST);
            let mut buf = [0u8; 8];
            let err = io.read(&mut buf).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(err.to_string().contains("first-byte"), "{err}");
            around(started.elapsed(), FAST.first_byte);
        });
    }

    #[test]
    fn the_io_waits_while_busy_then_arms_keep_alive() {
        rt().block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut client, server) = tokio::io::duplex(64);
            let activity = Activity::new();
            let mut io = DeadlineIo::new(server, activity.clone(), FAST);
            client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            let mut buf = [0u8; 64];
            assert!(io.read(&mut buf).await.unwrap() > 0);
            let request = activity.request_started();
            // Busy for longer than every idle deadline: the read just waits.
            let busy = Duration::from_millis(500);
            let t0 = Instant::now();
            let ends = async {
                tokio::time::sleep(busy).await;
                drop(request);
            };
            let (read, ()) = tokio::join!(io.read(&mut buf), ends);
            let err = read.unwrap_err();
            assert!(err.to_string().contains("keep-alive"), "{err}");
            around(t0.elapsed(), busy + FAST.keep_alive);
        });
    }
    #[test]
    fn the_io_closes_a_client_that_stops_reading() {
        rt().block_on(async {
            use tokio::io::AsyncWriteExt;
            // The client never reads: 64 bytes fit, then every write waits.
            let (_client, server) = tokio::io::duplex(64);
            let activity = Activity::new();
            let mut io = DeadlineIo::new(server, activity.clone(), FAST);
            // A stream in flight: no idle deadline, yet the write is cut.
            let _request = activity.request_started();
            let started = Instant::now();
            let err = io.write_all(&[b'x'; 1024]).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::TimedOut);
            assert!(err.to_string().contains("send deadline"), "{err}");
            around(started.elapsed(), FAST.send);
            // A read (hyper's, watching for a hang-up) fails with it too.
            let mut r = [0u8; 8];
            let err = tokio::io::AsyncReadExt::read(&mut io, &mut r)
                .await
                .unwrap_err();
            assert!(err.to_string().contains("send deadline"), "{err}");
        });
    }

    #[test]
    fn a_slow_steady_reader_is_not_cut_and_keep_alive_waits_for_the_last_byte() {
        rt().block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (mut client, server) = tokio::io::duplex(64);
            let activity = Activity::new();
            let io = DeadlineIo::new(server, activity.clone(), FAST);
            // A whole response handed over at once (its request ended
            // before a byte was written), read 32 bytes every 20 ms: 640 ms
            // to send, past both the send and the keep-alive deadlines.
            drop(activity.request_started());
            let (mut rd, mut wr) = tokio::io::split(io);
            let started = Instant::now();
            let body = [b'y'; 1024];
            let write = async {
                wr.write_all(&body).await.unwrap();
                wr.flush().await.unwrap();
                Instant::now()
            };
            // The server keeps reading, as hyper does on an idle connection.
            let read = async {
                let mut r = [0u8; 8];
                let err = rd.read(&mut r).await.unwrap_err();
                (err, Instant::now())
            };
            let slow = async {
                let mut got = 0;
                let mut chunk = [0u8; 32];
                while got < body.len() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    got += client.read(&mut chunk).await.unwrap();
                }
                got
            };
            let (written, (err, failed), got) = tokio::join!(write, read, slow);
            assert_eq!(got, body.len());
            let sending = written - started;
            assert!(
                sending > FAST.send + FAST.keep_alive,
                "the test must outlast both deadlines: {sending:?}"
            );
            // Keep-alive from the last write the socket took, not from the
            // request's end.
            assert!(err.to_string().contains("keep-alive"), "{err}");
            around(failed - written, FAST.keep_alive);
        });
    }
}
