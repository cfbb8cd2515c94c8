//! Authentication of bearer tokens and authorization against IAM policies.
//!
//! Each kind of credential has its own [`Authenticator`]; [`IamAccess`] hands a presented credential to the
//! first one that claims it (by its shape, before any verification), and that one alone decides. Accepted
//! today: opaque user tokens (stored as SHA-256 digests, optionally expiring); access tokens clustercred minted
//! at its token endpoint (ES256, our key, `token_use` = access, bound to the account's unique id);
//! service-account JWTs self-signed with a service-account key, as Google's client libraries send them; and
//! tokens of trusted external OIDC issuers (federated principals). A client certificate or a console session
//! is one more implementation of the trait.

use std::sync::Arc;

use async_trait::async_trait;
use clustercred_authority::{TokenError, TokenKind, TokenSigner, claim_time, peek_jwt, verify_jwt};
use clustercred_store::Store;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::project_of_email;
use crate::context::{AccessControl, Clock, Principal, PrincipalKind};
use crate::errors::{from_store, with_reason};
use crate::signing::SigningKeys;

pub const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const IAM_SCOPE: &str = "https://www.googleapis.com/auth/iam";
const MAX_SELF_SIGNED_LIFETIME: i64 = 3600;

fn unauthenticated(message: impl Into<String>) -> Status {
    with_reason(Code::Unauthenticated, "ACCESS_TOKEN_INVALID", message)
}

fn token_error(e: TokenError) -> Status {
    unauthenticated(format!("invalid bearer token: {e}"))
}

/// A credential as presented, with what can be read from it before anything is verified.
pub struct Presented<'a> {
    pub token: &'a str,
    /// For a JWT: its `kid` header and its (unverified) claims.
    pub jwt: Option<(Option<String>, Map<String, Value>)>,
}

impl Presented<'_> {
    fn unverified_issuer(&self) -> Option<&str> {
        self.jwt.as_ref()?.1.get("iss")?.as_str()
    }

    fn kid(&self) -> Option<&str> {
        self.jwt.as_ref()?.0.as_deref()
    }
}

/// One kind of credential.
#[async_trait]
pub trait Authenticator: Send + Sync + 'static {
    /// Whether this kind of credential is the presented one (judged from its shape only).
    fn claims(&self, presented: &Presented<'_>) -> bool;
    /// Verifies the credential and names its principal.
    async fn authenticate(
        &self,
        presented: &Presented<'_>,
        now: OffsetDateTime,
    ) -> Result<Principal, Status>;
}

/// The `Authorization: Bearer` token of a request.
fn bearer(metadata: &MetadataMap) -> Result<&str, Status> {
    let value = metadata.get("authorization").ok_or_else(|| {
        unauthenticated("request is missing the authorization header (Bearer token)")
    })?;
    let value = value
        .to_str()
        .map_err(|_| unauthenticated("authorization header is not valid text"))?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => {
            return Err(unauthenticated(
                "authorization header must use the Bearer scheme",
            ));
        }
    };
    if token.is_empty() || token.len() > 16 * 1024 {
        return Err(unauthenticated("invalid bearer token"));
    }
    Ok(token)
}

/// The service account behind `email`, if it exists and is enabled.
async fn enabled_account(
    store: &dyn Store,
    email: &str,
) -> Result<clustercred_proto::google::iam::admin::v1::ServiceAccount, Status> {
    let account = super::accounts::stored_account(store, email)
        .await?
        .ok_or_else(|| unauthenticated("unknown service account"))?;
    if account.disabled {
        return Err(unauthenticated("the service account is disabled"));
    }
    Ok(account)
}

fn scopes_of(claims: &Map<String, Value>) -> Option<Vec<String>> {
    claims.get("scope").and_then(Value::as_str).map(|s| {
        s.split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    })
}

/// Opaque bearer tokens of local users (and the bootstrap administrator).
pub struct OpaqueTokens {
    store: Arc<dyn Store>,
}

#[async_trait]
impl Authenticator for OpaqueTokens {
    fn claims(&self, presented: &Presented<'_>) -> bool {
        presented.jwt.is_none()
    }

    async fn authenticate(
        &self,
        presented: &Presented<'_>,
        now: OffsetDateTime,
    ) -> Result<Principal, Status> {
        let digest = Sha256::digest(presented.token.as_bytes());
        let record = self
            .store
            .principal_for_bearer(&digest, now.unix_timestamp())
            .await
            .map_err(|e| from_store("authenticating the caller", e))?
            .ok_or_else(|| unauthenticated("invalid bearer token"))?;
        if record.kind != "user" {
            return Err(unauthenticated("invalid bearer token"));
        }
        Ok(Principal::user(record.id))
    }
}

