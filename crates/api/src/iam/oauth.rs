//! The OAuth 2.0 token endpoint: the JWT-bearer grant (RFC 7523) exactly as google-auth's service-account
//! credentials (and gcloud) use it. The assertion is signed with a service-account key; the answer is a
//! short-lived access token signed by clustercred (or, for `target_audience`, an ID token). Errors use the
//! RFC 6749 shape `{"error", "error_description"}`, which google-auth understands.

use clustercred_authority::{MintRequest, TokenKind, claim_time, peek_jwt, verify_jwt};
use clustercred_store::TokenRecord;
use serde_json::{Map, Value, json};
use tonic::Code;

use super::project_of_email;
use crate::context::{Ctx, RequestMeta};

pub const GRANT_JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// google-auth always puts Google's token URL in `aud`, whatever `token_uri` says.
const GOOGLE_TOKEN_AUDIENCE: &str = "https://oauth2.googleapis.com/token";
const TOKEN_LIFETIME_SECS: i64 = 3600;

pub struct TokenReply {
    pub http_status: u16,
    pub body: Value,
}

fn oauth_error(status: u16, error: &str, description: impl Into<String>) -> TokenReply {
    TokenReply {
        http_status: status,
        body: json!({ "error": error, "error_description": description.into() }),
    }
}

/// Handles one `POST /oauth2/token` with an `application/x-www-form-urlencoded` body.
pub async fn token_endpoint(ctx: &Ctx, form_body: &[u8], meta: &RequestMeta) -> TokenReply {
    if let Err(status) = ctx.admit_address(meta).await {
        return oauth_error(429, "rate_limit_exceeded", status.message());
    }
    let reply = exchange(ctx, form_body, meta).await;
    if reply.http_status != 200 {
        let description = reply.body["error_description"].as_str().unwrap_or_default();
        // Aggregated like every refusal, so a flood of bad assertions is not one audit write each.
        let status = tonic::Status::new(Code::Unauthenticated, description);
        ctx.refused("anonymous", meta, "", "oauth2/token", &status)
            .await;
    }
    reply
}

