//! A request body read on demand by the connection that carries it: the
//! handler polls [`RequestBody`], which says it wants bytes; the
//! connection's driver, which owns the socket, reads and decodes the next
//! piece and hands it over through a one-piece [`Slot`]. Nothing is read
//! before the handler asks (so a request refused early — 401, 429, a
//! declared length over the limit — costs no body bytes), and the body's
//! deadline stays where the handler enforces it (`router::read_json`).
//!
//! The slot is one small allocation per request with a body; a request
//! without one gets an empty body and no slot.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};

/// Why a request body could not be read to its end.
#[derive(Debug, Clone, thiserror::Error)]
#[error("request body incomplete: {0}")]
pub struct BodyError(pub &'static str);

/// The request body handed to the service.
#[derive(Debug)]
pub struct RequestBody {
    slot: Option<Arc<Slot>>,
    /// The declared length, for the size hint.
    length: Option<u64>,
}

impl RequestBody {
    /// A body with no bytes.
    pub fn empty() -> RequestBody {
        RequestBody {
            slot: None,
            length: Some(0),
        }
    }

    /// A body the connection will deliver through the returned slot.
    pub fn with_slot(length: Option<u64>) -> (RequestBody, Arc<Slot>) {
        let slot = Arc::new(Slot::default());
        (
            RequestBody {
                slot: Some(slot.clone()),
                length,
            },
            slot,
        )
    }
}

/// Where the connection puts the next piece of a body and sees whether
/// the handler wants one.
#[derive(Debug, Default)]
pub struct Slot(Mutex<Inner>);

#[derive(Debug, Default)]
struct Inner {
    piece: Option<Bytes>,
    end: Option<Result<(), BodyError>>,
    /// The handler is waiting for a piece.
    wanted: bool,
    handler: Option<Waker>,
    conn: Option<Waker>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent
        // (every update is one assignment), so poisoning is ignored.
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the handler waits for bytes the connection should read now.
    /// Registers the connection's waker, so a handler polling from
    /// another task still gets its bytes.
    pub fn wanted(&self, cx: &Context<'_>) -> bool {
        let mut s = self.lock();
        if !s.wanted || s.piece.is_some() || s.end.is_some() {
            return false;
        }
        if !s.conn.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.conn = Some(cx.waker().clone());
        }
        true
    }

    /// Hands the next piece to the handler.
    pub fn put(&self, piece: Bytes) {
        let mut s = self.lock();
        s.piece = Some(piece);
        s.wanted = false;
        if let Some(w) = s.handler.take() {
            w.wake();
        }
    }

    /// Ends the body: `Ok` after its last byte, `Err` if it cannot be read.
    pub fn end(&self, outcome: Result<(), BodyError>) {
        let mut s = self.lock();
        s.end.get_or_insert(outcome);
        s.wanted = false;
        if let Some(w) = s.handler.take() {
            w.wake();
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let Some(slot) = &self.slot else {
            return Poll::Ready(None);
        };
        let mut s = slot.lock();
        if let Some(piece) = s.piece.take() {
            return Poll::Ready(Some(Ok(Frame::data(piece))));
        }
        match &s.end {
            Some(Ok(())) => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.clone()))),
            None => {}
        }
        s.wanted = true;
        if !s.handler.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.handler = Some(cx.waker().clone());
        }
        if let Some(w) = &s.conn {
            // Usually the same task (the driver polls the handler), then
            // this costs nothing; from another task it starts a read.
            if !w.will_wake(cx.waker()) {
                w.wake_by_ref();
            }
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.slot {
            None => true,
            Some(slot) => {
                let s = slot.lock();
                s.piece.is_none() && matches!(s.end, Some(Ok(())))
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.length {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn pieces_arrive_in_order_and_the_end_is_seen() {
        let (mut body, slot) = RequestBody::with_slot(Some(5));
        assert_eq!(body.size_hint().exact(), Some(5));
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(f) = body.frame().await {
                got.extend_from_slice(&f.unwrap().into_data().unwrap());
            }
            got
        });
        for piece in [&b"ab"[..], b"cde"] {
            // Wait until the reader asks, as the driver does.
            let asked = std::future::poll_fn(|cx| {
                if slot.wanted(cx) {
                    Poll::Ready(())
                } else {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
            });
            asked.await;
            slot.put(Bytes::copy_from_slice(piece));
        }
        slot.end(Ok(()));
        assert_eq!(reader.await.unwrap(), b"abcde");
    }

    #[tokio::test]
    async fn a_failed_body_is_an_error_and_an_empty_one_ends_at_once() {
        let (mut body, slot) = RequestBody::with_slot(None);
        slot.end(Err(BodyError("connection closed")));
        assert!(body.frame().await.unwrap().is_err());
        let mut empty = RequestBody::empty();
        assert!(empty.is_end_stream());
        assert!(empty.frame().await.is_none());
    }
}
