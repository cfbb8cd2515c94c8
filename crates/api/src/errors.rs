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

/// The wire status of a backend failure for user `user_id` of `cluster`; `id_field` names the request field
/// that carries the user id.
pub fn from_database_users(
    err: crate::alloydb::DatabaseUserError,
    cluster: &str,
    user_id: &str,
    id_field: &str,
) -> Status {
    use crate::alloydb::DatabaseUserError::*;
    match err {
        NoBackend => with_reason(
            Code::FailedPrecondition,
            "NO_ALLOYDB_BACKEND",
            format!(
                "cluster {cluster} has no backend database for its users: start clustercred with \
                 --alloydb-backend postgres://... or --alloydb-backend-for {cluster}=postgres://..."
            ),
        ),
        Unavailable(detail) => {
            tracing::warn!(cluster, %detail, "backend database unavailable");
            Status::unavailable(format!(
                "the backend database of cluster {cluster} is unavailable ({detail}); nothing was \
                 changed, retry later"
            ))
        }
        RoleExists => Status::with_error_details(
            Code::AlreadyExists,
            format!(
                "a role named {user_id:?} already exists in the backend database of cluster {cluster} \
                 and is not a user clustercred manages: drop it there or choose another user id"
            ),
            tonic_types::ErrorDetails::with_resource_info(
                "user",
                format!("{cluster}/users/{user_id}"),
                "",
                "a role of that name exists in the backend database",
            ),
        ),
        RoleMissing => with_reason(
            Code::FailedPrecondition,
            "ROLE_MISSING",
            format!(
                "the role of user {user_id:?} is missing from the backend database of cluster {cluster} \
                 (dropped outside clustercred): delete the user and create it again"
            ),
        ),
        UnknownRoles(roles) => invalid_field(
            "user.database_roles",
            format!(
                "no role named {} exists in the backend database of cluster {cluster}",
                roles
                    .iter()
                    .map(|r| format!("{r:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ),
        RefusedRoles(why) | InvalidGrant(why) => invalid_field("user.database_roles", why),
        ReservedName(why) => invalid_field(id_field, why),
        NotPermitted(why) => with_reason(
            Code::FailedPrecondition,
            "BACKEND_NOT_PERMITTED",
            format!(
                "the backend database of cluster {cluster} refused: {why} (clustercred's user there needs \
                 CREATEROLE, and the right to grant the roles asked for)"
            ),
        ),
        InUse(why) => with_reason(
            Code::FailedPrecondition,
            "ROLE_IN_USE",
            format!(
                "the role {user_id:?} cannot be dropped: {why}. Reassign or drop what it owns and holds \
                 (REASSIGN OWNED BY / DROP OWNED BY, in every database) and delete the user again"
            ),
        ),
        Other(why) => internal("changing a role in the backend database", why),
    }
}
