//! Transport: gRPC (h2c) and REST/JSON on one listener. REST is transcoded from the `google.api.http`
//! annotations in the compiled descriptors and dispatched through the same gRPC services in process, so both
//! share one path through authentication, validation and logging.

mod errors;
mod openapi;
mod template;
mod transcode;

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;

use axum::body::Body;
use http::{Request, Response};
use tower::ServiceExt;

pub use errors::{error_body, http_status, invalid_field, status_name, status_to_http};
pub use template::{RequestPath, Template, TemplateError};
pub use transcode::{
    Admission, ApiMount, DEFAULT_BODY_LIMIT, GatewayError, METHOD_HEADER, RestGateway, RouteInfo,
};

fn is_grpc(req: &Request<Body>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The one-port application: `extra` routes first (exact paths), then gRPC for `application/grpc*` requests,
/// then the REST gateway for everything else. gRPC calls and transcoded REST calls go through the same `grpc`
/// service (the gRPC services behind the access gate). Each request gets `timeout` to complete; past it the
/// client gets DEADLINE_EXCEEDED (gRPC) or 504 (REST) and the work is dropped.
pub fn router<S>(
    grpc: S,
    gateway: RestGateway,
    extra: axum::Router,
    timeout: std::time::Duration,
) -> axum::Router
where
    S: tower::Service<
            Request<tonic::body::Body>,
            Response = Response<tonic::body::Body>,
            Error = Infallible,
        > + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    let fallback = tower::service_fn(move |mut req: Request<Body>| {
        let grpc = grpc.clone();
        let gateway = gateway.clone();
        async move {
            let grpc_call = is_grpc(&req);
            let pool = gateway.pool().clone();
            let work = async move {
                if grpc_call {
                    // gRPC names its method in the path; whatever a client put in the header is replaced.
                    match http::HeaderValue::from_str(req.uri().path().trim_start_matches('/')) {
                        Ok(m) => req.headers_mut().insert(METHOD_HEADER, m),
                        Err(_) => req.headers_mut().remove(METHOD_HEADER),
                    };
                    match grpc.oneshot(req.map(tonic::body::Body::new)).await {
                        Ok(r) => r.map(Body::new),
                        Err(never) => match never {},
                    }
                } else {
                    gateway.handle(grpc, req).await
                }
            };
            let response: Response<Body> = match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => {
                    let status = tonic::Status::deadline_exceeded("the request took too long");
                    if grpc_call {
                        status.into_http::<Body>()
                    } else {
                        status_to_http(&status, &pool)
                    }
                }
            };
            Ok::<_, Infallible>(response)
        }
    });
    extra.fallback_service(fallback)
}

/// Serves HTTP/1.1 and HTTP/2 (h2c) on `listener` until `shutdown` resolves; the peer address is available
/// to handlers as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

#[cfg(test)]
mod tests;

/// Serves the same application over TLS (HTTP/2 via ALPN, and HTTP/1.1) until `shutdown` resolves. A client
/// that does not finish its handshake within ten seconds is dropped, so slow handshakes cannot pile up.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    acceptor: tokio_rustls::TlsAcceptor,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use hyper_util::server::conn::auto::Builder;

    let shutdown = std::pin::pin!(shutdown);
    let mut shutdown = shutdown;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let acceptor = acceptor.clone();
        let app = app.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(
                move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    let app = app.clone();
                    async move { app.oneshot(req.map(Body::new)).await }
                },
            );
            let builder = Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
    let _ = stop_tx.send(true);
    Ok(())
}
