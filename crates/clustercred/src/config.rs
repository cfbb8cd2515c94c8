//! `clustercred serve` settings, from flags or `CLUSTERCRED_*` environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use clustercred_api::Settings;
use clustercred_authority::GeneratedKeyAlgorithm;

use crate::server::ConnectionLimits;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OfflineKeyAlgorithm {
    EcdsaP256,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Args)]
pub struct ServeConfig {
    /// Address for gRPC (h2c) and REST (HTTP/1.1 and HTTP/2) together. Port 0 picks a free port.
    #[arg(long, env = "CLUSTERCRED_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Directory for the SQLite database and the first-start admin token (created with mode 0700).
    #[arg(
        long,
        env = "CLUSTERCRED_DATA_DIR",
        default_value = "./clustercred-data"
    )]
    pub data_dir: PathBuf,

    /// A PostgreSQL database (`postgres://user@host:port/db`) instead of SQLite in the data directory. Any
    /// number of replicas may share it; each still has its own data directory (admin token, TLS files), and all
    /// need the same master key (`--master-key-file` or `CLUSTERCRED_MASTER_KEY`).
    #[arg(long, env = "CLUSTERCRED_DATABASE")]
    pub database: Option<String>,

    /// Seconds a store call waits for a database connection, a lock or a statement before the request fails
    /// with UNAVAILABLE: the pool's acquire timeout on both backends, PostgreSQL's `statement_timeout`,
    /// SQLite's busy timeout.
    #[arg(long = "store-timeout", env = "CLUSTERCRED_STORE_TIMEOUT", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub store_timeout_secs: u64,

    /// Days issuance and token records are kept after their certificate or token expired; older ones are
    /// deleted by the background purge. 0 keeps them forever. (The audit log is never pruned.)
    #[arg(
        long = "issuance-retention-days",
        env = "CLUSTERCRED_ISSUANCE_RETENTION_DAYS",
        default_value_t = 30
    )]
    pub issuance_retention_days: u32,

    /// Public base URL of this server: the `iss` of minted tokens and the base of
    /// /.well-known/openid-configuration. Default: http://<listen address>.
    #[arg(long, env = "CLUSTERCRED_ISSUER_URL")]
    pub issuer_url: Option<String>,

    /// The key-encryption key for private keys at rest: a file holding 32 bytes in base64. Also
    /// `CLUSTERCRED_MASTER_KEY`. Without either, one is generated into the data directory.
    #[arg(long)]
    pub master_key_file: Option<PathBuf>,

    /// Serve TLS with this certificate chain (PEM), with --tls-key.
    #[arg(long, env = "CLUSTERCRED_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, env = "CLUSTERCRED_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate from a local server CA kept in the data directory (its certificate is
    /// written to DIR/tls-ca.pem for clients to trust, e.g. GRPC_DEFAULT_SSL_ROOTS_FILE_PATH).
    #[arg(long, env = "CLUSTERCRED_TLS_AUTO", conflicts_with_all = ["tls_cert", "tls_key"])]
    pub tls_auto: bool,
    /// Extra DNS names or IP addresses for the automatic certificate (localhost, 127.0.0.1, ::1 and the listen
    /// address are always in it).
    #[arg(long = "tls-san", env = "CLUSTERCRED_TLS_SANS", value_delimiter = ',')]
    pub tls_sans: Vec<String>,
    /// Require client certificates chained to this CA (PEM).
    #[arg(long, env = "CLUSTERCRED_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,

    /// Key algorithm of Edge offline credentials.
    #[arg(
        long,
        env = "CLUSTERCRED_OFFLINE_KEY_ALGORITHM",
        value_enum,
        default_value = "ecdsa-p256"
    )]
    pub offline_key_algorithm: OfflineKeyAlgorithm,

    /// Lifetime of Edge offline credentials, in seconds (default 12 hours).
    #[arg(long, env = "CLUSTERCRED_OFFLINE_CREDENTIAL_LIFETIME", default_value_t = 12 * 3600,
          value_parser = clap::value_parser!(u32).range(300..=30 * 86400))]
    pub offline_credential_lifetime_secs: u32,

    /// Lifetime of agent access tokens, in seconds (at most 3600).
    #[arg(long, env = "CLUSTERCRED_AGENT_TOKEN_LIFETIME", default_value_t = 3600,
          value_parser = clap::value_parser!(u32).range(60..=3600))]
    pub agent_token_lifetime_secs: u32,

    /// Audiences accepted in attached clusters' subject tokens besides `<project>.svc.id.goog` (repeatable).
    #[arg(
        long = "agent-audience",
        env = "CLUSTERCRED_AGENT_AUDIENCES",
        value_delimiter = ','
    )]
    pub agent_audiences: Vec<String>,

    /// Default Kubernetes API endpoint reported for Edge clusters created without one.
    #[arg(long, env = "CLUSTERCRED_EDGE_ENDPOINT", default_value = "127.0.0.1")]
    pub edge_endpoint: String,

    /// Default Kubernetes API port reported for Edge clusters created without one.
    #[arg(long, env = "CLUSTERCRED_EDGE_PORT", default_value_t = 6443)]
    pub edge_port: u16,

    /// A JSON file listing external OIDC issuers whose bearer tokens are trusted:
    /// `[{"issuer": "...", "audience": "...", "principal_claim": "email", "principal_kind": "user",
    /// "jwks_uri": "... (optional: discovered)"}]`.
    #[arg(long, env = "CLUSTERCRED_TRUSTED_ISSUERS")]
    pub trusted_issuers: Option<PathBuf>,

    /// Least time between two fetches of an issuer's keys, however many unknown key ids arrive.
    #[arg(long, env = "CLUSTERCRED_OIDC_MIN_REFETCH", default_value_t = 30)]
    pub oidc_min_refetch_secs: u64,

    /// Longest time a change made outside this process (the CLI, another replica) stays unseen by its caches
    /// of policies, principals, tokens, resources and CAs. Changes made through this process are seen at once.
    #[arg(long, env = "CLUSTERCRED_CACHE_STALENESS_MS", default_value_t = 1000)]
    pub cache_staleness_ms: u64,

    /// Requests per second from one client address (IPv6: its /64), checked before authentication, and the
    /// burst above it; 0 turns the limit off (behind a load balancer that hides client addresses).
    #[arg(long, env = "CLUSTERCRED_RATE_PER_ADDRESS", default_value_t = 1000.0)]
    pub rate_per_address: f64,
    #[arg(long, env = "CLUSTERCRED_BURST_PER_ADDRESS", default_value_t = 2000.0)]
    pub burst_per_address: f64,

    /// Refused calls per second one address may make (and the burst) before it is refused without any
    /// authentication work.
    #[arg(
        long,
        env = "CLUSTERCRED_FAILURES_PER_ADDRESS",
        default_value_t = 100.0
    )]
    pub failures_per_address: f64,
    #[arg(
        long,
        env = "CLUSTERCRED_FAILURE_BURST_PER_ADDRESS",
        default_value_t = 1000.0
    )]
    pub failure_burst_per_address: f64,

    /// Calls without any credential per second, all addresses together (and the burst).
    #[arg(long, env = "CLUSTERCRED_ANONYMOUS_RATE", default_value_t = 100.0)]
    pub anonymous_rate: f64,
    #[arg(long, env = "CLUSTERCRED_ANONYMOUS_BURST", default_value_t = 200.0)]
    pub anonymous_burst: f64,

    /// Seconds over which repeated refusals are counted into one audit event.
    #[arg(long, env = "CLUSTERCRED_AUDIT_AGGREGATE_SECS", default_value_t = 10)]
    pub audit_aggregate_secs: u64,

    /// Sustained calls per second allowed to one principal (and the burst above it).
    #[arg(long, env = "CLUSTERCRED_RATE_PER_PRINCIPAL", default_value_t = 100.0)]
    pub rate_per_principal: f64,
    #[arg(long, env = "CLUSTERCRED_BURST_PER_PRINCIPAL", default_value_t = 200.0)]
    pub burst_per_principal: f64,

    /// Sustained credential issuances per second for one cluster (and the burst above it).
    #[arg(long, env = "CLUSTERCRED_RATE_PER_CLUSTER", default_value_t = 500.0)]
    pub rate_per_cluster: f64,
    #[arg(long, env = "CLUSTERCRED_BURST_PER_CLUSTER", default_value_t = 1000.0)]
    pub burst_per_cluster: f64,

    /// Signing operations in flight at once; beyond, calls get RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "CLUSTERCRED_MAX_CONCURRENT_SIGNING", default_value_t = 64)]
    pub max_concurrent_signing: usize,

    /// Largest request body (REST) or message (gRPC) accepted, in bytes.
    #[arg(long, env = "CLUSTERCRED_MAX_REQUEST_BYTES", default_value_t = 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Time a request may take before it is answered DEADLINE_EXCEEDED / 504.
    #[arg(long, env = "CLUSTERCRED_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Connections served at once; beyond it a new connection is accepted and closed at once.
    #[arg(long, env = "CLUSTERCRED_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections from one client address (IPv6: its /64); 0 turns the cap off (behind a load balancer).
    #[arg(
        long,
        env = "CLUSTERCRED_MAX_CONNECTIONS_PER_ADDRESS",
        default_value_t = 1024
    )]
    pub max_connections_per_address: usize,
    /// Time a client has to send an HTTP/1 request's headers (also the longest quiet time between two
    /// requests on an HTTP/1 keep-alive connection).
    #[arg(long, env = "CLUSTERCRED_HEADER_READ_TIMEOUT", default_value_t = 20)]
    pub header_read_timeout_secs: u64,
    /// A connection with no request in flight for this long is closed (HTTP/2 after a GOAWAY).
    #[arg(long, env = "CLUSTERCRED_IDLE_TIMEOUT", default_value_t = 60)]
    pub idle_timeout_secs: u64,
    /// Time a client has to finish its TLS handshake.
    #[arg(long, env = "CLUSTERCRED_TLS_HANDSHAKE_TIMEOUT", default_value_t = 10)]
    pub tls_handshake_timeout_secs: u64,

    /// The PostgreSQL database behind every AlloyDB instance (`postgres://user@host:port/db`, a user that may
    /// create roles): instance endpoints relay to it and the Users API manages its roles.
    #[arg(long, env = "CLUSTERCRED_ALLOYDB_BACKEND")]
    pub alloydb_backend: Option<String>,
    /// A backend for one cluster or instance instead of the default: `NAME=postgres://...`, NAME a full
    /// resource name (repeatable; an instance's own entry wins over its cluster's).
    #[arg(
        long = "alloydb-backend-for",
        env = "CLUSTERCRED_ALLOYDB_BACKENDS",
        value_delimiter = ','
    )]
    pub alloydb_backend_for: Vec<String>,
    /// Address handed out to the first AlloyDB instance created (later ones count up from it); its endpoint
    /// listens there on port 5433.
    #[arg(
        long,
        env = "CLUSTERCRED_ALLOYDB_FIRST_ADDRESS",
        default_value = "127.1.0.1"
    )]
    pub alloydb_first_address: std::net::Ipv4Addr,

    /// Connections open at once to one AlloyDB instance endpoint; beyond it a new one is closed at once.
    #[arg(
        long,
        env = "CLUSTERCRED_ALLOYDB_MAX_CONNECTIONS",
        default_value_t = 256
    )]
    pub alloydb_max_connections: usize,
    /// The port of instance endpoints. The connectors always dial 5433; another port only suits clients
    /// that are told it (`clustercred alloydb proxy --instance-port`).
    #[arg(
        long,
        env = "CLUSTERCRED_ALLOYDB_INSTANCE_PORT",
        default_value_t = 5433
    )]
    pub alloydb_instance_port: u16,

    /// Log format on stderr.
    #[arg(
        long,
        env = "CLUSTERCRED_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
}

