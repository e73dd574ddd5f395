//! Bulkheads: a concurrency limit per dependency with a bounded queue. Calls beyond
//! `concurrency + queue` are shed at once with [`Overloaded`] — a fast "no" (HTTP 503
//! with `Retry-After`) instead of a slow one that holds memory and a caller's budget.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use pin_project_lite::pin_project;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::PollSemaphore;
use tower::{BoxError, Layer, Service};

/// The dependency is at capacity; the call was not made.
#[derive(Debug, Clone)]
pub struct Overloaded {
    pub name: String,
}

impl fmt::Display for Overloaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bulkhead {} is full", self.name)
    }
}

impl std::error::Error for Overloaded {}

/// A shared limit; every service made by this layer draws on the same capacity.
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    name: Arc<str>,
    running: Arc<Semaphore>,
    admitted: Arc<AtomicUsize>,
    admitted_max: usize,
}

impl BulkheadLayer {
    /// `concurrency` calls run at once; `queue` more may wait; the rest are shed.
    pub fn new(name: &str, concurrency: usize, queue: usize) -> Self {
        Self {
            name: Arc::from(name),
            running: Arc::new(Semaphore::new(concurrency.max(1))),
            admitted: Arc::new(AtomicUsize::new(0)),
            admitted_max: concurrency.max(1) + queue,
        }
    }

    /// Calls admitted now (running or queued).
    pub fn admitted(&self) -> usize {
        self.admitted.load(Ordering::SeqCst)
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = Bulkhead<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Bulkhead {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Bulkhead<S> {
    inner: S,
    limit: BulkheadLayer,
}

/// Releases an admission slot when the call ends, however it ends.
#[derive(Debug)]
struct Admission(Arc<AtomicUsize>);

impl Drop for Admission {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<S, Req> Service<Req> for Bulkhead<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BulkheadFuture<S, Req>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let limit = &self.limit;
        let admitted = limit.admitted.fetch_add(1, Ordering::SeqCst);
        let admission = Admission(limit.admitted.clone());
        if admitted >= limit.admitted_max {
            drop(admission);
            return BulkheadFuture::Shed {
                name: Some(limit.name.clone()),
            };
        }
        // The common case: a place is free, and the call starts now.
        if let Ok(permit) = limit.running.clone().try_acquire_owned() {
            return BulkheadFuture::Running {
                call: self.inner.call(request),
                _permit: permit,
                _admission: admission,
            };
        }
        // Queued: the ready clone waits with the request; the original stays for the
        // next call.
        let clone = self.inner.clone();
        BulkheadFuture::Waiting {
            semaphore: PollSemaphore::new(limit.running.clone()),
            service: Some(std::mem::replace(&mut self.inner, clone)),
            request: Some(request),
            admission: Some(admission),
            name: limit.name.clone(),
        }
    }
}

pin_project! {
    /// The future of a call through a [`Bulkhead`]: shed at once, waiting for a place
    /// (queued), or running while holding one.
    #[project = BulkheadProj]
    pub enum BulkheadFuture<S: Service<Req>, Req> {
        Shed { name: Option<Arc<str>> },
        Waiting {
            semaphore: PollSemaphore,
            service: Option<S>,
            request: Option<Req>,
            admission: Option<Admission>,
            name: Arc<str>,
        },
        Running {
            #[pin]
            call: S::Future,
            _permit: OwnedSemaphorePermit,
            _admission: Admission,
        },
    }
}

impl<S: Service<Req>, Req> fmt::Debug for BulkheadFuture<S, Req> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BulkheadFuture::Shed { .. } => "BulkheadFuture::Shed",
            BulkheadFuture::Waiting { .. } => "BulkheadFuture::Waiting",
            BulkheadFuture::Running { .. } => "BulkheadFuture::Running",
        })
    }
}

fn overloaded(name: &str) -> BoxError {
    BoxError::from(Overloaded {
        name: name.to_owned(),
    })
}

impl<S, Req> Future for BulkheadFuture<S, Req>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
{
    type Output = Result<S::Response, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let running = match self.as_mut().project() {
                BulkheadProj::Shed { name } => {
                    let name = name.take().unwrap_or_else(|| Arc::from("?"));
                    return Poll::Ready(Err(overloaded(&name)));
                }
                BulkheadProj::Running { call, .. } => {
                    return call.poll(cx).map_err(Into::into);
                }
                BulkheadProj::Waiting {
                    semaphore,
                    service,
                    request,
                    admission,
                    name,
                } => {
                    // A closed semaphore (never closed here) would mean no place ever.
                    let Some(permit) = ready!(semaphore.poll_acquire(cx)) else {
                        return Poll::Ready(Err(overloaded(name)));
                    };
                    match (service.take(), request.take(), admission.take()) {
                        (Some(mut service), Some(request), Some(admission)) => {
                            BulkheadFuture::Running {
                                call: service.call(request),
                                _permit: permit,
                                _admission: admission,
                            }
                        }
                        _ => {
                            return Poll::Ready(Err(BoxError::from(
                                "bulkhead future polled after completion",
                            )))
                        }
                    }
                }
            };
            self.set(running);
        }
    }
}
