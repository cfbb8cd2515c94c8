//! One AlloyDB instance's endpoint: TLS 1.3 with a client certificate chained to the cluster CA, the
//! metadata exchange when the certificate was asked for with it, then the PostgreSQL protocol relayed to the
//! instance's backend. Who may connect, and as whom, is the [`Gatekeeper`]'s to decide; this module moves
//! bytes and enforces the protocol's shape and bounds.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use clustercred_proto::google::cloud::alloydb::connectors::v1::metadata_exchange_request::AuthType as WireAuthType;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::mdx;
use crate::pgwire::{self, Startup};

/// The port the connectors dial.
pub const PORT: u16 = 5433;

/// Time a client has for each step before it speaks PostgreSQL (handshake, metadata exchange, startup).
const STEP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time the backend has to accept a connection.
const BACKEND_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceInfo {
    /// `projects/P/locations/L/clusters/C/instances/I`.
    pub name: String,
    /// `projects/P/locations/L/clusters/C`.
    pub cluster: String,
}

/// A client certificate the gatekeeper accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Admission {
    /// Whom the certificate was issued to.
    pub principal: String,
    pub serial_hex: String,
    /// The client asked for the metadata exchange when it got the certificate.
    pub metadata_exchange: bool,
}

/// An IAM login the gatekeeper accepted: the database user the token's principal logs in as, and how to
/// reach the backend as that user (TLS with a client certificate the backend trusts).
#[derive(Clone)]
pub struct IamLogin {
    pub principal: String,
    pub database_user: String,
    pub backend_tls: BackendTls,
}

#[derive(Clone)]
pub struct BackendTls {
    pub config: Arc<rustls::ClientConfig>,
    pub server_name: ServerName<'static>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthType {
    /// The database's own login (a password, or whatever pg_hba asks).
    DbNative,
    /// The access token in the metadata exchange stands in for the password.
    AutoIam,
}

impl AuthType {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::DbNative => "DB_NATIVE",
            AuthType::AutoIam => "AUTO_IAM",
        }
    }
}

/// Where a backend listens, from its `postgres://` URL, and the CA its server certificate is checked
/// against for IAM logins (`?sslrootcert=PATH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendAddr {
    pub host: String,
    pub port: u16,
    pub root_cert: Option<std::path::PathBuf>,
}

impl BackendAddr {
    pub fn from_url(url: &str) -> Result<Self, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("backend URL: {e}"))?;
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or("the backend URL names no host")?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let root_cert = parsed
            .query_pairs()
            .find(|(k, _)| k == "sslrootcert")
            .map(|(_, v)| std::path::PathBuf::from(v.as_ref()));
        Ok(BackendAddr {
            host,
            port: parsed.port().unwrap_or(5432),
            root_cert,
        })
    }

    /// TLS to this backend as the holder of `chain_pem`/`key_pem` (a client certificate the backend trusts
    /// through `pg_hba` `cert`), checking the backend's certificate against `sslrootcert`.
    pub fn client_tls(&self, chain_pem: &str, key_pem: &str) -> Result<BackendTls, String> {
        let root = self.root_cert.as_ref().ok_or(
            "the instance's backend URL has no sslrootcert: IAM logins need TLS to a backend whose \
             certificate can be checked",
        )?;
        let roots = std::fs::read_to_string(root)
            .map_err(|e| format!("backend sslrootcert {}: {e}", root.display()))?;
        let config = client_tls(&roots, chain_pem, key_pem)
            .map_err(|e| format!("TLS to the backend: {e}"))?;
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|e| format!("backend host {}: {e}", self.host))?;
        Ok(BackendTls {
            config,
            server_name,
        })
    }
}

