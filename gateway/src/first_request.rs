//! The cap on open connections, and a deadline on a connection's first bytes. hyper's header-read timeout starts only once a
//! request begins, and the HTTP/1-or-2 detection before it waits for the first bytes without a
//! limit: a socket (or a TLS session after its handshake) that never sends anything was held
//! forever. This acceptor gives every accepted stream, after TLS when there is TLS, until
//! `[server] header_read_timeout_secs` to send its first byte.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum_server::accept::Accept;
use futures::future::BoxFuture;
use prometheus_client::metrics::counter::Counter;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;

/// Wraps another acceptor's streams in a [`FirstByteDeadline`], and holds at most a fixed
/// number of connections: one over the cap is closed at once (counted and logged), so idle
/// sockets cannot use up the process's file descriptors and starve every other client.
#[derive(Clone)]
pub struct FirstByteAcceptor<A> {
    inner: A,
    limit: Duration,
    slots: Arc<Semaphore>,
    cap: usize,
    refused: Counter,
    last_warning: Arc<Mutex<Option<Instant>>>,
}

impl<A> FirstByteAcceptor<A> {
    /// Streams accepted by `inner` must send a byte within `limit`; at most `max_connections`
    /// are open at once; refusals count on `refused`.
    pub fn new(inner: A, limit: Duration, max_connections: usize, refused: Counter) -> Self {
        Self {
            inner,
            limit,
            slots: Arc::new(Semaphore::new(max_connections)),
            cap: max_connections,
            refused,
            last_warning: Arc::new(Mutex::new(None)),
        }
    }

    /// Counts a refusal, and says so in the log at most every ten seconds.
    fn refuse(&self) {
        self.refused.inc();
        let mut last = self.last_warning.lock().expect("warning clock");
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!(
                max_connections = self.cap,
                refused_total = self.refused.get(),
                "connection refused: the gateway holds its maximum of connections ([server] max_connections)"
            );
        }
    }
}

impl<I, S, A> Accept<I, S> for FirstByteAcceptor<A>
where
    A: Accept<I, S>,
    A::Future: Send + 'static,
    A::Stream: Send + 'static,
    A::Service: Send + 'static,
{
    type Stream = FirstByteDeadline<A::Stream>;
    type Service = A::Service;
    type Future = BoxFuture<'static, io::Result<(Self::Stream, Self::Service)>>;

    fn accept(&self, stream: I, service: S) -> Self::Future {
        let Ok(slot) = self.slots.clone().try_acquire_owned() else {
            self.refuse();
            // Dropping the stream closes the connection.
            drop(stream);
            return Box::pin(std::future::ready(Err(io::Error::other(
                "over [server] max_connections",
            ))));
        };
        let accepted = self.inner.accept(stream, service);
        let limit = self.limit;
        Box::pin(async move {
            let (stream, service) = accepted.await?;
            Ok((FirstByteDeadline::new(stream, limit, slot), service))
        })
    }
}

/// A stream whose reads fail with `TimedOut` if its first byte does not come in time; once a
/// byte came, it is the stream itself.
pub struct FirstByteDeadline<S> {
    inner: S,
    /// Boxed so that the stream stays `Unpin`, as the server needs; dropped at the first byte.
    deadline: Option<Pin<Box<Sleep>>>,
    /// The connection's place under the cap, given back when it closes.
    _slot: OwnedSemaphorePermit,
}

impl<S> FirstByteDeadline<S> {
    /// `inner`, which must send a byte within `limit`, holding `slot`.
    pub fn new(inner: S, limit: Duration, slot: OwnedSemaphorePermit) -> Self {
        Self {
            inner,
            deadline: Some(Box::pin(tokio::time::sleep(limit))),
            _slot: slot,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FirstByteDeadline<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.deadline = None;
                }
                Poll::Ready(result)
            }
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|deadline| deadline.as_mut().poll(cx).is_ready());
                if expired {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the connection sent nothing within the header-read timeout",
                    )));
                }
                Poll::Pending
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FirstByteDeadline<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
