//! Creates what the flows need: an AlloyDB cluster, an Edge cluster, an attached cluster whose JWKS holds the
//! public half of an RSA-2048 key we keep, and pools of distinct client keys and CSRs.

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::json;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

pub const PROJECT: &str = "bench-project";
pub const LOCATION: &str = "projects/bench-project/locations/us-central1";

#[derive(Serialize, Deserialize)]
pub struct State {
    pub alloydb_cluster: String,
    pub edge_cluster: String,
    pub attached_cluster: String,
    pub issuer: String,
    pub audience: String,
    pub kid: String,
    /// PKCS#8 PEM of the RSA-2048 key that signs subject tokens.
    pub subject_key_pem: String,
    /// SPKI PEMs.
    pub p256_keys: Vec<String>,
    pub rsa_keys: Vec<String>,
    /// P-256 CSRs (PEM) for cfssl.
    pub csrs: Vec<String>,
}

impl State {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).context("parsing the state file (run `setup` first)")
    }
}

pub fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_string())
}

fn rsa_jwks(key: &rcgen::KeyPair, kid: &str) -> anyhow::Result<serde_json::Value> {
    // SPKI DER of the public half.
    let spki_der = rcgen::PublicKeyData::subject_public_key_info(key);
    let (_, spki) = SubjectPublicKeyInfo::from_der(&spki_der).context("parsing our own SPKI")?;
    let Ok(PublicKey::RSA(rsa)) = spki.parsed() else {
        bail!("subject key is not RSA");
    };
    // JWK integers are unsigned big-endian without leading zeros.
    let trim = |b: &[u8]| {
        let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
        URL_SAFE_NO_PAD.encode(&b[start..])
    };
    Ok(json!({"keys": [{
        "kty": "RSA", "alg": "RS256", "use": "sig", "kid": kid,
        "n": trim(rsa.modulus), "e": trim(rsa.exponent),
    }]}))
}

async fn create(
    http: &reqwest::Client,
    token: &str,
    url: String,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let resp = http
        .post(&url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    // 409: left over from an earlier setup against the same data directory.
    if !status.is_success() && status.as_u16() != 409 {
        bail!("POST {url}: {status}: {text}");
    }
    Ok(())
}

pub async fn setup(url: &str, token_file: &Path, state: &Path, pool: usize) -> anyhow::Result<()> {
    let base = url.trim_end_matches('/');
    let token = read_token(token_file)?;
    let http = reqwest::Client::new();

    eprintln!("generating {pool} P-256 keys, {pool} RSA-2048 keys, {pool} CSRs...");
    let mut p256_keys = Vec::with_capacity(pool);
    let mut rsa_keys = Vec::with_capacity(pool);
    let mut csrs = Vec::with_capacity(pool);
    for i in 0..pool {
        let ec = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        p256_keys.push(ec.public_key_pem());
        let rsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
        rsa_keys.push(rsa.public_key_pem());
        let csr_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::default();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, format!("bench-client-{i}"));
        csrs.push(params.serialize_request(&csr_key)?.pem()?);
    }
    let subject_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)?;
    let kid = "bench-rs256".to_string();
    let issuer = "https://bench-cluster.example.test".to_string();
    let jwks = serde_json::to_vec(&rsa_jwks(&subject_key, &kid)?)?;

    create(
        &http,
        &token,
        format!("{base}/alloydb/v1/{LOCATION}/clusters?clusterId=bench"),
        json!({"displayName": "bench"}),
    )
    .await?;
    create(
        &http,
        &token,
        format!("{base}/edgecontainer/v1/{LOCATION}/clusters?clusterId=bench-edge"),
        json!({}),
    )
    .await?;
    create(
        &http,
        &token,
        format!(
            "{base}/gkemulticloud/v1/{LOCATION}/attachedClusters?attachedClusterId=bench-attached"
        ),
        json!({
            "oidcConfig": {"issuerUrl": issuer, "jwks": STANDARD.encode(&jwks)},
            "platformVersion": "1.30.0-gke.1", "distribution": "generic",
            "fleet": {"project": format!("projects/{PROJECT}")},
        }),
    )
    .await?;

    let out = State {
        alloydb_cluster: format!("{LOCATION}/clusters/bench"),
        edge_cluster: format!("{LOCATION}/clusters/bench-edge"),
        attached_cluster: format!("{LOCATION}/attachedClusters/bench-attached"),
        issuer,
        audience: format!("{PROJECT}.svc.id.goog"),
        kid,
        subject_key_pem: subject_key.serialize_pem(),
        p256_keys,
        rsa_keys,
        csrs,
    };
    std::fs::write(state, serde_json::to_vec_pretty(&out)?)
        .with_context(|| format!("writing {}", state.display()))?;
    eprintln!("clusters created; state in {}", state.display());
    Ok(())
}
