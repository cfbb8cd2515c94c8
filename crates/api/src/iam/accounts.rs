//! Reading service accounts and their keys from the store: shared by the IAM service (which manages them),
//! bearer authentication and the token endpoint (which verify what the accounts sign).

use clustercred_authority::{ClientPublicKey, Jwks};
use clustercred_proto::google::iam::admin::v1 as pb;
use clustercred_store::Store;
use prost::Message;
use tonic::Status;

use super::{SA_KEY_KIND, SA_KIND, project_of_email};
use crate::errors::{from_store, internal};

pub(crate) fn unknown_account() -> Status {
    Status::not_found("Unknown service account")
}

/// The resource name of the account with `email`.
pub(crate) fn account_name(project: &str, email: &str) -> String {
    format!("projects/{project}/serviceAccounts/{email}")
}

/// A service account we issued, by email; `None` when there is none (disabled ones included: callers decide).
pub(crate) async fn stored_account(
    store: &dyn Store,
    email: &str,
) -> Result<Option<pb::ServiceAccount>, Status> {
    let Some(project) = project_of_email(email) else {
        return Ok(None);
    };
    let Some(record) = store
        .get_resource(SA_KIND, &account_name(project, email))
        .await
        .map_err(|e| from_store("reading a service account", e))?
    else {
        return Ok(None);
    };
    pb::ServiceAccount::decode(record.data.as_slice())
        .map(Some)
        .map_err(|e| internal("decoding a service account", e))
}

/// The enabled keys of an account (all, or only `kid`) as a key set for verifying what the account signed.
pub(crate) async fn key_set(
    store: &dyn Store,
    email: &str,
    kid: Option<&str>,
) -> Result<Jwks, Status> {
    let project = project_of_email(email).ok_or_else(unknown_account)?;
    let account = account_name(project, email);
    let keys = match kid {
        Some(kid) => store
            .get_resource(SA_KEY_KIND, &format!("{account}/keys/{kid}"))
            .await
            .map_err(|e| from_store("reading a key", e))?
            .into_iter()
            .collect::<Vec<_>>(),
        None => store
            .list_resources(SA_KEY_KIND, &account, None, 100)
            .await
            .map_err(|e| from_store("reading keys", e))?,
    };
    let keys = keys
        .iter()
        .map(|r| pb::ServiceAccountKey::decode(r.data.as_slice()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal("decoding a stored key", e))?;
    jwks_of(&keys)
}

/// A key's id and public key, for verifying what it signed.
fn key_entry(key: &pb::ServiceAccountKey) -> Option<(String, ClientPublicKey)> {
    let kid = key.name.rsplit('/').next()?.to_string();
    let pem = std::str::from_utf8(&key.public_key_data).ok()?;
    Some((kid, ClientPublicKey::from_pem(pem).ok()?))
}

fn jwks_of(keys: &[pb::ServiceAccountKey]) -> Result<Jwks, Status> {
    let entries: Vec<_> = keys
        .iter()
        .filter(|k| !k.disabled)
        .filter_map(key_entry)
        .collect();
    Jwks::from_public_keys(&entries).map_err(|e| internal("loading service-account keys", e))
}
