//! Bulkheads: a concurrency limit per dependency with a bounded queue. Calls beyond
//! `concurrency + queue` are shed at once with [`Overloaded`] — a fast "no" (HTTP 503
//! with `Retry-After`) instead of a slow one that holds memory and a caller's budget.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::Semaphore;
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
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let limit = self.limit.clone();
        let admitted = limit.admitted.fetch_add(1, Ordering::SeqCst);
        let admission = Admission(limit.admitted.clone());
        if admitted >= limit.admitted_max {
            drop(admission);
            let name = limit.name.to_string();
            return Box::pin(async move { Err(BoxError::from(Overloaded { name })) });
        }
        // The ready clone is used; the original stays for the next call.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let _admission = admission;
            let _running = limit.running.acquire().await.map_err(|_| {
                BoxError::from(Overloaded {
                    name: limit.name.to_string(),
                })
            })?;
            inner.call(request).await.map_err(Into::into)
        })
    }
}