/// A TLS client that trusts only `roots_pem` and presents `chain_pem` with `key_pem`: the endpoint towards
/// a backend for IAM logins, and `clustercred alloydb proxy` towards an endpoint (which accepts TLS 1.3 only).
pub fn client_tls(
    roots_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("trusted CA: {e}"))?)
            .map_err(|e| format!("trusted CA: {e}"))?;
    }
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("client certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("client key: {e}"))?;
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .map_err(|e| format!("client certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// What happened on one connection, for the log and the audit trail.
#[derive(Clone, Debug)]
pub struct ConnectionSummary {
    pub peer: SocketAddr,
    pub principal: Option<String>,
    pub serial_hex: Option<String>,
    pub auth_type: Option<AuthType>,
    pub database_user: Option<String>,
    pub database: Option<String>,
    pub bytes_from_client: u64,
    pub bytes_to_client: u64,
    pub duration: Duration,
    /// Why the connection was refused or ended in error; `None` for a session that ran and closed.
    pub refusal: Option<String>,
    /// What kind of failure `refusal` is (the step the connection was at when it ended).
    pub failure: Failure,
    /// The session reached the backend.
    pub relayed: bool,
}

/// The kind of a connection's failure, by the step it happened at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No client certificate of the cluster CA (the handshake failed): nobody known.
    Unauthenticated,
    /// A known certificate or token without the right (unknown, revoked, no permission, wrong user).
    PermissionDenied,
    /// A malformed metadata exchange or startup message.
    InvalidArgument,
    /// The backend could not be reached, or the connection broke.
    Unavailable,
    /// The server is shutting down.
    ShuttingDown,
}

/// Decides who may connect and as whom.
#[async_trait]
pub trait Gatekeeper: Send + Sync + 'static {
    /// The client certificate (already verified against the cluster CA and its validity) by serial: known
    /// to this cluster's CA and not revoked. `Err` carries the reason, for the log.
    async fn admit(&self, instance: &InstanceInfo, serial_hex: &str) -> Result<Admission, String>;
    /// An AUTO_IAM metadata exchange: the token's principal, its right to connect and log in, its IAM
    /// database user. `Err` carries the reason the client is told.
    async fn iam_login(
        &self,
        instance: &InstanceInfo,
        admission: &Admission,
        token: &str,
    ) -> Result<IamLogin, String>;
    /// Whether `user` is an IAM database user of the instance's cluster: a client that did not use the
    /// metadata exchange then logs in with its access token as the password.
    async fn is_iam_user(&self, instance: &InstanceInfo, user: &str) -> bool;
    /// Whether to serve a new connection from `peer` at all (before any TLS work).
    fn accept(&self, peer: SocketAddr) -> bool;
    /// A connection ended (or was refused).
    async fn closed(&self, instance: &InstanceInfo, summary: ConnectionSummary);
}

pub struct EndpointSpec {
    pub instance: InstanceInfo,
    pub addresses: Vec<SocketAddr>,
    pub tls: Arc<rustls::ServerConfig>,
    pub backend: Option<BackendAddr>,
    pub max_connections: usize,
}

/// A TLS 1.3 server configuration that requires a client certificate chained to `ca_pem`.
pub fn server_tls(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| format!("cluster CA: {e}"))?)
            .map_err(|e| format!("cluster CA: {e}"))?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| format!("client verifier: {e}"))?;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("server certificate: {e}"))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| format!("server key: {e}"))?;
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| format!("server certificate: {e}"))?;
    Ok(Arc::new(config))
}

