//! An HTTP listener that stays up under abuse.
//!
//! | limit | default | what it stops |
//! | --- | --- | --- |
//! | `header_read_timeout` | 10 s | a client that opens a connection, or keeps one after a response, and sends its request head slowly or never (slowloris); hyper starts it when a connection turns idle too |
//! | `idle_timeout` | 60 s | a connection on which no byte moves either way (a stalled upload or download) |
//! | `max_connections` | 4,096 | running out of file descriptors; past it a connection is answered `503` + `Retry-After` and closed |
//! | `max_in_flight` | 1,024 | unbounded work: a request past it is answered `503` + `Retry-After` at once |
//!
//! A response body (a stream) keeps its request counted in flight until it ends. On shutdown the
//! listener stops accepting, lets requests in flight finish for up to `shutdown_grace`, then
//! closes what is left.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Router,
    body::Body,
    extract::Request,
    http::{HeaderValue, StatusCode, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
    service::TowerToHyperService,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{OwnedSemaphorePermit, Semaphore, watch},
};

/// Connection and request limits of one listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest wait for a complete request head, from the first byte or from the moment a
    /// kept-alive connection turns idle (default 10 s).
    pub header_read_timeout: Duration,
    /// A connection on which no byte moved for this long is closed (default 60 s).
    pub idle_timeout: Duration,
    /// Connections served at once (default 4,096); past it new ones get `503`.
    pub max_connections: usize,
    /// Requests being served at once, streaming bodies included (default 1,024); past it `503`.
    pub max_in_flight: usize,
    /// `Retry-After` of a `503` when saturated, seconds (default 1).
    pub retry_after_secs: u32,
    /// How long requests in flight may finish after shutdown starts (default 30 s).
    pub shutdown_grace: Duration,
    /// Serve TLS instead of plaintext (default: plaintext). The handshake must finish within
    /// `header_read_timeout`.
    pub tls: Option<crate::tls::Tls>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            max_in_flight: 1024,
            retry_after_secs: 1,
            shutdown_grace: Duration::from_secs(30),
            tls: None,
        }
    }
}

/// `503 Service Unavailable` with `Retry-After`.
pub fn saturated(retry_after_secs: u32) -> Response {
    let mut r = (
        StatusCode::SERVICE_UNAVAILABLE,
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"error":"saturated","message":"the server is at its limit; retry after the Retry-After delay"}"#,
    )
        .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    r
}

pin_project_lite::pin_project! {
    /// A response body that keeps its request's in-flight permit until it ends.
    struct Counted {
        #[pin]
        inner: Body,
        permit: Option<OwnedSemaphorePermit>,
    }
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let r = this.inner.poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            this.permit.take();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// `app` with at most `limits.max_in_flight` requests served at once; the rest get `503`.
fn with_in_flight_cap(app: Router, limits: &Limits) -> Router {
    let permits = Arc::new(Semaphore::new(limits.max_in_flight.max(1)));
    let retry = limits.retry_after_secs;
    app.layer(axum::middleware::from_fn(
        move |req: Request, next: Next| {
            let permits = permits.clone();
            async move {
                let Ok(permit) = permits.try_acquire_owned() else {
                    return saturated(retry);
                };
                let resp = next.run(req).await;
                let (parts, body) = resp.into_parts();
                Response::from_parts(
                    parts,
                    Body::new(Counted {
                        inner: body,
                        permit: Some(permit),
                    }),
                )
            }
        },
    ))
}

pin_project_lite::pin_project! {
    /// A socket that remembers when a byte last moved, for the idle timeout.
    struct Tracked<T> {
        #[pin]
        io: T,
        last: Arc<AtomicU64>,
        epoch: Instant,
    }
}

impl<T> Tracked<T> {
    fn touch(last: &AtomicU64, epoch: Instant) {
        let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        last.store(ms, Ordering::Relaxed);
    }
}

impl<T: AsyncRead> AsyncRead for Tracked<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.io.poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            Self::touch(this.last, *this.epoch);
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Tracked<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            Self::touch(this.last, *this.epoch);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.io.poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            Self::touch(this.last, *this.epoch);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}