impl ServeConfig {
    /// A configuration with every default, for tests.
    pub fn for_data_dir(data_dir: PathBuf) -> Self {
        ServeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir,
            database: None,
            store_timeout_secs: 5,
            issuance_retention_days: 30,
            issuer_url: None,
            master_key_file: None,
            tls_cert: None,
            tls_key: None,
            tls_auto: false,
            tls_sans: Vec::new(),
            tls_client_ca: None,
            offline_key_algorithm: OfflineKeyAlgorithm::EcdsaP256,
            offline_credential_lifetime_secs: 12 * 3600,
            agent_token_lifetime_secs: 3600,
            agent_audiences: Vec::new(),
            edge_endpoint: "127.0.0.1".into(),
            edge_port: 6443,
            trusted_issuers: None,
            oidc_min_refetch_secs: 30,
            cache_staleness_ms: 1000,
            rate_per_address: 1000.0,
            burst_per_address: 2000.0,
            failures_per_address: 100.0,
            failure_burst_per_address: 1000.0,
            anonymous_rate: 100.0,
            anonymous_burst: 200.0,
            audit_aggregate_secs: 10,
            rate_per_principal: 100.0,
            burst_per_principal: 200.0,
            rate_per_cluster: 500.0,
            burst_per_cluster: 1000.0,
            max_concurrent_signing: 64,
            max_request_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            max_connections: 4096,
            max_connections_per_address: 1024,
            header_read_timeout_secs: 20,
            idle_timeout_secs: 60,
            tls_handshake_timeout_secs: 10,
            alloydb_backend: None,
            alloydb_backend_for: Vec::new(),
            alloydb_first_address: std::net::Ipv4Addr::new(127, 1, 0, 1),
            alloydb_max_connections: 256,
            alloydb_instance_port: 5433,
            log_format: LogFormat::Text,
        }
    }

    /// The limits of the accept loop; every timeout is at least a second.
    pub fn connection_limits(&self) -> ConnectionLimits {
        let secs = |s: u64| std::time::Duration::from_secs(s.max(1));
        ConnectionLimits {
            max_connections: self.max_connections.max(1),
            max_per_address: self.max_connections_per_address,
            header_read_timeout: secs(self.header_read_timeout_secs),
            idle_timeout: secs(self.idle_timeout_secs),
            tls_handshake_timeout: secs(self.tls_handshake_timeout_secs),
            drain_timeout: secs(self.request_timeout_secs),
        }
    }

    /// The AlloyDB backend map from `--alloydb-backend` and `--alloydb-backend-for`.
    pub fn alloydb_backends(
        &self,
    ) -> Result<
        clustercred_dataplane::backend::Backends,
        clustercred_dataplane::backend::BackendConfigError,
    > {
        clustercred_dataplane::backend::Backends::new(
            self.alloydb_backend.as_deref(),
            &self.alloydb_backend_for,
        )
    }

    pub fn store_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.store_timeout_secs.max(1))
    }

    /// How long after expiry issuance and token records are kept; `None`: forever.
    pub fn issuance_retention(&self) -> Option<time::Duration> {
        (self.issuance_retention_days > 0)
            .then(|| time::Duration::days(i64::from(self.issuance_retention_days)))
    }

    pub fn tls_enabled(&self) -> bool {
        self.tls_auto || self.tls_cert.is_some()
    }

    pub fn settings(&self, bound: SocketAddr) -> Settings {
        let scheme = if self.tls_enabled() { "https" } else { "http" };
        let issuer = self
            .issuer_url
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{bound}"))
            .trim_end_matches('/')
            .to_string();
        Settings {
            offline_credential_lifetime: time::Duration::seconds(i64::from(
                self.offline_credential_lifetime_secs,
            )),
            offline_key_algorithm: match self.offline_key_algorithm {
                OfflineKeyAlgorithm::EcdsaP256 => GeneratedKeyAlgorithm::EcdsaP256,
                OfflineKeyAlgorithm::Rsa2048 => GeneratedKeyAlgorithm::Rsa2048,
                OfflineKeyAlgorithm::Rsa3072 => GeneratedKeyAlgorithm::Rsa3072,
                OfflineKeyAlgorithm::Rsa4096 => GeneratedKeyAlgorithm::Rsa4096,
            },
            agent_token_lifetime: time::Duration::seconds(i64::from(
                self.agent_token_lifetime_secs,
            )),
            token_issuer: issuer,
            extra_agent_audiences: self
                .agent_audiences
                .iter()
                .filter(|a| !a.is_empty())
                .cloned()
                .collect(),
            edge_default_endpoint: self.edge_endpoint.clone(),
            edge_default_port: i32::from(self.edge_port),
            alloydb_first_address: self.alloydb_first_address,
            limits: clustercred_api::limits::LimitSettings {
                // A rate of 0 turns the per-address limits off.
                per_address: clustercred_api::limits::Rate {
                    per_second: self.rate_per_address.max(0.0),
                    burst: self.burst_per_address.max(1.0),
                },
                failures_per_address: clustercred_api::limits::Rate {
                    per_second: self.failures_per_address.max(0.0),
                    burst: self.failure_burst_per_address.max(1.0),
                },
                anonymous: clustercred_api::limits::Rate {
                    per_second: self.anonymous_rate.max(0.001),
                    burst: self.anonymous_burst.max(1.0),
                },
                refusal_window: std::time::Duration::from_secs(self.audit_aggregate_secs.max(1)),
                per_principal: clustercred_api::limits::Rate {
                    per_second: self.rate_per_principal.max(0.001),
                    burst: self.burst_per_principal.max(1.0),
                },
                per_cluster: clustercred_api::limits::Rate {
                    per_second: self.rate_per_cluster.max(0.001),
                    burst: self.burst_per_cluster.max(1.0),
                },
                max_concurrent_signing: self.max_concurrent_signing.max(1),
                ..Default::default()
            },
            ..Settings::default()
        }
    }
}