/// Access tokens our token endpoint minted for a service account, signed by any key of the current set (the
/// signing key and those it replaced less than a token lifetime ago).
pub struct MintedTokens {
    store: Arc<dyn Store>,
    keys: Arc<SigningKeys>,
    issuer: String,
}

impl MintedTokens {
    /// The key of the current set that signed this token, if any.
    fn key(&self, presented: &Presented<'_>) -> Option<Arc<TokenSigner>> {
        let kid = presented.kid()?;
        self.keys.current().find(kid).cloned()
    }
}

#[async_trait]
impl Authenticator for MintedTokens {
    fn claims(&self, presented: &Presented<'_>) -> bool {
        self.key(presented).is_some()
    }

    async fn authenticate(
        &self,
        presented: &Presented<'_>,
        now: OffsetDateTime,
    ) -> Result<Principal, Status> {
        // Only access tokens: an ID token or an agent token signed by the same key is refused here.
        let claims = self
            .key(presented)
            .ok_or_else(|| unauthenticated("invalid bearer token"))?
            .verify(
                presented.token,
                TokenKind::Access,
                &self.issuer,
                &self.issuer,
                now,
            )
            .map_err(token_error)?;
        let email = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| unauthenticated("token has no subject"))?;
        let account = enabled_account(self.store.as_ref(), email).await?;
        // A token of a deleted account does not come back with a new account of the same email.
        if claims.get("uid").and_then(Value::as_str) != Some(account.unique_id.as_str()) {
            return Err(unauthenticated(
                "invalid bearer token: it was issued to a service account that no longer exists",
            ));
        }
        Ok(Principal {
            id: email.to_string(),
            kind: PrincipalKind::ServiceAccount {
                unique_id: account.unique_id,
            },
            scopes: Some(scopes_of(&claims).unwrap_or_default()),
        })
    }
}

/// JWTs a client library signed itself with a service-account key.
pub struct SelfSignedJwts {
    store: Arc<dyn Store>,
    issuer: String,
    leeway: Duration,
}

#[async_trait]
impl Authenticator for SelfSignedJwts {
    fn claims(&self, presented: &Presented<'_>) -> bool {
        presented.kid().is_some()
            && presented
                .unverified_issuer()
                .is_some_and(|i| project_of_email(i).is_some())
    }

    async fn authenticate(
        &self,
        presented: &Presented<'_>,
        now: OffsetDateTime,
    ) -> Result<Principal, Status> {
        let (Some(email), Some(kid)) = (presented.unverified_issuer(), presented.kid()) else {
            return Err(unauthenticated("bearer token is not from a trusted issuer"));
        };
        let account = enabled_account(self.store.as_ref(), email).await?;
        // Keys live under the account and go with it, so a key set is the current account's.
        let jwks = super::accounts::key_set(self.store.as_ref(), email, Some(kid)).await?;
        let claims = verify_jwt(presented.token, &jwks, now, self.leeway).map_err(token_error)?;
        if claims.get("iss").and_then(Value::as_str) != Some(email)
            || claims.get("sub").and_then(Value::as_str) != Some(email)
        {
            return Err(unauthenticated(
                "self-signed tokens need iss and sub equal to the service account",
            ));
        }
        let iat = claim_time(&claims, "iat")
            .map_err(token_error)?
            .ok_or_else(|| unauthenticated("token has no iat"))?;
        let exp = claim_time(&claims, "exp")
            .map_err(token_error)?
            .unwrap_or(i64::MAX);
        if exp.saturating_sub(iat) > MAX_SELF_SIGNED_LIFETIME + self.leeway.whole_seconds() {
            return Err(unauthenticated(
                "self-signed tokens may live at most one hour",
            ));
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => acceptable_audience(aud, &self.issuer),
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .any(|a| acceptable_audience(a, &self.issuer)),
            _ => false,
        };
        let scopes = scopes_of(&claims);
        if !audience_ok && scopes.is_none() {
            return Err(unauthenticated(
                "token audience is not a clustercred API and it carries no scope",
            ));
        }
        Ok(Principal {
            id: email.to_string(),
            kind: PrincipalKind::ServiceAccount {
                unique_id: account.unique_id,
            },
            // An audience-bound token is good for that API; a scoped one only as far as its scopes go.
            scopes: if audience_ok { None } else { scopes },
        })
    }
}

#[async_trait]
impl Authenticator for super::oidc::OidcVerifier {
    fn claims(&self, presented: &Presented<'_>) -> bool {
        presented
            .unverified_issuer()
            .is_some_and(|i| self.trusts(i).is_some())
    }

