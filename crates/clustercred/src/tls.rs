//! TLS for the one listener: given certificate and key files, or an automatic mode that keeps a local server
//! CA (sealed in the store like every key) and issues the server a fresh certificate at each start. Optional
//! client-certificate authentication against a CA file.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clustercred_api::context::ca_key_context;
use clustercred_authority::{
    CaParams, ClusterCa, GeneratedKeyAlgorithm, MasterKey, generate_key_pair,
};
use clustercred_store::{CaRecord, Store};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

/// The store record of the automatic mode's server CA.
const TLS_CA_OWNER: &str = "clustercred:tls-server-ca";
pub const TLS_CA_FILE: &str = "tls-ca.pem";

pub struct TlsSetup {
    pub acceptor: tokio_rustls::TlsAcceptor,
    /// Where clients find the CA to trust (automatic mode).
    pub ca_file: Option<PathBuf>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads or creates the local server CA, and issues this start's server certificate from it.
async fn auto_certificate(
    store: &dyn Store,
    master: &MasterKey,
    dir: &Path,
    listen: SocketAddr,
    extra_names: &[String],
) -> Result<(
    Vec<CertificateDer<'static>>,
    PrivateKeyDer<'static>,
    PathBuf,
)> {
    let now = OffsetDateTime::now_utc();
    let ca = match store.get_ca(TLS_CA_OWNER).await? {
        Some(record) => {
            let key = master.open(&record.key_der, &ca_key_context(TLS_CA_OWNER))?;
            ClusterCa::from_material(&record.cert_pem, &key)?
        }
        None => {
            let (ca, material) = ClusterCa::generate(
                &CaParams {
                    common_name: "clustercred local server CA".into(),
                    organization: Some("clustercred".into()),
                    validity: Duration::days(3650),
                },
                now,
            )?;
            let record = CaRecord {
                owner: TLS_CA_OWNER.into(),
                cert_pem: material.cert_pem.clone(),
                key_der: master.seal(&material.key_pkcs8_der, &ca_key_context(TLS_CA_OWNER))?,
                not_after_unix: ca.not_after().unix_timestamp(),
                create_time_unix: now.unix_timestamp(),
            };
            match store.put_ca(&record).await {
                Ok(()) => ca,
                // Another replica on the same database stored its CA first: use that one.
                Err(clustercred_store::StoreError::AlreadyExists) => {
                    let record = store.get_ca(TLS_CA_OWNER).await?.ok_or_else(|| {
                        anyhow::anyhow!("the TLS server CA vanished while starting")
                    })?;
                    let key = master.open(&record.key_der, &ca_key_context(TLS_CA_OWNER))?;
                    ClusterCa::from_material(&record.cert_pem, &key)?
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    let ca_file = dir.join(TLS_CA_FILE);
    std::fs::write(&ca_file, ca.cert_pem())
        .with_context(|| format!("writing {}", ca_file.display()))?;

    let mut dns = vec!["localhost".to_string()];
    let mut ips: Vec<IpAddr> = vec!["127.0.0.1".parse()?, "::1".parse()?];
    if !listen.ip().is_unspecified() && !ips.contains(&listen.ip()) {
        ips.push(listen.ip());
    }
    for name in extra_names {
        match name.parse::<IpAddr>() {
            Ok(ip) => ips.push(ip),
            Err(_) => dns.push(name.clone()),
        }
    }
    let key = generate_key_pair(GeneratedKeyAlgorithm::EcdsaP256)?;
    let cert = ca.issue_server_certificate(&key.public_key, &dns, &ips, Duration::days(90), now)?;
    let chain = CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
        .chain(CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()))
        .collect::<Result<Vec<_>, _>>()
        .context("reading the issued server certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key.private_key_pem.as_bytes())
        .context("reading the server key")?;
    Ok((chain, key, ca_file))
}

pub struct TlsOptions<'a> {
    pub cert: Option<&'a Path>,
    pub key: Option<&'a Path>,
    pub auto: bool,
    pub extra_names: &'a [String],
    pub client_ca: Option<&'a Path>,
}

pub async fn setup(
    options: &TlsOptions<'_>,
    store: &dyn Store,
    master: &MasterKey,
    dir: &Path,
    listen: SocketAddr,
) -> Result<Option<TlsSetup>> {
    let (chain, key, ca_file) = match (options.cert, options.key, options.auto) {
        (Some(cert), Some(key), false) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("reading {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("reading {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("reading {}", key.display()))?;
            (chain, key, None)
        }
        (None, None, true) => {
            let (chain, key, ca) =
                auto_certificate(store, master, dir, listen, options.extra_names).await?;
            (chain, key, Some(ca))
        }
        (None, None, false) => {
            if options.client_ca.is_some() {
                bail!("--tls-client-ca needs TLS (--tls-cert and --tls-key, or --tls-auto)");
            }
            return Ok(None);
        }
        _ => bail!("give either --tls-cert with --tls-key, or --tls-auto"),
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let builder = match options.client_ca {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .with_context(|| format!("reading {}", path.display()))?
            {
                roots.add(cert.with_context(|| format!("reading {}", path.display()))?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .context("client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .context("the server certificate and key do not fit")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(TlsSetup {
        acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        ca_file,
    }))
}
