//! Assembles the server: store, bootstrap, API services, gRPC health and reflection, REST transcoding and
//! the OpenID discovery documents, all on one listener.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use clustercred_api::alloydb::{AlloyDb, AlloyDbV1, AlloyDbV1alpha, AlloyDbV1beta};
use clustercred_api::edgecontainer::EdgeContainerService;
use clustercred_api::gate::Gate;
use clustercred_api::gkemulticloud::AttachedClustersService;
use clustercred_api::iam::access::IamAccess;
use clustercred_api::iam::oidc::{OidcVerifier, TrustedIssuer};
use clustercred_api::iam::projects::ProjectsService;
use clustercred_api::iam::service_accounts::IamService;
use clustercred_api::methods::MethodTable;
use clustercred_api::operations::OperationsService;
use clustercred_api::signing::SigningKeys;
use clustercred_api::{ClientAddress, Clock, Ctx, RequestMeta, SystemClock};
use clustercred_store::{CachedStore, Store};
use clustercred_transport::{ApiMount, RestGateway};
use tokio::net::TcpListener;

use crate::bootstrap;
use crate::config::ServeConfig;

mod instances;
mod listener;
pub use listener::ConnectionLimits;

/// A bound, ready server.
pub struct Server {
    pub addr: SocketAddr,
    pub admin_token_path: PathBuf,
    pub issuer: String,
    /// Where clients find the CA of the automatic TLS certificate.
    pub tls_ca_file: Option<PathBuf>,
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
    store: Arc<dyn Store>,
    ctx: Arc<Ctx>,
    endpoints: instances::EndpointOptions,
    issuance_retention: Option<time::Duration>,
    /// How often the token-signing key set is re-read (the cache staleness bound).
    key_refresh: std::time::Duration,
}

/// The REST mounts: each API under its prefix, recognised by Host too.
pub fn mounts() -> Vec<ApiMount> {
    let mount = |prefix: &str, packages: &[&str]| ApiMount {
        prefix: prefix.to_string(),
        packages: packages.iter().map(|p| p.to_string()).collect(),
        host_markers: vec![format!("{prefix}.")],
    };
    // The three cluster APIs each serve google.longrunning for their operations.
    vec![
        mount("alloydb", &["google.cloud.alloydb.", "google.longrunning."]),
        mount(
            "edgecontainer",
            &["google.cloud.edgecontainer.", "google.longrunning."],
        ),
        mount(
            "gkemulticloud",
            &["google.cloud.gkemulticloud.", "google.longrunning."],
        ),
        mount("iam", &["google.iam.admin."]),
        mount("cloudresourcemanager", &["google.cloudresourcemanager."]),
    ]
}

impl Server {
    /// The API adapters' shared context (store, access control, settings), for what runs beside the API on
    /// the same state: instance endpoints checking IAM database logins
    /// (`clustercred_api::alloydb::authorize_iam_login`), and tests.
    pub fn ctx(&self) -> Arc<Ctx> {
        self.ctx.clone()
    }

    /// Opens the data directory (bootstrapping it on first start) and binds the listener.
    pub async fn bind(config: &ServeConfig) -> Result<Server> {
        let backends = config
            .alloydb_backends()
            .context("reading --alloydb-backend / --alloydb-backend-for")?;
        let database = config.database.as_deref();
        crate::database::require_shared_master_key(database, config.master_key_file.as_deref())?;
        bootstrap::data_dir(&config.data_dir, !crate::database::is_postgres(database)?)?;
        let store =
            crate::database::open(&config.data_dir, database, true, config.store_timeout()).await?;
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let now = clock.now().unix_timestamp();
        let admin_token_path = bootstrap::admin(store.as_ref(), &config.data_dir, now).await?;
        bootstrap::root_policy(store.as_ref(), now).await?;
        let master = Arc::new(bootstrap::master_key(
            &config.data_dir,
            config.master_key_file.as_deref(),
        )?);
        let signing = Arc::new(SigningKeys::new(
            bootstrap::signing_keys(store.as_ref(), &master, now).await?,
        ));

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("binding {}", config.listen))?;
        let addr = listener.local_addr()?;
        let tls = crate::tls::setup(
            &crate::tls::TlsOptions {
                cert: config.tls_cert.as_deref(),
                key: config.tls_key.as_deref(),
                auto: config.tls_auto,
                extra_names: &config.tls_sans,
                client_ca: config.tls_client_ca.as_deref(),
            },
            store.as_ref(),
            &master,
            &config.data_dir,
            addr,
        )
        .await?;
        let (tls, tls_ca_file) = match tls {
            Some(t) => (Some(t.acceptor), t.ca_file),
            None => (None, None),
        };
        let settings = config.settings(addr);
        let issuer = settings.token_issuer.clone();

