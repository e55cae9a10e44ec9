//! The tee: copies a response body on its way to the client.
//!
//! Owns the copy and the decision of when a copy is complete. Each frame is
//! passed on the moment it arrives; the copy is a side effect. The completion
//! callback runs only when the upstream body has ended cleanly while being
//! relayed. It must never run after an error, an overflow, or a client that
//! went away mid-body (the body is then dropped unfinished).

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};

use crate::http::body::BoxError;

/// Called with the whole body once it has been delivered.
pub type OnComplete = Box<dyn FnOnce(Bytes) + Send>;

/// A body wrapper that keeps a copy of up to `cap` bytes.
pub struct Tee<B> {
    inner: B,
    buf: BytesMut,
    cap: usize,
    on_complete: Option<OnComplete>,
}

impl<B> Tee<B> {
    /// Wraps `inner`; `on_complete` gets the copy if the body completes within `cap`.
    pub fn new(inner: B, cap: usize, on_complete: OnComplete) -> Self {
        Tee {
            inner,
            buf: BytesMut::new(),
            cap,
            on_complete: Some(on_complete),
        }
    }
}

impl<B> Tee<B> {
    fn complete(&mut self) {
        if let Some(f) = self.on_complete.take() {
            f(std::mem::take(&mut self.buf).freeze());
        }
    }
}

impl<B> Body for Tee<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if this.on_complete.is_some() {
                    if let Some(d) = frame.data_ref() {
                        if this.buf.len() + d.len() > this.cap {
                            // NOTE: too large to cache; stop copying, keep serving.
                            this.on_complete = None;
                            this.buf = BytesMut::new();
                        } else {
                            this.buf.extend_from_slice(d);
                        }
                    }
                }
                // NOTE: a body of known length may never be polled to `None`:
                // the server stops once it has written that many bytes.
                if this.inner.is_end_stream() {
                    this.complete();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.on_complete = None;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                this.complete();
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::body::{boxed, full};
    use http_body_util::BodyExt;
    use std::sync::{Arc, Mutex};

    #[tokio::test]
    async fn completes_with_a_copy_only_at_the_end() {
        let got = Arc::new(Mutex::new(None));
        let g = got.clone();
        let tee = Tee::new(
            full("hello"),
            100,
            Box::new(move |b| *g.lock().unwrap() = Some(b)),
        );
        let out = boxed(tee).collect().await.unwrap().to_bytes();
        assert_eq!(out, "hello");
        assert_eq!(got.lock().unwrap().as_deref(), Some(&b"hello"[..]));
    }

    #[tokio::test]
    async fn overflow_and_drop_never_complete() {
        let got = Arc::new(Mutex::new(0));
        let g = got.clone();
        let tee = Tee::new(
            full("hello world"),
            4,
            Box::new(move |_| *g.lock().unwrap() += 1),
        );
        let out = boxed(tee).collect().await.unwrap().to_bytes();
        assert_eq!(out, "hello world", "the client still gets everything");
        let g = got.clone();
        let tee = Tee::new(full("x"), 4, Box::new(move |_| *g.lock().unwrap() += 1));
        drop(tee);
        assert_eq!(*got.lock().unwrap(), 0);
    }
}