fn builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(limits.idle_timeout / 2))
        .keep_alive_timeout(limits.header_read_timeout);
    b
}

/// Serves one connection until it ends, goes idle for too long, or shutdown asks it to finish.
async fn connection<T>(
    stream: T,
    app: Router,
    limits: Arc<Limits>,
    mut shutdown: watch::Receiver<bool>,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let epoch = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let io = Tracked {
        io: stream,
        last: last.clone(),
        epoch,
    };
    let builder = builder(&limits);
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(io), TowerToHyperService::new(app));
    tokio::pin!(conn);
    let idle_ms = u64::try_from(limits.idle_timeout.as_millis()).unwrap_or(u64::MAX);
    let tick = (limits.idle_timeout / 4).max(Duration::from_millis(10));
    // Once asked to finish (shutdown, or idle), a connection has until this deadline to end on
    // its own; then it is dropped.
    let mut deadline: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut conn => return,
            _ = shutdown.changed(), if deadline.is_none() => {
                // Shutdown began (or the server is gone): finish what is in flight.
                conn.as_mut().graceful_shutdown();
                deadline = Some(Instant::now() + limits.shutdown_grace);
            }
            () = tokio::time::sleep(tick) => {
                let now = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                let quiet = now.saturating_sub(last.load(Ordering::Relaxed));
                match deadline {
                    None if quiet >= idle_ms => {
                        tracing::debug!(target: "paychan_service", "closing an idle connection");
                        conn.as_mut().graceful_shutdown();
                        deadline = Some(Instant::now() + limits.idle_timeout);
                    }
                    Some(d) if Instant::now() >= d => return,
                    _ => {}
                }
            }
        }
    }
}

/// Answers one connection past the connection cap with `503` + `Retry-After`, then closes it.
async fn refuse(stream: TcpStream, limits: Arc<Limits>) {
    let retry = limits.retry_after_secs;
    let svc = hyper::service::service_fn(
        move |_req: hyper::Request<hyper::body::Incoming>| async move {
            let mut r = saturated(retry);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, std::convert::Infallible>(r)
        },
    );
    let mut b = hyper::server::conn::http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(2))
        .keep_alive(false);
    let conn = b.serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
}

/// Serves `app` on `listener` within `limits` until `shutdown` resolves, then lets requests in
/// flight finish (up to `limits.shutdown_grace`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let app = with_in_flight_cap(app, &limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    // Connections past the cap are answered 503 while there is room for that, else dropped.
    let refusals = Arc::new(Semaphore::new(limits.max_connections / 8 + 16));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            a = listener.accept() => a,
        };
        let (stream, _peer) = match accepted {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or a connection reset before accept: back off briefly
                // rather than spin.
                tracing::warn!(target: "paychan_service", error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        while tasks.try_join_next().is_some() {}
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let (app, limits, stop) = (app.clone(), limits.clone(), stop_rx.clone());
                tasks.spawn(async move {
                    match limits.tls.clone() {
                        None => connection(stream, app, limits, stop).await,
                        Some(tls) => {
                            let handshake = tls.acceptor().accept(stream);
                            match tokio::time::timeout(limits.header_read_timeout, handshake).await
                            {
                                Ok(Ok(s)) => connection(s, app, limits, stop).await,
                                Ok(Err(e)) => {
                                    tracing::debug!(target: "paychan_service", error = %e, "TLS handshake failed");
                                }
                                Err(_) => {
                                    tracing::debug!(target: "paychan_service", "TLS handshake timed out");
                                }
                            }
                        }
                    }
                    drop(permit);
                });
            }
            Err(_) => {
                if let Ok(permit) = refusals.clone().try_acquire_owned() {
                    let limits = limits.clone();
                    tasks.spawn(async move {
                        refuse(stream, limits).await;
                        drop(permit);
                    });
                }
            }
        }
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let grace = limits.shutdown_grace;
    if tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(target: "paychan_service", open = tasks.len(), "shutdown grace over: closing the connections left");
        tasks.shutdown().await;
    }
    Ok(())
}
