//! `clustercred alloydb proxy`: a local plain PostgreSQL port in front of an AlloyDB instance endpoint, in
//! the spirit of the AlloyDB Auth Proxy. It gets a client certificate from the admin API (REST), renews it
//! before it expires, and carries every local connection over the same mTLS and metadata exchange the
//! connectors use, so `psql` and any PostgreSQL client work unchanged.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use clustercred_authority::{GeneratedKeyAlgorithm, generate_key_pair};
use clustercred_dataplane::{mdx, pgwire};
use clustercred_proto::google::cloud::alloydb::connectors::v1::MetadataExchangeRequest;
use clustercred_proto::google::cloud::alloydb::connectors::v1::metadata_exchange_request::AuthType;
use clustercred_proto::google::cloud::alloydb::connectors::v1::metadata_exchange_response::ResponseCode;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

#[derive(Args, Clone, Debug)]
pub struct ProxyArgs {
    /// The instance: `projects/P/locations/L/clusters/C/instances/I`.
    pub instance: String,
    /// Local address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub address: IpAddr,
    /// Local port to listen on (0 picks one, printed at start).
    #[arg(long, default_value_t = 5432)]
    pub port: u16,
    /// The clustercred server (admin API), e.g. `http://127.0.0.1:8080` or `https://...`.
    #[arg(long, env = "CLUSTERCRED_URL", default_value = "http://127.0.0.1:8080")]
    pub api: String,
    /// A file holding the bearer token to call the admin API with (also `CLUSTERCRED_TOKEN`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// A CA certificate (PEM) to trust for an `https://` admin API (e.g. DATA_DIR/tls-ca.pem of --tls-auto).
    #[arg(long)]
    pub api_ca_file: Option<PathBuf>,
    /// Log in with IAM database authentication: the token stands in for the password (AUTO_IAM).
    #[arg(long)]
    pub auto_iam_authn: bool,
    /// Port of the instance endpoint (the connectors' 5433 unless the server was told otherwise).
    #[arg(long, default_value_t = 5433)]
    pub instance_port: u16,
}

/// What a connection needs: the TLS client configuration with the current certificate and where to dial.
struct Session {
    tls: Arc<rustls::ClientConfig>,
    ip: IpAddr,
    not_after: time::OffsetDateTime,
}

struct Proxy {
    args: ProxyArgs,
    token: String,
    http: reqwest::Client,
    session: RwLock<Arc<Session>>,
}

fn token(args: &ProxyArgs) -> Result<String> {
    let token = match &args.token_file {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?
        }
        None => std::env::var("CLUSTERCRED_TOKEN")
            .context("give --token-file or set CLUSTERCRED_TOKEN")?,
    };
    let token = token.trim().to_string();
    if token.is_empty() {
        bail!("the token is empty");
    }
    Ok(token)
}

struct Api<'a> {
    http: &'a reqwest::Client,
    token: &'a str,
    args: &'a ProxyArgs,
}

impl Api<'_> {
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<serde_json::Value> {
        let response = request
            .bearer_auth(self.token)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .context("calling the admin API")?;
        let status = response.status();
        let body: serde_json::Value = response
            .json()
            .await
            .context("reading the admin API's answer")?;
        if !status.is_success() {
            bail!(
                "the admin API answered {status}: {}",
                body["error"]["message"].as_str().unwrap_or("")
            );
        }
        Ok(body)
    }

    /// A fresh key, a certificate for it and the instance's address.
    async fn refresh(&self) -> Result<Session> {
        let base = self.args.api.trim_end_matches('/');
        let instance = &self.args.instance;
        let cluster = instance
            .rsplit_once("/instances/")
            .map(|(c, _)| c)
            .context("the instance must be projects/P/locations/L/clusters/C/instances/I")?;
        let info = self
            .call(
                self.http
                    .get(format!("{base}/alloydb/v1/{instance}/connectionInfo")),
            )
            .await?;
        let ip: IpAddr = info["ipAddress"]
            .as_str()
            .unwrap_or_default()
            .parse()
            .context("the instance has no usable ipAddress")?;
        let key = generate_key_pair(GeneratedKeyAlgorithm::EcdsaP256)?;
        let cert = self
            .call(
                self.http
                    .post(format!(
                        "{base}/alloydb/v1/{cluster}:generateClientCertificate"
                    ))
                    .json(&serde_json::json!({
                        "publicKey": key.public_key.to_pem(),
                        "certDuration": "3600s",
                        "useMetadataExchange": true,
                    })),
            )
            .await?;
        let chain: String = cert["pemCertificateChain"]
            .as_array()
            .context("no certificate chain in the answer")?
            .iter()
            .filter_map(|c| c.as_str())
            .collect();
        let leaf = CertificateDer::pem_slice_iter(chain.as_bytes())
            .next()
            .context("an empty certificate chain")?
            .context("parsing the certificate chain")?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
        let not_after = parsed.validity().not_after.to_datetime();
        let tls = clustercred_dataplane::endpoint::client_tls(
            cert["caCert"].as_str().unwrap_or_default(),
            &chain,
            &key.private_key_pem,
        )
        .map_err(anyhow::Error::msg)?;
        Ok(Session { tls, ip, not_after })
    }
}