/// A running endpoint. Dropping it without [`Endpoint::stop`] aborts its tasks: connections are cut without
/// a TLS close_notify.
pub struct Endpoint {
    pub addresses: Vec<SocketAddr>,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

struct Shared {
    instance: InstanceInfo,
    acceptor: tokio_rustls::TlsAcceptor,
    backend: Option<BackendAddr>,
    gate: Arc<dyn Gatekeeper>,
}

impl Endpoint {
    /// Binds every address (all or nothing) and starts accepting.
    pub async fn start(spec: EndpointSpec, gate: Arc<dyn Gatekeeper>) -> io::Result<Endpoint> {
        let mut listeners = Vec::new();
        for addr in &spec.addresses {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            // Replicas on one host share the instance's address: the kernel spreads connections over them.
            socket.set_reuseaddr(true)?;
            socket.set_reuseport(true)?;
            socket.bind(*addr)?;
            listeners.push(socket.listen(1024)?);
        }
        let addresses = listeners
            .iter()
            .map(TcpListener::local_addr)
            .collect::<io::Result<Vec<_>>>()?;
        let (stop, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            instance: spec.instance,
            acceptor: tokio_rustls::TlsAcceptor::from(spec.tls),
            backend: spec.backend,
            gate,
        });
        let max_connections = spec.max_connections.max(1);
        let slots = Arc::new(Semaphore::new(max_connections));
        let mut tasks = JoinSet::new();
        for listener in listeners {
            tasks.spawn(accept_loop(
                listener,
                shared.clone(),
                slots.clone(),
                stop.subscribe(),
            ));
        }
        Ok(Endpoint {
            addresses,
            stop,
            tasks,
        })
    }

