//! The HTTP/1.1 server every listener of the platform runs (the services, the gateway,
//! the embedded provider): axum's router on hyper, with the connection limits
//! `axum::serve` does not set.
//!
//! - **Header read timeout**: a connection that has sent part of a request head must send
//!   the rest within [`ConnectionLimits::header_read`], or it is closed (slowloris).
//! - **Idle timeout**: a connection with no request in progress and nothing sent for
//!   [`ConnectionLimits::idle`] is closed.
//! - **Connections**: at most [`ConnectionLimits::connections_max`] at once; beyond that the
//!   listener stops accepting (the kernel's backlog holds the rest).
//! - **Shutdown**: idle and half-open connections close at once; a connection with a
//!   request in progress finishes it and then closes. The caller bounds the drain.
//!
//! Every request carries the peer's address as [`axum::extract::ConnectInfo`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

/// Shortest interval at which a connection checks its timeouts.
const CHECK_INTERVAL_MIN: Duration = Duration::from_millis(10);
/// Pause after a failed `accept` (e.g. out of file descriptors) before the next.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// What a connection may take of the server.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Time to finish a request head once its first byte arrived.
    pub header_read: Duration,
    /// Time a connection may stay open with no request in progress and nothing sent.
    pub idle: Duration,
    /// Connections open at once.
    pub connections_max: usize,
}

/// Serves `router` on `listener` until `stop`, as a task that ends once every connection
/// has closed.
pub fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
    what: &'static str,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let connections = TaskTracker::new();
        let permits = Arc::new(tokio::sync::Semaphore::new(limits.connections_max));
        loop {
            let permit = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let (stream, peer) = tokio::select! {
                biased;
                () = stop.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "{what}: cannot accept a connection");
                        tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                        continue;
                    }
                },
            };
            let router = router.clone();
            let stop = stop.clone();
            connections.spawn(async move {
                connection(stream, peer, router, limits, stop).await;
                drop(permit);
            });
        }
        drop(listener);
        connections.close();
        connections.wait().await;
    })
}

/// What a connection is doing, shared by its reader, its requests and its watcher.
#[derive(Debug)]
struct Activity {
    opened: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds since `opened` when the last request finished (0: none yet).
    last_done_ms: AtomicU64,
    /// Milliseconds since `opened` + 1 when the first byte of a request head arrived with
    /// no request in progress (0: no head started).
    head_started_ms: AtomicU64,
}

impl Activity {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn read_some(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_started_ms.load(Ordering::Acquire) == 0
        {
            self.head_started_ms
                .store(self.now_ms() + 1, Ordering::Release);
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.head_started_ms.store(0, Ordering::Release);
        InFlight(self.clone())
    }

    fn idle(&self) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
    }

    /// Why the connection should close now, if it should.
    fn expired(&self, limits: &ConnectionLimits) -> Option<&'static str> {
        if !self.idle() {
            return None;
        }
        let now = self.now_ms();
        let head = self.head_started_ms.load(Ordering::Acquire);
        if head != 0 {
            let waited = now.saturating_sub(head - 1);
            return (u128::from(waited) >= limits.header_read.as_millis())
                .then_some("the request head did not arrive in time");
        }
        let quiet = now.saturating_sub(self.last_done_ms.load(Ordering::Acquire));
        (u128::from(quiet) >= limits.idle.as_millis()).then_some("idle")
    }
}

/// A request in progress on a connection; finished when dropped.
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .last_done_ms
            .store(self.0.now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: ConnectionLimits,
    stop: CancellationToken,
) {
    let activity = Arc::new(Activity {
        opened: Instant::now(),
        in_flight: AtomicUsize::new(0),
        last_done_ms: AtomicU64::new(0),
        head_started_ms: AtomicU64::new(0),
    });
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<_>| {
        let in_flight = requests.request_started();
        request.extensions_mut().insert(ConnectInfo(peer));
        let call = router.clone().oneshot(request.map(axum::body::Body::new));
        async move {
            let response = call.await;
            drop(in_flight);
            response
        }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .keep_alive(true)
        // Ours: hyper's starts counting when a connection goes idle, so it would also be
        // the idle timeout.
        .header_read_timeout(None)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(served);
    let mut check = tokio::time::interval(
        limits
            .header_read
            .min(limits.idle)
            .checked_div(4)
            .unwrap_or_default()
            .max(CHECK_INTERVAL_MIN),
    );
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            done = served.as_mut() => {
                if let Err(error) = done {
                    tracing::debug!(%error, %peer, "connection ended with an error");
                }
                return;
            }
            () = stop.cancelled(), if !stopping => {
                if activity.idle() {
                    return;
                }
                // Finish the request in progress, then close.
                served.as_mut().graceful_shutdown();
                stopping = true;
            }
            _ = check.tick() => {
                if stopping && activity.idle() {
                    return;
                }
                if let Some(why) = activity.expired(&limits) {
                    tracing::debug!(%peer, why, "closing connection");
                    return;
                }
            }
        }
    }
}

/// The connection's socket, noting when a request head starts arriving.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}