        // Requests read through the cache; bootstrap above and the shutdown path use the store itself.
        let dyn_store: Arc<dyn Store> = Arc::new(CachedStore::new(
            store.clone(),
            std::time::Duration::from_millis(config.cache_staleness_ms),
        ));
        let mut access = IamAccess::new(
            dyn_store.clone(),
            signing.clone(),
            clock.clone(),
            settings.token_issuer.clone(),
            settings.token_leeway,
        );
        if let Some(path) = &config.trusted_issuers {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?;
            let issuers: Vec<TrustedIssuer> = serde_json::from_str(&text)
                .with_context(|| format!("parsing {}", path.display()))?;
            tracing::info!(count = issuers.len(), "trusting external OIDC issuers");
            let oidc = OidcVerifier::new(
                issuers,
                std::time::Duration::from_secs(config.oidc_min_refetch_secs),
                settings.token_leeway,
            )
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            access = access.with_oidc(oidc);
        }
        let access = Arc::new(access);
        let ctx = Arc::new(Ctx::new(
            dyn_store,
            clock,
            settings,
            signing.clone(),
            access,
            master,
        ));

        // Database users become roles in each cluster's backend database.
        let alloydb = AlloyDb::new(ctx.clone()).with_database_users(Arc::new(
            crate::database_users::BackendDatabaseUsers::new(backends.clone()),
        ));
        let (health, health_service) = tonic_health::server::health_reporter();
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(clustercred_proto::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        // gRPC messages get the same size limit as REST bodies.
        let limit = config.max_request_bytes;
        let routes = tonic::service::Routes::new(
            AlloyDbV1(alloydb.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            AlloyDbV1beta(alloydb.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            AlloyDbV1alpha(alloydb)
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            EdgeContainerService::new(ctx.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            AttachedClustersService::new(ctx.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            OperationsService::new(ctx.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            IamService::new(ctx.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(
            ProjectsService::new(ctx.clone())
                .into_server()
                .max_decoding_message_size(limit),
        )
        .add_service(health_service)
        .add_service(reflection);
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;

        let pool = prost_reflect::DescriptorPool::decode(clustercred_proto::FILE_DESCRIPTOR_SET)
            .context("loading the proto descriptors")?;
        let gateway = RestGateway::new(pool.clone(), mounts(), Vec::new())
            .context("reading the HTTP rules")?;

        let openapi = gateway.openapi_document("clustercred", env!("CARGO_PKG_VERSION"));
        let discovery = serde_json::json!({
            "issuer": issuer,
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["ES256"],
        });
        let request_timeout = std::time::Duration::from_secs(config.request_timeout_secs.max(1));
        let extra = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || async move { Json(discovery) }),
            )
            // Every key whose tokens are accepted, so relying parties verify tokens signed before a rotation.
            .route(
                "/.well-known/jwks.json",
                get(|State(ctx): State<Arc<Ctx>>| async move {
                    Json(ctx.signing.current().jwks().clone())
                }),
            )
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", {
                let readiness = Arc::new(Readiness {
                    // Free space matters where the database is: the data directory, with SQLite.
                    data_dir: config.database.is_none().then(|| config.data_dir.clone()),
                    ..Readiness::default()
                });
                get(move |State(ctx): State<Arc<Ctx>>| readyz(ctx, readiness.clone()))
            })
            .route("/openapi.json", get(move || async move { Json(openapi) }))
            .route("/oauth2/token", post(token_endpoint))
            // These routes are not behind the gateway's deadline below: give them the same one.
            .route_layer(axum::middleware::from_fn_with_state(
                RouteDeadline {
                    limit: request_timeout,
                    pool: pool.clone(),
                },
                route_deadline,
            ))
            .with_state(ctx.clone());
        // Every gRPC and transcoded REST call passes the access gate; a served method without a rule in the
        // access table stops the start here.
        let gate = Gate::new(
            ctx.clone(),
            MethodTable::standard(),
            &pool,
            config.max_request_bytes,
        )
        .map_err(|e| anyhow::anyhow!("the access table does not cover the served methods: {e}"))?;
        let app = clustercred_transport::router(
            gate.layer(routes.prepare()),
            gateway
                .with_body_limit(config.max_request_bytes)
                .with_admission(std::sync::Arc::new(gate.rest_admission())),
            extra,
            request_timeout,
        )
        .layer(axum::middleware::map_request(client_address));
        Ok(Server {
            addr,
            admin_token_path,
            issuer,
            tls_ca_file,
            listener,
            tls,
            app,
            limits: config.connection_limits(),
            store,
            ctx,
            endpoints: instances::EndpointOptions {
                backends,
                data_dir: config.data_dir.clone(),
                max_connections: config.alloydb_max_connections,
                port: config.alloydb_instance_port,
            },
            issuance_retention: config.issuance_retention(),
            key_refresh: std::time::Duration::from_millis(config.cache_staleness_ms.max(1)),
        })
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        let ctx = self.ctx.clone();
        let retention = self.issuance_retention;
        let purge = tokio::spawn(async move {
            // Every ten minutes: request ids past their retention, then issuance and token records expired
            // longer than theirs.
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(600));
            loop {
                tick.tick().await;
                let now = ctx.now();
                let before = (now - ctx.settings.idempotency_retention).unix_timestamp();
                purge_in_batches("old request ids", |limit| {
                    ctx.store.purge_idempotency(before, limit)
                })
                .await;
                if let Some(retention) = retention {
                    let expired_before = (now - retention).unix_timestamp();
                    purge_in_batches("expired issuance records", |limit| {
                        ctx.store.purge_expired_issuances(expired_before, limit)
                    })
                    .await;
                }
            }
        });
        // Repeated refusals are written as counted events when their window closes.
        let ctx = self.ctx.clone();
        let window = self.ctx.settings.limits.refusal_window;
        let refusals = tokio::spawn(async move {
            let mut tick = tokio::time::interval(window);
            tick.tick().await;
            loop {
                tick.tick().await;
                ctx.flush_refusals().await;
            }
        });
        // The audit chain's head is anchored by a signed checkpoint each minute it moved, and at shutdown.
        let now = self.ctx.now().unix_timestamp();
        let anchor = Arc::new(clustercred_store::HeadAnchor::new(
            bootstrap::audit_key(self.ctx.store.as_ref(), &self.ctx.master, now).await?,
        ));
        let (ctx, head) = (self.ctx.clone(), anchor.clone());
        let anchoring = tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                anchor_head(&ctx, &head).await;
            }
        });
        // A key rotation made elsewhere (the CLI, another replica) is picked up within the cache staleness
        // bound, and a replaced key leaves the set when its overlap ends, without a restart. One small query
        // per interval.
        let (ctx, every) = (self.ctx.clone(), self.key_refresh);
        let key_reload = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            // Logged when it starts failing and when it recovers, not at every interval of an outage.
            let mut failing = false;
            loop {
                tick.tick().await;
                let now = ctx.now().unix_timestamp();
                let reloaded = bootstrap::reload_signing_keys(
                    ctx.store.as_ref(),
                    &ctx.master,
                    &ctx.signing,
                    now,
                )
                .await;
                match reloaded {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("re-reading the token-signing keys works again");
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "re-reading the token-signing keys failed; keeping the current set");
                    }
                    Ok(_) | Err(_) => {}
                }
            }
        });
        let (stop_endpoints, stopped) = tokio::sync::watch::channel(false);
        let endpoints = tokio::spawn(instances::run(self.ctx.clone(), self.endpoints, stopped));
        let result =
            listener::serve(self.listener, self.app, self.tls, self.limits, shutdown).await;
        let _ = stop_endpoints.send(true);
        let _ = endpoints.await;
        key_reload.abort();
        purge.abort();
        refusals.abort();
        anchoring.abort();
        self.ctx.flush_refusals().await;
        anchor_head(&self.ctx, &anchor).await;
        self.store.close().await;
        result.context("serving")
    }
}

