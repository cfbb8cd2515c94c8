//! External identity providers: bearer tokens from configured OIDC issuers. Each issuer is configured under
//! an id, names the audience its tokens must carry and the claim that names the subject. Its identities are
//! federated principals, named apart from every local identity:
//! `principal://clustercred/issuers/ID/subject/SUBJECT`, members of `principalSet://clustercred/issuers/ID/*`
//! and, when a groups claim is configured, `principalSet://clustercred/issuers/ID/group/GROUP`.
//! Keys come from the issuer's JWKS (its `jwks_uri`, or discovery at `<issuer>/.well-known/openid-configuration`),
//! cached for an hour and refetched early when a token names an unknown `kid`, at most once per `min_refetch`.
//! A fetch holds only its own issuer's fetch lock, and a failed fetch is remembered for `min_refetch`, so one
//! slow or dead issuer costs its own tokens one bounded wait and nobody else anything.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration as StdDuration, Instant};

use clustercred_authority::{Jwks, TokenError, verify_jwt};
use serde::Deserialize;
use serde_json::Value;
use time::{Duration, OffsetDateTime};
use tonic::{Code, Status};

use crate::context::{FEDERATED_NAMESPACE, Principal, PrincipalKind};
use crate::errors::with_reason;

const MAX_DOCUMENT_BYTES: usize = 64 * 1024;
const CACHE_TTL: StdDuration = StdDuration::from_secs(3600);

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrustedIssuer {
    /// Names the issuer in federated members (`principal://clustercred/issuers/ID/...`): lowercase letters,
    /// digits and hyphens, starting with a letter, at most 63.
    pub id: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// The `aud` its tokens must carry for clustercred.
    pub audience: String,
    /// The claim naming the subject (`sub` by default). When it is `email`, `email_verified` must be true.
    #[serde(default = "default_claim")]
    pub principal_claim: String,
    /// A claim listing the identity's groups (strings), each a `principalSet://.../group/G` member.
    #[serde(default)]
    pub groups_claim: Option<String>,
    /// Where its keys are; discovered from the issuer when left out.
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

fn default_claim() -> String {
    "sub".into()
}

#[derive(Default)]
struct IssuerState {
    keys: Option<(Arc<Jwks>, Instant)>,
    /// The last refetch forced by an unknown key id: those are rate limited.
    forced: Option<Instant>,
    /// The last failed fetch: no other is tried until `min_refetch` has passed.
    failed: Option<Instant>,
}

struct IssuerSlot {
    state: Mutex<IssuerState>,
    /// Held across one fetch, so concurrent logins wait for it instead of fetching again.
    fetching: tokio::sync::Mutex<()>,
}

pub struct OidcVerifier {
    issuers: Vec<TrustedIssuer>,
    http: reqwest::Client,
    slots: HashMap<String, IssuerSlot>,
    min_refetch: StdDuration,
    leeway: Duration,
}

/// A claim value usable in a member name: printable ASCII, no spaces, at most 256 bytes.
fn member_safe(v: &str) -> bool {
    !v.is_empty() && v.len() <= 256 && v.chars().all(|c| c.is_ascii_graphic())
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
        for (n, i) in issuers.iter().enumerate() {
            if i.issuer.is_empty() || i.audience.is_empty() {
                return Err("every trusted issuer needs issuer and audience".into());
            }
            if !super::policy::valid_issuer_id(&i.id) {
                return Err(format!(
                    "the id {:?} of {} must be lowercase letters, digits and hyphens, starting with a letter, at most 63",
                    i.id, i.issuer
                ));
            }
            if issuers[..n]
                .iter()
                .any(|o| o.id == i.id || o.issuer == i.issuer)
            {
                return Err(format!(
                    "issuer {} or id {} is configured twice",
                    i.issuer, i.id
                ));
            }
        }
        let slots = issuers
            .iter()
            .map(|i| {
                (
                    i.issuer.clone(),
                    IssuerSlot {
                        state: Mutex::new(IssuerState::default()),
                        fetching: tokio::sync::Mutex::new(()),
                    },
                )
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(StdDuration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(OidcVerifier {
            issuers,
            http,
            slots,
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
        let slot = self
            .slots
            .get(&cfg.issuer)
            .ok_or_else(|| unauthenticated("bearer token is not from a trusted issuer"))?;
        let unreachable =
            || Status::unavailable("the token's issuer cannot be reached for its keys");
        // Decides from the state alone whether to fetch; never held across an await.
        let cached = |forcing: bool| -> Result<Option<Arc<Jwks>>, Status> {
            let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            let held = state.keys.clone();
            let fresh = held
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() < CACHE_TTL);
            if state.failed.is_some_and(|t| t.elapsed() < self.min_refetch) {
                return held.map(|(k, _)| Some(k)).ok_or_else(unreachable);
            }
            if fresh && !forcing {
                return Ok(held.map(|(k, _)| k));
            }
            if fresh && forcing {
                if state.forced.is_some_and(|t| t.elapsed() < self.min_refetch) {
                    return Ok(held.map(|(k, _)| k));
                }
                state.forced = Some(Instant::now());
            }
            Ok(None)
        };
        if let Some(keys) = cached(refresh)? {
            return Ok(keys);
        }
        let started = Instant::now();
        let _fetching = slot.fetching.lock().await;
        // Someone else may have fetched (or failed) while this call waited.
        {
            let state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((keys, at)) = &state.keys
                && *at >= started
            {
                return Ok(keys.clone());
            }
            if state.failed.is_some_and(|t| t >= started) {
                return state
                    .keys
                    .as_ref()
                    .map(|(k, _)| k.clone())
                    .ok_or_else(unreachable);
            }
        }
        let fetched = self.fetch(cfg).await;
        let mut state = slot.state.lock().unwrap_or_else(|e| e.into_inner());
        match fetched {
            Ok(jwks) => {
                let jwks = Arc::new(jwks);
                state.keys = Some((jwks.clone(), Instant::now()));
                state.failed = None;
                Ok(jwks)
            }
            Err(e) => {
                tracing::warn!(issuer = %cfg.issuer, error = %e, "fetching the issuer's keys failed");
                state.failed = Some(Instant::now());
                // Keys we already hold stay usable while the issuer is unreachable.
                state
                    .keys
                    .as_ref()
                    .map(|(k, _)| k.clone())
                    .ok_or_else(unreachable)
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
        let subject = claims
            .get(&cfg.principal_claim)
            .and_then(Value::as_str)
            .filter(|v| member_safe(v))
            .ok_or_else(|| {
                unauthenticated(format!(
                    "invalid bearer token: no usable {} claim",
                    cfg.principal_claim
                ))
            })?;
        // An email names someone only once the issuer has verified it.
        if cfg.principal_claim == "email" {
            let verified = match claims.get("email_verified") {
                Some(Value::Bool(b)) => *b,
                Some(Value::String(s)) => s == "true",
                _ => false,
            };
            if !verified {
                return Err(unauthenticated(
                    "invalid bearer token: the email claim is not verified (email_verified)",
                ));
            }
        }
        let set = format!("principalSet://{FEDERATED_NAMESPACE}/issuers/{}", cfg.id);
        let mut sets = vec![format!("{set}/*")];
        if let Some(claim) = &cfg.groups_claim
            && let Some(Value::Array(groups)) = claims.get(claim)
        {
            sets.extend(
                groups
                    .iter()
                    .filter_map(Value::as_str)
                    .filter(|g| member_safe(g))
                    .take(100)
                    .map(|g| format!("{set}/group/{g}")),
            );
        }
        Ok(Principal {
            id: subject.to_string(),
            kind: PrincipalKind::Federated {
                issuer: cfg.id.clone(),
                sets,
            },
            scopes: None,
        })
    }
}
