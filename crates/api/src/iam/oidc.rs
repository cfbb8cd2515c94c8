//! External identity providers: bearer tokens from configured OIDC issuers. Each issuer names the audience
//! its tokens must carry and the claim that names the principal. Keys come from the issuer's JWKS (its
//! `jwks_uri`, or discovery at `<issuer>/.well-known/openid-configuration`), cached for an hour and
//! refetched early when a token names an unknown `kid`, at most once per `min_refetch`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant};

use clustercred_authority::{Jwks, TokenError, verify_jwt};
use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tokio::sync::Mutex;
use tonic::{Code, Status};

use crate::context::Principal;
use crate::errors::with_reason;

const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
const CACHE_TTL: StdDuration = StdDuration::from_secs(3600);

#[derive(Clone, Debug, Deserialize)]
pub struct TrustedIssuer {
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry for clustercred.
    pub audience: String,
    /// The claim naming the principal (`email` by default).
    #[serde(default = "default_claim")]
    pub principal_claim: String,
    /// `user` (default) or `serviceAccount`: the member prefix in policies.
    #[serde(default = "default_kind")]
    pub principal_kind: String,
    /// Where its keys are; discovered from the issuer when left out.
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

fn default_claim() -> String {
    "email".into()
}

fn default_kind() -> String {
    "user".into()
}

struct Cached {
    jwks: Arc<Jwks>,
    fetched: Instant,
    /// The last refetch forced by an unknown key id: those are rate limited.
    forced: Option<Instant>,
}

pub struct OidcVerifier {
    issuers: Vec<TrustedIssuer>,
    http: reqwest::Client,
    cache: Mutex<HashMap<String, Cached>>,
    min_refetch: StdDuration,
    leeway: Duration,
}

fn unauthenticated(message: impl Into<String>) -> Status {
    with_reason(Code::Unauthenticated, "ACCESS_TOKEN_INVALID", message)
}

impl OidcVerifier {
    pub fn new(
        issuers: Vec<TrustedIssuer>,
        min_refetch: StdDuration,
        leeway: Duration,
    ) -> Result<Self, String> {
        for i in &issuers {
            if i.issuer.is_empty() || i.audience.is_empty() {
                return Err("every trusted issuer needs issuer and audience".into());
            }
            if !matches!(
                i.principal_kind.as_str(),
                "user" | "serviceAccount" | "group"
            ) {
                return Err(format!(
                    "principal_kind of {} must be user, serviceAccount or group",
                    i.issuer
                ));
            }
        }
        let http = reqwest::Client::builder()
            .timeout(StdDuration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(OidcVerifier {
            issuers,
            http,
            cache: Mutex::new(HashMap::new()),
            min_refetch,
            leeway,
        })
    }

    pub fn trusts(&self, iss: &str) -> Option<&TrustedIssuer> {
        self.issuers.iter().find(|i| i.issuer == iss)
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let mut response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("fetching {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("fetching {url}: HTTP {}", response.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| format!("reading {url}: {e}"))?
        {
            body.extend_from_slice(&chunk);
            if body.len() > MAX_DOCUMENT_BYTES {
                return Err(format!("{url} is larger than {MAX_DOCUMENT_BYTES} bytes"));
            }
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url} is not JSON: {e}"))
    }

    async fn fetch(&self, cfg: &TrustedIssuer) -> Result<Jwks, String> {
        let jwks_uri = match &cfg.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    cfg.issuer.trim_end_matches('/')
                );
                let doc = self.get_json(&url).await?;
                if doc.get("issuer").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
                    return Err(format!(
                        "the discovery document at {url} names another issuer"
                    ));
                }
                doc.get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or("discovery has no jwks_uri")?
                    .to_string()
            }
        };
        let doc = self.get_json(&jwks_uri).await?;
        Jwks::parse(&serde_json::to_vec(&doc).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())
    }

    /// Cached keys; `refresh` forces a refetch unless one happened within `min_refetch`.
    async fn keys(&self, cfg: &TrustedIssuer, refresh: bool) -> Result<Arc<Jwks>, Status> {
        let mut cache = self.cache.lock().await;
        let mut forced = None;
        if let Some(c) = cache.get_mut(&cfg.issuer) {
            let fresh = c.fetched.elapsed() < CACHE_TTL;
            if fresh && !refresh {
                return Ok(c.jwks.clone());
            }
            if fresh && refresh {
                if c.forced.is_some_and(|t| t.elapsed() < self.min_refetch) {
                    return Ok(c.jwks.clone());
                }
                c.forced = Some(Instant::now());
            }
            forced = c.forced;
        }
        match self.fetch(cfg).await {
            Ok(jwks) => {
                let jwks = Arc::new(jwks);
                cache.insert(
                    cfg.issuer.clone(),
                    Cached {
                        jwks: jwks.clone(),
                        fetched: Instant::now(),
                        forced,
                    },
                );
                Ok(jwks)
            }
            Err(e) => {
                tracing::warn!(issuer = %cfg.issuer, error = %e, "fetching the issuer's keys failed");
                // Keys we already hold stay usable while the issuer is unreachable.
                match cache.get(&cfg.issuer) {
                    Some(c) => Ok(c.jwks.clone()),
                    None => Err(Status::unavailable(
                        "the token's issuer cannot be reached for its keys",
                    )),
                }
            }
        }
    }

    pub async fn verify(
        &self,
        cfg: &TrustedIssuer,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<Principal, Status> {
        let keys = self.keys(cfg, false).await?;
        let claims = match verify_jwt(token, &keys, now, self.leeway) {
            Err(TokenError::UnknownKeyId | TokenError::NoMatchingKey) => {
                let keys = self.keys(cfg, true).await?;
                verify_jwt(token, &keys, now, self.leeway)
            }
            other => other,
        }
        .map_err(|e| unauthenticated(format!("invalid bearer token: {e}")))?;
        if claims.get("iss").and_then(Value::as_str) != Some(cfg.issuer.as_str()) {
            return Err(unauthenticated(
                "invalid bearer token: token issuer does not match",
            ));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(a)) => *a == cfg.audience,
            Some(Value::Array(list)) => list
                .iter()
                .any(|a| a.as_str() == Some(cfg.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(unauthenticated(
                "invalid bearer token: token audience is not clustercred's",
            ));
        }
        let id = claims
            .get(&cfg.principal_claim)
            .and_then(Value::as_str)
            .filter(|v| !v.is_empty() && v.len() <= 256 && v.chars().all(|c| c.is_ascii_graphic()))
            .ok_or_else(|| {
                unauthenticated(format!(
                    "invalid bearer token: no usable {} claim",
                    cfg.principal_claim
                ))
            })?;
        Ok(Principal {
            id: id.to_string(),
            kind: cfg.principal_kind.clone(),
        })
    }
}