    /// Stops accepting and closes every open connection (TLS close_notify to the client, the backend
    /// connection closed), waiting for them to finish.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    let mut connections = JoinSet::new();
    let mut last_full_warning: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            // Reap finished connections as they end, so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let (tcp, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "accepting an instance connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if !shared.gate.accept(peer) {
                    continue;
                }
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    // Once per ten seconds at most: a flood must not become a flood of log lines.
                    if last_full_warning.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(10)) {
                        last_full_warning = Some(Instant::now());
                        tracing::warn!(instance = %shared.instance.name, %peer,
                            "instance connection limit reached; new connections are closed");
                    }
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (shared, stop) = (shared.clone(), stop.clone());
                connections.spawn(async move {
                    let summary = serve(tcp, peer, &shared, stop).await;
                    shared.gate.closed(&shared.instance, summary).await;
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Byte counts shared between a stream wrapper and the summary.
#[derive(Default)]
struct Counters {
    read: AtomicU64,
    written: AtomicU64,
}

struct Counted<S> {
    inner: S,
    counters: Arc<Counters>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let poll = Pin::new(&mut this.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        this.counters.read.fetch_add(n as u64, Ordering::Relaxed);
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let poll = Pin::new(&mut this.inner).poll_write(cx, data);
        if let Poll::Ready(Ok(n)) = &poll {
            this.counters
                .written
                .fetch_add(*n as u64, Ordering::Relaxed);
        }
        poll
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

async fn step<T, E: std::fmt::Display>(
    what: &str,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(STEP_TIMEOUT, f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: timed out")),
    }
}

async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    mut stop: watch::Receiver<bool>,
) -> ConnectionSummary {
    let started = Instant::now();
    let counters = Arc::new(Counters::default());
    let mut summary = ConnectionSummary {
        peer,
        principal: None,
        serial_hex: None,
        auth_type: None,
        database_user: None,
        database: None,
        bytes_from_client: 0,
        bytes_to_client: 0,
        duration: Duration::ZERO,
        refusal: None,
        failure: Failure::Unauthenticated,
        relayed: false,
    };
    let client = Counted {
        inner: tcp,
        counters: counters.clone(),
    };
    // Before the relay a stop just drops the connection (nothing has reached the backend); a session in its
    // relay is closed by the relay itself, cleanly.
    let relaying = std::sync::atomic::AtomicBool::new(false);
    let session_stop = stop.clone();
    let stopped_early = async {
        let _ = stop.changed().await;
        if relaying.load(Ordering::Acquire) {
            std::future::pending::<()>().await;
        }
    };
    let result = tokio::select! {
        r = session(client, shared, &mut summary, session_stop, &relaying) => r,
        _ = stopped_early => {
            summary.failure = Failure::ShuttingDown;
            Err("closed: the server is shutting down".to_string())
        }
    };
    summary.refusal = result.err();
    summary.bytes_from_client = counters.read.load(Ordering::Relaxed);
    summary.bytes_to_client = counters.written.load(Ordering::Relaxed);
    summary.duration = started.elapsed();
    summary
}

/// One connection, up to its end. Every refusal closes the connection before anything reaches the backend.
async fn session(
    client: Counted<TcpStream>,
    shared: &Shared,
    summary: &mut ConnectionSummary,
    mut stop: watch::Receiver<bool>,
    relaying: &std::sync::atomic::AtomicBool,
) -> Result<(), String> {
    let mut tls = step("TLS handshake", shared.acceptor.accept(client)).await?;
    let serial = {
        let (_, conn) = tls.get_ref();
        let leaf = conn
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or("no client certificate")?;
        let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| format!("client certificate: {e}"))?;
        // Whom the cluster CA issued it to, for the record of a refusal before admission.
        summary.principal = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string);
        hex::encode(cert.raw_serial())
    };
    summary.serial_hex = Some(serial.clone());
    summary.failure = Failure::PermissionDenied;
    let admission = match shared.gate.admit(&shared.instance, &serial).await {
        Ok(a) => a,
        Err(reason) => {
            let _ = tls.shutdown().await;
            return Err(reason);
        }
    };
    summary.principal = Some(admission.principal.clone());

    let mut login = None;
    if admission.metadata_exchange {
        summary.failure = Failure::InvalidArgument;
        let request = match step("metadata exchange", mdx::read_request(&mut tls)).await {
            Ok(r) => r,
            Err(reason) => return Err(refuse_mdx(&mut tls, reason).await),
        };
        let auth_type = if request.auth_type == WireAuthType::AutoIam as i32 {
            AuthType::AutoIam
        } else {
            AuthType::DbNative
        };
        summary.auth_type = Some(auth_type);
        summary.failure = Failure::PermissionDenied;
        if auth_type == AuthType::AutoIam {
            match shared
                .gate
                .iam_login(&shared.instance, &admission, &request.oauth2_token)
                .await
            {
                Ok(l) => login = Some(l),
                Err(reason) => return Err(refuse_mdx(&mut tls, reason).await),
            }
        }
        summary.failure = Failure::Unavailable;
        if shared.backend.is_none() {
            return Err(refuse_mdx(&mut tls, no_backend(&shared.instance)).await);
        }
        step("metadata exchange", tls.write_all(&mdx::response(Ok(())))).await?;
    } else {
        summary.auth_type = Some(AuthType::DbNative);
    }

    summary.failure = Failure::InvalidArgument;
    let startup = match step("startup", pgwire::read_startup(&mut tls)).await {
        Ok(s) => s,
        Err(reason) => {
            let _ = tls.write_all(&pgwire::fatal("08P01", &reason)).await;
            let _ = tls.shutdown().await;
            return Err(reason);
        }
    };
    let packet = match startup {
        Startup::Login {
            packet,
            user,
            database,
        } => {
            summary.database_user = Some(user.clone());
            summary.database = database;
            summary.failure = Failure::PermissionDenied;
            // Without the metadata exchange (asyncpg), an IAM user's password is its access token: ask for
            // it in clear text (inside this TLS) and log in as for AUTO_IAM.
            if login.is_none()
                && !admission.metadata_exchange
                && shared.gate.is_iam_user(&shared.instance, &user).await
            {
                summary.auth_type = Some(AuthType::AutoIam);
                let token = step("password", password(&mut tls)).await?;
                match shared
                    .gate
                    .iam_login(&shared.instance, &admission, &token)
                    .await
                {
                    Ok(l) => login = Some(l),
                    Err(reason) => {
                        let _ = tls
                            .write_all(&pgwire::fatal(
                                "28P01",
                                &format!("IAM authentication failed for user {user:?}: {reason}"),
                            ))
                            .await;
                        let _ = tls.shutdown().await;
                        return Err(reason);
                    }
                }
            }
            if let Some(login) = &login
                && login.database_user != user
            {
                let reason = format!(
                    "IAM authentication as {:?} refused: {} logs in as {:?}",
                    user, login.principal, login.database_user
                );
                let _ = tls.write_all(&pgwire::fatal("28000", &reason)).await;
                let _ = tls.shutdown().await;
                return Err(reason);
            }
            packet
        }
        Startup::Cancel { packet } => packet,
    };
    summary.failure = Failure::Unavailable;
    let Some(backend) = &shared.backend else {
        let reason = no_backend(&shared.instance);
        let _ = tls.write_all(&pgwire::fatal("08006", &reason)).await;
        let _ = tls.shutdown().await;
        return Err(reason);
    };
    let mut upstream = match connect_backend(backend, login.as_ref()).await {
        Ok(u) => u,
        Err(reason) => {
            let _ = tls
                .write_all(&pgwire::fatal(
                    "08006",
                    "the instance's database is unavailable",
                ))
                .await;
            let _ = tls.shutdown().await;
            return Err(reason);
        }
    };
    upstream
        .write_all(&packet)
        .await
        .map_err(|e| format!("backend: {e}"))?;
    summary.relayed = true;
    relaying.store(true, Ordering::Release);
    let relayed = tokio::select! {
        r = tokio::io::copy_bidirectional(&mut tls, &mut upstream) => r,
        _ = stop.changed() => {
            // Shutting down: close_notify to the client, the backend connection closed.
            let _ = tls.shutdown().await;
            let _ = upstream.shutdown().await;
            summary.failure = Failure::ShuttingDown;
            return Err("closed: the server is shutting down".to_string());
        }
    };
    match relayed {
        Ok(_) => Ok(()),
        // A peer that vanishes mid-session is how many sessions end; not a refusal.
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::BrokenPipe
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(format!("relay: {e}")),
    }
}

/// Asks for a clear-text password (AuthenticationCleartextPassword) and reads the PasswordMessage.
async fn password<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<String, String> {
    use tokio::io::AsyncReadExt;
    stream
        .write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3])
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 5];
    stream
        .read_exact(&mut head)
        .await
        .map_err(|e| e.to_string())?;
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if head[0] != b'p' || !(5..=mdx::MAX_FRAME).contains(&len) {
        return Err("expected a password message".into());
    }
    let mut body = vec![0u8; len - 4];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|e| e.to_string())?;
    match body.split_last() {
        Some((0, text)) => {
            String::from_utf8(text.to_vec()).map_err(|_| "the password is not UTF-8".into())
        }
        _ => Err("the password message is not terminated".into()),
    }
}