impl Proxy {
    async fn refresh(&self) -> Result<Session> {
        Api {
            http: &self.http,
            token: &self.token,
            args: &self.args,
        }
        .refresh()
        .await
    }

    fn current(&self) -> Arc<Session> {
        self.session
            .read()
            .map(|s| s.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// One local connection: its startup packet (declining SSL locally), then the instance over mTLS.
    async fn serve(&self, mut local: TcpStream) -> Result<()> {
        let startup = pgwire::read_startup(&mut local).await?;
        let packet = match startup {
            pgwire::Startup::Login { packet, .. } | pgwire::Startup::Cancel { packet } => packet,
        };
        let session = self.current();
        let tcp = TcpStream::connect((session.ip, self.args.instance_port))
            .await
            .with_context(|| format!("dialling {}:{}", session.ip, self.args.instance_port))?;
        let _ = tcp.set_nodelay(true);
        let mut remote = tokio_rustls::TlsConnector::from(session.tls.clone())
            .connect(ServerName::IpAddress(session.ip.into()), tcp)
            .await
            .context("TLS to the instance")?;
        let request = MetadataExchangeRequest {
            user_agent: format!("clustercred-proxy/{}", env!("CARGO_PKG_VERSION")),
            auth_type: if self.args.auto_iam_authn {
                AuthType::AutoIam as i32
            } else {
                AuthType::DbNative as i32
            },
            oauth2_token: self.token.clone(),
        };
        remote.write_all(&mdx::request(&request)).await?;
        let reply = mdx::read_response(&mut remote)
            .await
            .context("reading the metadata exchange answer")?;
        if reply.response_code != ResponseCode::Ok as i32 {
            let message = format!("the instance refused the connection: {}", reply.error);
            let _ = local.write_all(&pgwire::fatal("28000", &message)).await;
            bail!(message);
        }
        remote.write_all(&packet).await?;
        let _ = tokio::io::copy_bidirectional(&mut local, &mut remote).await;
        Ok(())
    }
}

/// Runs the proxy until the process ends; `bound` learns the local address once it listens.
pub async fn run(
    args: ProxyArgs,
    bound: Option<tokio::sync::oneshot::Sender<SocketAddr>>,
) -> Result<()> {
    let mut http = reqwest::Client::builder();
    if let Some(path) = &args.api_ca_file {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        http = http.add_root_certificate(reqwest::Certificate::from_pem(&pem)?);
    }
    let (http, token) = (http.build()?, token(&args)?);
    let first = Api {
        http: &http,
        token: &token,
        args: &args,
    }
    .refresh()
    .await?;
    let proxy = Proxy {
        token,
        http,
        args,
        session: RwLock::new(Arc::new(first)),
    };
    let proxy = Arc::new(proxy);
    let listener = TcpListener::bind((proxy.args.address, proxy.args.port))
        .await
        .with_context(|| format!("binding {}:{}", proxy.args.address, proxy.args.port))?;
    let local = listener.local_addr()?;
    println!("proxying {} on {local}", proxy.args.instance);
    if let Some(tx) = bound {
        let _ = tx.send(local);
    }
    // Renew at two thirds of the certificate's life; on failure retry soon, the current one still works.
    let renewer = proxy.clone();
    tokio::spawn(async move {
        loop {
            let left = renewer.current().not_after - time::OffsetDateTime::now_utc();
            let wait = (left.whole_seconds().max(0) / 3).max(5);
            tokio::time::sleep(Duration::from_secs(wait as u64)).await;
            match renewer.refresh().await {
                Ok(session) => {
                    if let Ok(mut s) = renewer.session.write() {
                        *s = Arc::new(session);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "renewing the client certificate failed"),
            }
        }
    });
    loop {
        let (stream, peer) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let proxy = proxy.clone();
        tokio::spawn(async move {
            if let Err(e) = proxy.serve(stream).await {
                tracing::warn!(%peer, error = %format!("{e:#}"), "proxied connection failed");
            }
        });
    }
}
