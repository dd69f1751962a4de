//! The shape of the gateway's synchronous layers: work before the inner service (which may
//! answer at once instead), and work on the response after it. Written once here as a plain
//! tower `Layer`/`Service` pair: no boxed future, no clone of the inner stack per request (as
//! `axum::middleware::from_fn` needs), so a concern costs only its own work.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::Response;
use pin_project_lite::pin_project;
use tower::{Layer, Service};

/// One concern's work around the inner service.
pub trait Around: Clone + Send + Sync + 'static {
    /// What `before` hands to `after`.
    type Carry: Send + 'static;

    /// Runs before the inner service: `Ok` passes the (possibly amended) request on, `Err`
    /// answers at once.
    // The early answer is a whole `Response`, moved once; boxing it would add an allocation
    // to exactly the refused requests, which an attacker controls.
    #[allow(clippy::result_large_err)]
    fn before(&self, request: &mut Request) -> Result<Self::Carry, Response>;

    /// Runs on the inner service's response.
    fn after(carry: Self::Carry, response: &mut Response);
}

/// The layer of an [`Around`].
#[derive(Clone)]
pub struct AroundLayer<A>(A);

impl<A> AroundLayer<A> {
    /// Wraps `around` as a layer.
    pub fn new(around: A) -> Self {
        Self(around)
    }
}

impl<A: Clone, S> Layer<S> for AroundLayer<A> {
    type Service = AroundService<A, S>;

    fn layer(&self, inner: S) -> Self::Service {
        AroundService {
            around: self.0.clone(),
            inner,
        }
    }
}

/// The service of an [`AroundLayer`].
#[derive(Clone)]
pub struct AroundService<A, S> {
    around: A,
    inner: S,
}

impl<A, S> Service<Request> for AroundService<A, S>
where
    A: Around,
    S: Service<Request, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = AroundFuture<A, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> Self::Future {
        match self.around.before(&mut request) {
            Ok(carry) => AroundFuture {
                future: Some(self.inner.call(request)),
                carry: Some(carry),
                answered: None,
            },
            Err(response) => AroundFuture {
                future: None,
                carry: None,
                answered: Some(response),
            },
        }
    }
}

pin_project! {
    /// The response future of an [`AroundService`]: the inner service's, with `after` on its
    /// response, or the answer `before` gave.
    pub struct AroundFuture<A: Around, F> {
        #[pin]
        future: Option<F>,
        carry: Option<A::Carry>,
        answered: Option<Response>,
    }
}

impl<A, F> Future for AroundFuture<A, F>
where
    A: Around,
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(response) = this.answered.take() {
            return Poll::Ready(Ok(response));
        }
        let future = this
            .future
            .as_pin_mut()
            .expect("an answered future is not polled again");
        let Ok(mut response) = std::task::ready!(future.poll(cx));
        if let Some(carry) = this.carry.take() {
            A::after(carry, &mut response);
        }
        Poll::Ready(Ok(response))
    }
}