fn no_backend(instance: &InstanceInfo) -> String {
    format!(
        "instance {} has no backend database (serve --alloydb-backend or --alloydb-backend-for)",
        instance.name
    )
}

async fn refuse_mdx<S: AsyncWrite + Unpin>(tls: &mut S, reason: String) -> String {
    let _ = tls.write_all(&mdx::response(Err(&reason))).await;
    let _ = tls.shutdown().await;
    reason
}

async fn connect_backend(
    backend: &BackendAddr,
    login: Option<&IamLogin>,
) -> Result<Box<dyn Io>, String> {
    let connect = async {
        let mut tcp = TcpStream::connect((backend.host.as_str(), backend.port))
            .await
            .map_err(|e| {
                format!(
                    "connecting to the backend {}:{}: {e}",
                    backend.host, backend.port
                )
            })?;
        let _ = tcp.set_nodelay(true);
        let Some(login) = login else {
            return Ok(Box::new(tcp) as Box<dyn Io>);
        };
        // An IAM login reaches the backend as its database user by that user's client certificate.
        if !pgwire::request_ssl(&mut tcp)
            .await
            .map_err(|e| format!("backend SSL request: {e}"))?
        {
            return Err("the backend refused TLS; IAM logins need it (ssl = on)".to_string());
        }
        let tls = tokio_rustls::TlsConnector::from(login.backend_tls.config.clone())
            .connect(login.backend_tls.server_name.clone(), tcp)
            .await
            .map_err(|e| format!("backend TLS: {e}"))?;
        Ok(Box::new(tls) as Box<dyn Io>)
    };
    match tokio::time::timeout(BACKEND_TIMEOUT, connect).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "connecting to the backend {}:{}: timed out",
            backend.host, backend.port
        )),
    }
}