async fn exchange(ctx: &Ctx, form_body: &[u8], meta: &RequestMeta) -> TokenReply {
    if form_body.len() > 32 * 1024 {
        return oauth_error(400, "invalid_request", "request body too large");
    }
    let form: Map<String, Value> = form_urlencoded::parse(form_body)
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    let field = |name: &str| form.get(name).and_then(Value::as_str).unwrap_or_default();
    match field("grant_type") {
        GRANT_JWT_BEARER => {}
        "" => return oauth_error(400, "invalid_request", "grant_type is required"),
        _ => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                "only the JWT-bearer grant (RFC 7523) is supported",
            );
        }
    }
    let assertion = field("assertion");
    if assertion.is_empty() {
        return oauth_error(400, "invalid_request", "assertion is required");
    }
    let Ok((kid, unverified)) = peek_jwt(assertion) else {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: the assertion is not a JWT.",
        );
    };
    let email = unverified
        .get("iss")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(project) = project_of_email(&email) else {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: iss is not a service account of this server.",
        );
    };
    let account_name = format!("projects/{project}/serviceAccounts/{email}");
    let account = match super::accounts::stored_account(ctx.store.as_ref(), &email).await {
        Ok(Some(account)) => account,
        Ok(None) => return oauth_error(400, "invalid_grant", "Invalid JWT Signature."),
        Err(status) if status.code() == Code::Internal => {
            return oauth_error(
                500,
                "server_error",
                "a stored service account does not decode",
            );
        }
        Err(_) => return oauth_error(503, "temporarily_unavailable", "the store is unavailable"),
    };
    if account.disabled {
        return oauth_error(400, "invalid_grant", "The service account is disabled.");
    }
    let jwks = match super::accounts::key_set(ctx.store.as_ref(), &email, kid.as_deref()).await {
        Ok(j) if !j.is_empty() => j,
        Ok(_) => return oauth_error(400, "invalid_grant", "Invalid JWT Signature."),
        Err(_) => return oauth_error(503, "temporarily_unavailable", "the store is unavailable"),
    };
    let now = ctx.now();
    let claims = match verify_jwt(assertion, &jwks, now, ctx.settings.token_leeway) {
        Ok(c) => c,
        Err(
            clustercred_authority::TokenError::BadSignature
            | clustercred_authority::TokenError::UnknownKeyId,
        ) => {
            return oauth_error(400, "invalid_grant", "Invalid JWT Signature.");
        }
        Err(e) => return oauth_error(400, "invalid_grant", format!("Invalid JWT: {e}")),
    };
    let token_url = format!("{}/oauth2/token", ctx.settings.token_issuer);
    let audience_ok = match claims.get("aud") {
        Some(Value::String(a)) => a == GOOGLE_TOKEN_AUDIENCE || *a == token_url,
        _ => false,
    };
    if !audience_ok {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: aud must be the token endpoint.",
        );
    }
    if let Some(sub) = claims.get("sub").and_then(Value::as_str)
        && sub != email
    {
        return oauth_error(
            400,
            "unauthorized_client",
            "Domain-wide delegation is not supported.",
        );
    }
    let (Ok(Some(iat)), Ok(Some(exp))) = (claim_time(&claims, "iat"), claim_time(&claims, "exp"))
    else {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: iat and exp are required.",
        );
    };
    if exp.saturating_sub(iat) > TOKEN_LIFETIME_SECS + ctx.settings.token_leeway.whole_seconds() {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: the assertion may live at most one hour.",
        );
    }

    if ctx
        .limits
        .principal(&format!("serviceAccount:{email}"))
        .is_err()
    {
        return oauth_error(
            429,
            "temporarily_unavailable",
            "rate limit exceeded; retry later",
        );
    }
    let Ok(_permit) = ctx.limits.signing() else {
        return oauth_error(
            503,
            "temporarily_unavailable",
            "the server is busy; retry shortly",
        );
    };
    let issuer = ctx.settings.token_issuer.clone();
    let lifetime = time::Duration::seconds(TOKEN_LIFETIME_SECS);
    let target_audience = claims.get("target_audience").and_then(Value::as_str);
    let mut extra = Map::new();
    let (audience, scope, kind) = match target_audience {
        Some(aud) => {
            if let Err(why) = id_token_audience(aud, &issuer, project) {
                return oauth_error(400, "invalid_request", why);
            }
            extra.insert("email".into(), email.clone().into());
            extra.insert("email_verified".into(), true.into());
            (aud.to_string(), None, "ID token")
        }
        None => {
            extra.insert("principal".into(), format!("serviceAccount:{email}").into());
            // Bound to this account, not to its email: a recreated account does not inherit the token.
            extra.insert("uid".into(), account.unique_id.clone().into());
            let scope = claims
                .get("scope")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            (issuer.clone(), Some(scope), "access token")
        }
    };
    let minted = match ctx.signer().mint(
        &MintRequest {
            kind: if target_audience.is_some() {
                TokenKind::Id
            } else {
                TokenKind::Access
            },
            issuer: &issuer,
            subject: &email,
            audience: &audience,
            scope: scope.as_deref(),
            lifetime,
            extra,
        },
        now,
    ) {
        Ok(m) => m,
        Err(_) => return oauth_error(500, "server_error", "token signing failed"),
    };
    let member = format!("serviceAccount:{email}");
    let event = ctx.event(
        &member,
        meta,
        &account_name,
        Code::Ok,
        format!(
            "{kind} {} until {}",
            minted.token_id,
            minted.expires_at.unix_timestamp()
        ),
        "",
    );
    let record = TokenRecord {
        token_id: minted.token_id.clone(),
        owner: account_name.clone(),
        subject: member,
        expires_unix: minted.expires_at.unix_timestamp(),
        create_time_unix: now.unix_timestamp(),
    };
    if ctx.store.record_token(&record, Some(&event)).await.is_err() {
        return oauth_error(503, "temporarily_unavailable", "the store is unavailable");
    }
    crate::context::log_event(&event);
    let expires_in = (minted.expires_at - now).whole_seconds().max(0);
    let body = match target_audience {
        Some(_) => json!({ "id_token": minted.token }),
        None => {
            json!({ "access_token": minted.token, "expires_in": expires_in, "token_type": "Bearer" })
        }
    };
    TokenReply {
        http_status: 200,
        body,
    }
}

/// Whom an ID token may be for: anyone but clustercred's own APIs (there it would act as a bearer token) and
/// another project's workload identity pool (it would let one project's account speak for another's workloads).
fn id_token_audience(aud: &str, issuer: &str, project: &str) -> Result<(), String> {
    if aud.is_empty() || aud.len() > 512 || !aud.chars().all(|c| c.is_ascii_graphic()) {
        return Err("target_audience must be 1 to 512 printable characters".into());
    }
    if super::access::acceptable_audience(aud, issuer) {
        return Err(format!(
            "target_audience {aud} is a clustercred API; ID tokens are for other audiences"
        ));
    }
    let pool_project = if aud.contains("workloadIdentityPools/") || aud.starts_with("//iam.") {
        aud.split("/projects/")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
    } else {
        aud.strip_suffix(".svc.id.goog")
    };
    match pool_project {
        Some(p) if p != project => Err(format!(
            "target_audience {aud} is a workload identity pool of another project"
        )),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod audience_tests {
    use super::id_token_audience;

    #[test]
    fn id_tokens_are_for_others_but_not_other_projects_pools() {
        let issuer = "https://cc.example";
        for ok in [
            "https://service.example/",
            "p1.svc.id.goog",
            "//iam.googleapis.com/projects/p1/locations/global/workloadIdentityPools/w/providers/x",
        ] {
            assert!(id_token_audience(ok, issuer, "p1").is_ok(), "{ok}");
        }
        for bad in [
            "",
            "https://cc.example",
            "https://cc.example/",
            "https://alloydb.googleapis.com/",
            "p2.svc.id.goog",
            "//iam.googleapis.com/projects/p2/locations/global/workloadIdentityPools/w/providers/x",
        ] {
            assert!(id_token_audience(bad, issuer, "p1").is_err(), "{bad}");
        }
    }
}
