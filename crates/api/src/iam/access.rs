//! Authentication of bearer tokens and authorization against IAM policies.
//!
//! Accepted bearer tokens: the opaque administrator token (stored as a SHA-256 digest); access tokens
//! clustercred minted at its token endpoint (ES256, our key); and service-account JWTs self-signed with a
//! service-account key, as Google's client libraries send them (RS256, `kid` = key id, `iss` = `sub` = email,
//! `aud` the API's `https://<api>.googleapis.com/` or a `scope` claim, lifetime at most an hour).

use std::sync::Arc;

use async_trait::async_trait;
use clustercred_authority::{
    ClientPublicKey, Jwks, TokenError, TokenSigner, claim_time, peek_jwt, verify_jwt,
};
use clustercred_proto::google::iam::admin::v1::{ServiceAccount, ServiceAccountKey};
use clustercred_store::Store;
use serde_json::Value;
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use tonic::metadata::MetadataMap;
use tonic::{Code, Status};

use super::project_of_email;
use crate::context::{AccessControl, Clock, Principal};
use crate::errors::{from_store, internal, with_reason};

const CLOUD_PLATFORM: &str = "https://www.googleapis.com/auth/cloud-platform";
const MAX_SELF_SIGNED_LIFETIME: i64 = 3600;

pub struct IamAccess {
    oidc: Option<super::oidc::OidcVerifier>,
    store: Arc<dyn Store>,
    signer: Arc<TokenSigner>,
    clock: Arc<dyn Clock>,
    issuer: String,
    leeway: Duration,
}

fn unauthenticated(message: impl Into<String>) -> Status {
    with_reason(Code::Unauthenticated, "ACCESS_TOKEN_INVALID", message)
}

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

fn token_error(e: TokenError) -> Status {
    unauthenticated(format!("invalid bearer token: {e}"))
}

impl IamAccess {
    pub fn new(
        store: Arc<dyn Store>,
        signer: Arc<TokenSigner>,
        clock: Arc<dyn Clock>,
        issuer: String,
        leeway: Duration,
    ) -> Self {
        IamAccess {
            oidc: None,
            store,
            signer,
            clock,
            issuer,
            leeway,
        }
    }

    /// Also trusts tokens of these external OIDC issuers.
    pub fn with_oidc(mut self, oidc: super::oidc::OidcVerifier) -> Self {
        self.oidc = Some(oidc);
        self
    }

    /// The service account behind `email`, if it exists and is enabled.
    async fn service_account(&self, email: &str) -> Result<ServiceAccount, Status> {
        let account = super::service_accounts::stored_account(self.store.as_ref(), email)
            .await?
            .ok_or_else(|| unauthenticated("unknown service account"))?;
        if account.disabled {
            return Err(unauthenticated("the service account is disabled"));
        }
        Ok(account)
    }

    async fn opaque(&self, token: &str) -> Result<Principal, Status> {
        let digest = Sha256::digest(token.as_bytes());
        let principal = self
            .store
            .principal_for_bearer(&digest)
            .await
            .map_err(|e| from_store("authenticating the caller", e))?
            .ok_or_else(|| unauthenticated("invalid bearer token"))?;
        Ok(Principal {
            id: principal.id,
            kind: principal.kind,
        })
    }

    /// A token minted by our token endpoint for a service account.
    async fn minted(&self, token: &str, now: OffsetDateTime) -> Result<Principal, Status> {
        let claims = self
            .signer
            .verify(token, &self.issuer, &self.issuer, now)
            .map_err(token_error)?;
        let email = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| unauthenticated("token has no subject"))?;
        self.service_account(email).await?;
        Ok(Principal {
            id: email.to_string(),
            kind: "serviceAccount".into(),
        })
    }

    /// A JWT a client library signed itself with a service-account key.
    async fn self_signed(
        &self,
        token: &str,
        kid: &str,
        email: &str,
        now: OffsetDateTime,
    ) -> Result<Principal, Status> {
        self.service_account(email).await?;
        let jwks = super::service_accounts::key_set(self.store.as_ref(), email, Some(kid)).await?;
        let claims = verify_jwt(token, &jwks, now, self.leeway).map_err(token_error)?;
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
        let scope_ok = claims
            .get("scope")
            .and_then(Value::as_str)
            .is_some_and(|s| s.split(' ').any(|scope| scope == CLOUD_PLATFORM));
        if !audience_ok && !scope_ok {
            return Err(unauthenticated(
                "token audience is not a clustercred API (nor does its scope cover cloud-platform)",
            ));
        }
        Ok(Principal {
            id: email.to_string(),
            kind: "serviceAccount".into(),
        })
    }
}

/// Google's client libraries put the API's production host in `aud` even when the endpoint is overridden.
fn acceptable_audience(aud: &str, issuer: &str) -> bool {
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

#[async_trait]
impl AccessControl for IamAccess {
    async fn authenticate(&self, metadata: &MetadataMap) -> Result<Principal, Status> {
        let token = bearer(metadata)?;
        if token.split('.').count() != 3 {
            return self.opaque(token).await;
        }
        let now = self.clock.now();
        let (kid, claims) = peek_jwt(token).map_err(token_error)?;
        if kid.as_deref() == Some(self.signer.kid()) {
            return self.minted(token, now).await;
        }
        let issuer = claims
            .get("iss")
            .and_then(Value::as_str)
            .unwrap_or_default();
        if let Some(oidc) = &self.oidc
            && let Some(cfg) = oidc.trusts(issuer)
        {
            return oidc.verify(cfg, token, now).await;
        }
        match kid {
            Some(kid) if project_of_email(issuer).is_some() => {
                self.self_signed(token, &kid, issuer, now).await
            }
            _ => Err(unauthenticated("bearer token is not from a trusted issuer")),
        }
    }

    async fn authorize(
        &self,
        principal: &Principal,
        permission: &str,
        resource: &str,
    ) -> Result<(), Status> {
        if super::policy::allows(
            self.store.as_ref(),
            &principal.member(),
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

/// Public keys of a service account, for verifying what it signed.
pub(crate) fn key_entry(key: &ServiceAccountKey) -> Option<(String, ClientPublicKey)> {
    let kid = key.name.rsplit('/').next()?.to_string();
    let pem = std::str::from_utf8(&key.public_key_data).ok()?;
    Some((kid, ClientPublicKey::from_pem(pem).ok()?))
}

pub(crate) fn jwks_of(keys: &[ServiceAccountKey]) -> Result<Jwks, Status> {
    let entries: Vec<_> = keys
        .iter()
        .filter(|k| !k.disabled)
        .filter_map(key_entry)
        .collect();
    Jwks::from_public_keys(&entries).map_err(|e| internal("loading service-account keys", e))
}