    async fn authenticate(
        &self,
        presented: &Presented<'_>,
        now: OffsetDateTime,
    ) -> Result<Principal, Status> {
        let cfg = presented
            .unverified_issuer()
            .and_then(|i| self.trusts(i))
            .ok_or_else(|| unauthenticated("bearer token is not from a trusted issuer"))?;
        self.verify(cfg, presented.token, now).await
    }
}

/// Google's client libraries put the API's production host in `aud` even when the endpoint is overridden.
pub(crate) fn acceptable_audience(aud: &str, issuer: &str) -> bool {
    const APIS: &[&str] = &[
        "alloydb",
        "edgecontainer",
        "gkemulticloud",
        "iam",
        "cloudresourcemanager",
    ];
    let host_ok = aud
        .strip_prefix("https://")
        .and_then(|rest| {
            rest.strip_suffix(".googleapis.com/")
                .or_else(|| rest.strip_suffix(".googleapis.com"))
        })
        .is_some_and(|api| {
            APIS.iter()
                .any(|a| api == *a || api.ends_with(&format!("-{a}")))
        });
    host_ok || aud == issuer || aud.strip_suffix('/') == Some(issuer)
}

/// Whether a credential limited to `scopes` may call `method` (`package.Service/Method`): the
/// cloud-platform scope covers every API, the IAM scope the IAM API. Google answers the rest with 403
/// `ACCESS_TOKEN_SCOPE_INSUFFICIENT`.
pub fn check_scopes(principal: &Principal, method: &str) -> Result<(), Status> {
    let Some(scopes) = &principal.scopes else {
        return Ok(());
    };
    let service = method.split('/').next().unwrap_or_default();
    let covered = scopes
        .iter()
        .any(|s| s == CLOUD_PLATFORM || (s == IAM_SCOPE && service.starts_with("google.iam.")));
    if covered {
        return Ok(());
    }
    Err(Status::with_error_details(
        Code::PermissionDenied,
        "Request had insufficient authentication scopes.",
        tonic_types::ErrorDetails::with_error_info(
            "ACCESS_TOKEN_SCOPE_INSUFFICIENT",
            "googleapis.com",
            [
                ("method".to_string(), method.replace('/', ".")),
                ("service".to_string(), service.to_string()),
            ],
        ),
    ))
}

pub struct IamAccess {
    authenticators: Vec<Box<dyn Authenticator>>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
}

impl IamAccess {
    /// `keys`: the token-signing keys whose tokens are accepted, as they are at each request.
    pub fn new(
        store: Arc<dyn Store>,
        keys: Arc<SigningKeys>,
        clock: Arc<dyn Clock>,
        issuer: String,
        leeway: Duration,
    ) -> Self {
        IamAccess {
            authenticators: vec![
                Box::new(OpaqueTokens {
                    store: store.clone(),
                }),
                Box::new(MintedTokens {
                    store: store.clone(),
                    keys,
                    issuer: issuer.clone(),
                }),
                Box::new(SelfSignedJwts {
                    store: store.clone(),
                    issuer,
                    leeway,
                }),
            ],
            store,
            clock,
        }
    }

    /// Adds a kind of credential (tried after the ones already there).
    pub fn with(mut self, authenticator: impl Authenticator) -> Self {
        self.authenticators.push(Box::new(authenticator));
        self
    }

    /// Also trusts tokens of these external OIDC issuers.
    pub fn with_oidc(self, oidc: super::oidc::OidcVerifier) -> Self {
        self.with(oidc)
    }
}

#[async_trait]
impl AccessControl for IamAccess {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let token = bearer(metadata)?;
        let jwt = if token.split('.').count() == 3 {
            Some(peek_jwt(token).map_err(token_error)?)
        } else {
            None
        };
        let presented = Presented { token, jwt };
        let authenticator = self
            .authenticators
            .iter()
            .find(|a| a.claims(&presented))
            .ok_or_else(|| unauthenticated("bearer token is not from a trusted issuer"))?;
        authenticator
            .authenticate(&presented, self.clock.now())
            .await
    }

    async fn authorize(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
    ) -> Result<(), Status> {
        if super::policy::allows(
            self.store.as_ref(),
            &principal.members(),
            permission,
            resource,
        )
        .await?
        {
            return Ok(());
        }
        // Same answer whether or not the resource exists.
        Err(with_reason(
            Code::PermissionDenied,
            "IAM_PERMISSION_DENIED",
            format!(
                "Permission '{permission}' denied on resource '{resource}' (or it may not exist)."
            ),
        ))
    }
}
