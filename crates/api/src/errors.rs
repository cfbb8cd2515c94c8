//! The one place where internal errors become wire status (`google.rpc.Status` with rich details).

use std::collections::HashMap;

use clustercred_authority::{AuthorityError, JwksError, KeyError, TokenError, TokenErrorKind};
use clustercred_store::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of errors clustercred raises itself.
pub const ERROR_DOMAIN: &str = "clustercred";

/// INVALID_ARGUMENT naming the offending field (`google.rpc.BadRequest`).
pub fn invalid_field(field: &str, description: impl Into<String>) -> Status {
    let description = description.into();
    Status::with_error_details(
        Code::InvalidArgument,
        format!("invalid {field}: {description}"),
        ErrorDetails::with_bad_request_violation(field, description),
    )
}

pub fn not_found(resource_type: &str, name: &str) -> Status {
    Status::with_error_details(
        Code::NotFound,
        format!("{resource_type} {name:?} not found"),
        ErrorDetails::with_resource_info(resource_type, name, "", "not found"),
    )
}

pub fn already_exists(resource_type: &str, name: &str) -> Status {
    Status::with_error_details(
        Code::AlreadyExists,
        format!("{resource_type} {name:?} already exists"),
        ErrorDetails::with_resource_info(resource_type, name, "", "already exists"),
    )
}

pub fn with_reason(code: Code, reason: &str, message: impl Into<String>) -> Status {
    Status::with_error_details(
        code,
        message,
        ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new()),
    )
}

/// Failures that are ours, not the caller's: logged in full, answered without internals.
pub fn internal(context: &str, err: impl std::fmt::Display) -> Status {
    tracing::error!(error = %err, "{context}");
    Status::internal(format!("internal error while {context}"))
}

pub fn from_store(context: &str, err: StoreError) -> Status {
    match err {
        StoreError::Backend(_) => internal(context, err),
        StoreError::Unavailable(detail) => {
            tracing::warn!(%detail, "storage unavailable while {context}");
            Status::unavailable(format!(
                "storage is unavailable while {context}; nothing was recorded, retry later"
            ))
        }
        StoreError::AlreadyExists => Status::already_exists(context.to_string()),
        StoreError::NotFound => Status::not_found(context.to_string()),
        StoreError::Conflict => {
            Status::aborted(format!("concurrent modification while {context}; retry"))
        }
    }
}

pub fn from_authority(context: &str, err: AuthorityError) -> Status {
    match err {
        // The caller can cause these; they are not our failures.
        AuthorityError::CaExpired(_) => with_reason(
            Code::FailedPrecondition,
            "CA_EXPIRED",
            format!("the cluster CA has expired ({err}); recreate the cluster"),
        ),
        AuthorityError::BadLifetime | AuthorityError::LifetimeTooLong => {
            Status::invalid_argument(format!("{context}: {err}"))
        }
        _ => internal(context, err),
    }
}

pub fn from_key(field: &str, err: KeyError) -> Status {
    invalid_field(field, err.to_string())
}

pub fn from_jwks(field: &str, err: JwksError) -> Status {
    invalid_field(field, err.to_string())
}

pub fn from_token(field: &str, err: TokenError) -> Status {
    match err.kind() {
        TokenErrorKind::Malformed => invalid_field(field, err.to_string()),
        TokenErrorKind::Rejected => with_reason(
            Code::Unauthenticated,
            "SUBJECT_TOKEN_REJECTED",
            format!("{field} rejected: {err}"),
        ),
    }
}