/// Runs `batch` (one short transaction deleting at most `limit` rows, oldest first) until a batch comes back
/// short, with a pause between batches, so a backlog never holds the writer for long.
async fn purge_in_batches<F, Fut>(what: &str, mut batch: F)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = clustercred_store::Result<u64>>,
{
    let limit = clustercred_api::context::PURGE_BATCH;
    let mut total = 0u64;
    loop {
        match batch(limit).await {
            Ok(n) => {
                total += n;
                if n < u64::from(limit) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "purging {what} failed");
                break;
            }
        }
    }
    if total > 0 {
        tracing::info!(rows = total, "purged {what}");
    }
}

async fn anchor_head(ctx: &Ctx, anchor: &clustercred_store::HeadAnchor) {
    let now = i64::try_from(ctx.now().unix_timestamp_nanos()).unwrap_or(i64::MAX);
    if let Err(e) = anchor.anchor(ctx.store.as_ref(), now).await {
        tracing::error!(error = %e, "writing an audit checkpoint failed");
    }
}

/// Makes the peer address visible to the API layer (audit events) on both gRPC and REST.
async fn client_address(mut req: axum::extract::Request) -> axum::extract::Request {
    if let Some(ConnectInfo(addr)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() {
        req.extensions_mut().insert(ClientAddress(addr));
    }
    req
}

#[derive(Clone)]
struct RouteDeadline {
    limit: std::time::Duration,
    pool: prost_reflect::DescriptorPool,
}

/// The request deadline for the routes outside the gateway (token endpoint, discovery, health), body reading
/// included. Past it the work is dropped and the client gets 503 in OAuth's error shape on the token
/// endpoint (what OAuth clients parse), 504 in Google's error shape elsewhere.
async fn route_deadline(
    State(deadline): State<RouteDeadline>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let token_endpoint = req.uri().path() == "/oauth2/token";
    match tokio::time::timeout(deadline.limit, next.run(req)).await {
        Ok(response) => response,
        Err(_) if token_endpoint => {
            let mut response = (
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                Json(serde_json::json!({
                    "error": "temporarily_unavailable",
                    "error_description": "the request took too long",
                })),
            )
                .into_response();
            response.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(_) => clustercred_transport::status_to_http(
            &tonic::Status::deadline_exceeded("the request took too long"),
            &deadline.pool,
        ),
    }
}

/// `POST /oauth2/token`: the JWT-bearer grant for service-account key files.
async fn token_endpoint(
    State(ctx): State<Arc<Ctx>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    let meta = RequestMeta {
        method: "oauth2/token".into(),
        client_address: addr.to_string(),
        user_agent: headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.chars().take(256).collect())
            .unwrap_or_default(),
    };
    let reply = clustercred_api::iam::oauth::token_endpoint(&ctx, &body, &meta).await;
    let status = axum::http::StatusCode::from_u16(reply.http_status)
        .unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    let mut response = (status, Json(reply.body)).into_response();
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `clustercred serve`: bind, announce, serve until SIGINT or SIGTERM.
pub async fn run(config: ServeConfig) -> Result<()> {
    let server = Server::bind(&config).await?;
    tracing::info!(address = %server.addr, issuer = %server.issuer, admin_token = %server.admin_token_path.display(),
        "clustercred serving gRPC and REST");
    eprintln!("admin bearer token: {}", server.admin_token_path.display());
    if let Some(ca) = &server.tls_ca_file {
        eprintln!(
            "TLS: clients trust the server CA in {} (e.g. GRPC_DEFAULT_SSL_ROOTS_FILE_PATH)",
            ca.display()
        );
    }
    // Scripts and tests wait for this line on stdout.
    println!("listening on {}", server.addr);
    server.serve(shutdown_signal()).await
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

/// The last readiness probe and its time; one probe runs at a time.
#[derive(Default)]
struct Readiness {
    /// Where the SQLite database lives, whose free space is part of readiness.
    data_dir: Option<PathBuf>,
    last: std::sync::Mutex<Option<(std::time::Instant, Result<(), String>)>>,
    probe: tokio::sync::Mutex<()>,
}

impl Readiness {
    fn fresh(&self) -> Option<Result<(), String>> {
        self.last
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .filter(|(at, _)| at.elapsed() < std::time::Duration::from_secs(1))
            .map(|(_, r)| r)
    }

    async fn check(&self, store: &dyn Store) -> Result<(), String> {
        if let Some(r) = self.fresh() {
            return r;
        }
        let _probe = self.probe.lock().await;
        if let Some(r) = self.fresh() {
            return r;
        }
        let r = match self.data_dir.as_deref().map(free_bytes) {
            // A small write can still fit in pages SQLite already has, so space is checked on its own.
            Some(Ok(free)) if free < MIN_FREE_BYTES => Err(format!(
                "the file system of the data directory is full ({free} bytes free)"
            )),
            Some(Err(e)) => Err(format!("reading the data directory's free space: {e}")),
            _ => match tokio::time::timeout(
                std::time::Duration::from_secs(2),
                store.next_counter("readiness_probe"),
            )
            .await
            {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("the store did not answer within 2 s".to_string()),
            },
        };
        if let Ok(mut l) = self.last.lock() {
            *l = Some((std::time::Instant::now(), r.clone()));
        }
        r
    }
}

/// Free space below which the SQLite data directory counts as full.
const MIN_FREE_BYTES: u64 = 1 << 20;

fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let st = rustix::fs::statvfs(dir)?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Ready when the store takes a write now: a small write transaction (a counter), so a full disk, a read-only
/// database or an unreachable PostgreSQL each show, with the store's reason. Callers share one probe a second:
/// the endpoint cannot be used to make writes.
async fn readyz(ctx: Arc<Ctx>, readiness: Arc<Readiness>) -> (axum::http::StatusCode, String) {
    match readiness.check(ctx.store.as_ref()).await {
        Ok(()) => (axum::http::StatusCode::OK, "ready\n".into()),
        Err(why) => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}
