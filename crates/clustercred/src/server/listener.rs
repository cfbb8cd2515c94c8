//! The accept loop: one listener for gRPC and REST (h2c, or TLS with ALPN), with the limits that keep idle,
//! slow and numerous connections from starving real clients: a cap on connections (overall and per client
//! address), a TLS handshake deadline, HTTP/1 header-read timeout, an idle deadline for connections that
//! carry no request (HTTP/1 and HTTP/2), HTTP/2 keep-alive pings, and TCP_NODELAY on every accepted socket.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt;

/// Connection-level limits (from `ServeConfig`).
#[derive(Clone, Debug)]
pub struct ConnectionLimits {
    /// Connections served at once.
    pub max_connections: usize,
    /// Connections from one client address (IPv6: its /64); 0 means no cap.
    pub max_per_address: usize,
    /// Time to receive a complete HTTP/1 request head.
    pub header_read_timeout: Duration,
    /// Time a connection may stay open with no request in flight.
    pub idle_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// How long requests in flight get to finish when the server stops or closes a connection.
    pub drain_timeout: Duration,
}

/// Upper bound on `max_connections`, whatever is configured.
const MAX_CONNECTIONS_CEILING: usize = 1 << 20;

/// HTTP/2 pings unanswered for this long end the connection (the peer is gone).
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// After a connection is told to close, how long it may stay with nothing in flight.
const WIND_DOWN_QUIET: Duration = Duration::from_secs(1);

/// Serves `app` on `listener` until `shutdown` resolves, then lets open connections finish (bounded by
/// `drain_timeout`).
pub async fn serve(
    listener: TcpListener,
    app: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    // Far below the semaphore's own ceiling, and countable in u32 when the drain below takes them all back.
    let max = limits.max_connections.clamp(1, MAX_CONNECTIONS_CEILING);
    let slots = Arc::new(Semaphore::new(max));
    let per_address = Arc::new(AddressCounts::default());
    let builder = Arc::new(http_builder(&limits));
    let limits = Arc::new(limits);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, typically: give connections in flight time to close.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Over the cap, the connection is accepted and closed at once rather than left in the kernel's
        // backlog: the client learns right away (and can retry elsewhere) instead of hanging until its own
        // timeout, and the backlog stays short, so the next client after a slot frees is served at once.
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(peer = %peer, "connection cap reached; closing");
            continue;
        };
        let Some(address_slot) = per_address.take(peer.ip(), limits.max_per_address) else {
            tracing::debug!(peer = %peer, "per-address connection cap reached; closing");
            continue;
        };
        // gRPC writes headers, data and trailers separately; with Nagle each small write can wait ~40 ms
        // for the peer's delayed ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(peer = %peer, error = %e, "TCP_NODELAY not set");
        }
        let app = app.clone();
        let tls = tls.clone();
        let builder = builder.clone();
        let limits = limits.clone();
        let stop = stop_rx.clone();
        tokio::spawn(async move {
            let _slots = (slot, address_slot);
            match tls {
                None => drive(stream, peer, app, &builder, &limits, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(
                        limits.tls_handshake_timeout,
                        acceptor.accept(stream),
                    )
                    .await
                    {
                        Ok(Ok(tls)) => drive(tls, peer, app, &builder, &limits, stop).await,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                        }
                        Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
    drop(listener);
    let _ = stop_tx.send(true);
    // Every connection holds a permit until its task ends: taking all of them back means all have closed.
    let all = u32::try_from(max).unwrap_or(u32::MAX);
    if tokio::time::timeout(limits.drain_timeout, slots.acquire_many(all))
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; stopping without them");
    }
    Ok(())
}

fn http_builder(limits: &ConnectionLimits) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    // hyper starts this clock whenever it waits for a request head, so on HTTP/1 it also bounds the quiet
    // time between two requests of a keep-alive connection.
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(limits.idle_timeout.min(Duration::from_secs(60)))
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT);
    builder
}

/// Serves one connection until it ends, goes idle, or the server stops.
async fn drive<I>(
    io: I,
    peer: SocketAddr,
    app: axum::Router,
    builder: &Builder<TokioExecutor>,
    limits: &ConnectionLimits,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let requests = activity.clone();
    let service =
        hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut()
                .insert(axum::extract::ConnectInfo(peer));
            let app = app.clone();
            // In flight from the request head until the response body has been sent (or dropped).
            let in_flight = requests.begin();
            async move {
                let response = app.oneshot(req.map(Body::new)).await?;
                Ok::<_, std::convert::Infallible>(response.map(|body| {
                    Body::new(Tracked {
                        body,
                        _in_flight: in_flight,
                    })
                }))
            }
        });
    let conn = builder.serve_connection(TokioIo::new(io), service);
    let mut conn = std::pin::pin!(conn);
    let reason = tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            return;
        }
        () = activity.idle_for(limits.idle_timeout) => "idle",
        _ = stop.changed() => "server stopping",
    };
    tracing::debug!(peer = %peer, reason, "closing connection");
    // HTTP/2 gets a GOAWAY, so a request crossing it is served or retried rather than lost; HTTP/1 closes
    // between requests. Requests in flight get the drain time. hyper then waits for the peer to acknowledge
    // (HTTP/2) or finish its request head (HTTP/1): a peer that does neither is dropped once nothing has been
    // in flight for a moment, so it cannot keep its slot.
    conn.as_mut().graceful_shutdown();
    let quiet = async {
        tokio::time::sleep(WIND_DOWN_QUIET).await;
        activity.idle_for(WIND_DOWN_QUIET).await;
    };
    let _ = tokio::time::timeout(limits.drain_timeout, async {
        tokio::select! {
            _ = conn => {}
            () = quiet => {}
        }
    })
    .await;
}

/// Requests in flight on one connection, and since when it has had none.
struct Activity {
    in_flight: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        }
    }

    fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(self.clone())
    }

    fn idle_start(&self) -> Instant {
        match self.idle_since.lock() {
            Ok(t) => *t,
            Err(poisoned) => *poisoned.into_inner(),
        }
    }

    /// Resolves once the connection has had no request in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                let start = self.idle_start();
                let deadline = start + limit;
                // Still idle, and no request came and went since `start` was read.
                if Instant::now() >= deadline
                    && self.in_flight.load(Ordering::SeqCst) == 0
                    && self.idle_start() == start
                {
                    return;
                }
                // A request that starts and ends meanwhile moves the start; the loop re-reads it.
                tokio::time::sleep_until(deadline).await;
            } else {
                tokio::time::sleep(limit).await;
            }
        }
    }
}

struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        // Record the time before the count reaches zero, so a watcher that sees zero reads a fresh start.
        let now = Instant::now();
        match self.0.idle_since.lock() {
            Ok(mut t) => *t = now,
            Err(poisoned) => *poisoned.into_inner() = now,
        }
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its request counted as in flight until it is sent or dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl HttpBody for Tracked {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Open connections per client address (IPv6: per /64, as the rate limits count them).
#[derive(Default)]
struct AddressCounts {
    counts: Mutex<HashMap<IpAddr, usize>>,
}

impl AddressCounts {
    /// Takes a slot for `ip`, or None when it already holds `max` (0: no cap, nothing counted).
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<AddressSlot> {
        if max == 0 {
            return Some(AddressSlot(None));
        }
        let key = clustercred_api::gate::limit_key(ip);
        let mut counts = match self.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let count = counts.entry(key).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Some((self.clone(), key))))
    }
}

struct AddressSlot(Option<(Arc<AddressCounts>, IpAddr)>);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some((counts, key)) = self.0.take() else {
            return;
        };
        let mut counts = match counts.counts.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        // Entries go when their last connection does, so the map holds only addresses with connections.
        if let Some(n) = counts.get_mut(&key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }
}
