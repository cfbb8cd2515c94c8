//! Service accounts and their keys, served like Google's IAM API (`google.iam.admin.v1.IAM`). A created key
//! is the standard JSON key file whose `token_uri` is clustercred's token endpoint; its private half is
//! returned once and never stored.

use std::sync::Arc;

use clustercred_authority::{GeneratedKeyAlgorithm, generate_key_pair};
use clustercred_proto::google::iam::admin::v1 as pb;
use clustercred_proto::google::iam::admin::v1::iam_server::{Iam, IamServer};
use clustercred_proto::google::iam::admin::v1::list_service_account_keys_request::KeyType;
use clustercred_store::ResourceRecord;
use prost::Message;
use tonic::{Request, Response, Status};

use super::accounts::unknown_account;
use super::{SA_EMAIL_DOMAIN, SA_KEY_KIND, SA_KIND, project_of_email};
use crate::common::timestamp;
use crate::context::{Caller, Ctx};
use crate::errors::{from_store, internal, invalid_field};

#[derive(Clone)]
pub struct IamService {
    ctx: Arc<Ctx>,
}

fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// `projects/P` → P.
fn parse_project(field: &str, name: &str) -> Result<String, Status> {
    match name.strip_prefix("projects/") {
        Some(p) if valid_project(p) => Ok(p.to_string()),
        _ => Err(invalid_field(
            field,
            "must have the form projects/{project}",
        )),
    }
}

/// `projects/{P|-}/serviceAccounts/{EMAIL}` → the canonical name and email.
fn parse_account(field: &str, name: &str) -> Result<(String, String), Status> {
    let bad = || {
        invalid_field(
            field,
            "must have the form projects/{project}/serviceAccounts/{email}",
        )
    };
    let rest = name.strip_prefix("projects/").ok_or_else(bad)?;
    let (project, email) = rest.split_once("/serviceAccounts/").ok_or_else(bad)?;
    if email.contains('/') || email.len() > 320 {
        return Err(bad());
    }
    let owner = project_of_email(email).ok_or_else(unknown_account)?;
    if project != "-" && project != owner {
        return Err(unknown_account());
    }
    Ok((
        format!("projects/{owner}/serviceAccounts/{email}"),
        email.to_string(),
    ))
}

/// `.../serviceAccounts/{EMAIL}/keys/{KEY}` → canonical account name, email, key id.
fn parse_key(field: &str, name: &str) -> Result<(String, String, String), Status> {
    let (account, key) = name.rsplit_once("/keys/").ok_or_else(|| {
        invalid_field(
            field,
            "must have the form projects/{project}/serviceAccounts/{email}/keys/{key}",
        )
    })?;
    let (account, email) = parse_account(field, account)?;
    if key.len() != 40 || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Status::not_found("Unknown service account key"));
    }
    Ok((account, email, key.to_ascii_lowercase()))
}

/// RFC 1035, 6 to 30 characters, as Google requires of account ids.
fn validate_account_id(id: &str) -> Result<(), Status> {
    let ok = (6..=30).contains(&id.len())
        && id.as_bytes()[0].is_ascii_lowercase()
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !id.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid_field(
            "account_id",
            "must be 6 to 30 characters: a lowercase letter, then lowercase letters, digits or hyphens, not ending with a hyphen",
        ))
    }
}

impl IamService {
    pub fn new(ctx: Arc<Ctx>) -> Self {
        IamService { ctx }
    }

    pub fn into_server(self) -> IamServer<Self> {
        IamServer::new(self)
    }

    async fn account(&self, name: &str) -> Result<pb::ServiceAccount, Status> {
        let record = self
            .ctx
            .store
            .get_resource(SA_KIND, name)
            .await
            .map_err(|e| from_store("reading a service account", e))?
            .ok_or_else(unknown_account)?;
        pb::ServiceAccount::decode(record.data.as_slice())
            .map_err(|e| internal("decoding a service account", e))
    }

    /// Turns every binding of the account into `deleted:serviceAccount:EMAIL?uid=ID`, which grants nothing.
    async fn retire_bindings(
        &self,
        caller: &Caller,
        account: &pb::ServiceAccount,
    ) -> Result<(), Status> {
        let member = format!("serviceAccount:{}", account.email);
        let retired = format!(
            "deleted:serviceAccount:{}?uid={}",
            account.email, account.unique_id
        );
        super::policy::retire_member(
            self.ctx.store.as_ref(),
            &member,
            &retired,
            self.ctx.now().unix_timestamp(),
            |resource| {
                self.ctx.ok_event(
                    caller,
                    resource,
                    format!("retired {member} as {retired}"),
                    "",
                )
            },
        )
        .await?;
        Ok(())
    }

    async fn set_account_disabled(
        &self,
        caller: &Caller,
        name: &str,
        disabled: bool,
    ) -> Result<(), Status> {
        let mut account = self.account(name).await?;
        account.disabled = disabled;
        let word = if disabled { "disabled" } else { "enabled" };
        let event = self
            .ctx
            .ok_event(caller, name, format!("{word} service account"), "");
        self.update(SA_KIND, name, account.encode_to_vec(), &event)
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    unknown_account()
                } else {
                    s
                }
            })
    }

    async fn set_key_disabled(
        &self,
        caller: &Caller,
        account: &str,
        key_id: &str,
        disabled: bool,
    ) -> Result<(), Status> {
        let name = format!("{account}/keys/{key_id}");
        let unknown_key = || Status::not_found("Unknown service account key");
        let record = self
            .ctx
            .store
            .get_resource(SA_KEY_KIND, &name)
            .await
            .map_err(|e| from_store("reading a key", e))?
            .ok_or_else(unknown_key)?;
        let mut key = pb::ServiceAccountKey::decode(record.data.as_slice())
            .map_err(|e| internal("decoding a stored key", e))?;
        key.disabled = disabled;
        let word = if disabled { "disabled" } else { "enabled" };
        let event = self
            .ctx
            .ok_event(caller, account, format!("{word} key {key_id}"), "");
        self.update(SA_KEY_KIND, &name, key.encode_to_vec(), &event)
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    unknown_key()
                } else {
                    s
                }
            })
    }

    async fn update(
        &self,
        kind: &str,
        name: &str,
        data: Vec<u8>,
        event: &clustercred_store::AuditEvent,
    ) -> Result<(), Status> {
        let record = self
            .ctx
            .store
            .get_resource(kind, name)
            .await
            .map_err(|e| from_store("reading a resource", e))?
            .ok_or_else(|| Status::not_found(name.to_string()))?;
        self.ctx
            .store
            .update_resource(&ResourceRecord { data, ..record }, Some(event))
            .await
            .map_err(|e| from_store("updating a resource", e))?;
        crate::context::log_event(event);
        Ok(())
    }

    /// Creates a service account (also used by the CLI, with its own caller).
    pub async fn create_account(
        &self,
        caller: &Caller,
        project: &str,
        account_id: &str,
        display_name: &str,
        description: &str,
    ) -> Result<pb::ServiceAccount, Status> {
        validate_account_id(account_id)?;
        if display_name.len() > 100 || description.len() > 256 {
            return Err(invalid_field(
                "service_account",
                "display name at most 100 and description at most 256 bytes",
            ));
        }
        let email = format!("{account_id}@{project}.{SA_EMAIL_DOMAIN}");
        let name = format!("projects/{project}/serviceAccounts/{email}");
        // A 21-digit numeric id, like Google's.
        let unique_id = format!("1{:020}", rand::random::<u64>());
        let account = pb::ServiceAccount {
            name: name.clone(),
            project_id: project.to_string(),
            unique_id: unique_id.clone(),
            email: email.clone(),
            display_name: display_name.to_string(),
            etag: b"\x00".to_vec(),
            description: description.to_string(),
            oauth2_client_id: unique_id.clone(),
            disabled: false,
        };
        let now = self.ctx.now();
        let record = ResourceRecord {
            kind: SA_KIND.into(),
            name: name.clone(),
            parent: format!("projects/{project}"),
            uid: unique_id,
            data: account.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        let event = self
            .ctx
            .ok_event(caller, &name, "created service account", "");
        self.ctx
            .insert("service account", &record, None, None, Some(&event))
            .await?;
        Ok(account)
    }

    /// Creates a key and returns it with the key file in `private_key_data` (also used by the CLI).
    pub async fn create_key(
        &self,
        caller: &Caller,
        account_name: &str,
    ) -> Result<pb::ServiceAccountKey, Status> {
        let account = self.account(account_name).await?;
        let _rsa = self.ctx.limits.rsa_keygen()?;
        let pair =
            tokio::task::spawn_blocking(|| generate_key_pair(GeneratedKeyAlgorithm::Rsa2048))
                .await
                .map_err(|e| internal("generating a key", e))?
                .map_err(|e| crate::errors::from_authority("generating a key", e))?;
        let key_id = hex::encode(rand::random::<[u8; 20]>());
        let now = self.ctx.now();
        let name = format!("{account_name}/keys/{key_id}");
        let stored = pb::ServiceAccountKey {
            name: name.clone(),
            private_key_type: 0,
            key_algorithm: pb::ServiceAccountKeyAlgorithm::KeyAlgRsa2048 as i32,
            private_key_data: Vec::new(),
            public_key_data: pair.public_key.to_pem().into_bytes(),
            valid_after_time: Some(timestamp(now)),
            // Google's user-managed keys do not expire by default.
            valid_before_time: Some(prost_types::Timestamp {
                seconds: 253_402_300_799,
                nanos: 0,
            }),
            key_origin: pb::ServiceAccountKeyOrigin::GoogleProvided as i32,
            key_type: KeyType::UserManaged as i32,
            disabled: false,
        };
        let record = ResourceRecord {
            kind: SA_KEY_KIND.into(),
            name: name.clone(),
            parent: account_name.to_string(),
            uid: key_id.clone(),
            data: stored.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        let event = self
            .ctx
            .ok_event(caller, account_name, format!("created key {key_id}"), "");
        self.ctx
            .insert("service account key", &record, None, None, Some(&event))
            .await?;
        let key_file = serde_json::json!({
            "type": "service_account",
            "project_id": account.project_id,
            "private_key_id": key_id,
            "private_key": pair.private_key_pem.as_str(),
            "client_email": account.email,
            "client_id": account.unique_id,
            "auth_uri": format!("{}/oauth2/auth", self.ctx.settings.token_issuer),
            "token_uri": format!("{}/oauth2/token", self.ctx.settings.token_issuer),
            // Any other universe makes google-auth sign its own tokens instead of calling token_uri.
            "universe_domain": "googleapis.com",
        });
        let key_file = serde_json::to_vec_pretty(&key_file)
            .map_err(|e| internal("writing the key file", e))?;
        Ok(pb::ServiceAccountKey {
            private_key_type: pb::ServiceAccountPrivateKeyType::TypeGoogleCredentialsFile as i32,
            private_key_data: key_file,
            public_key_data: Vec::new(),
            ..stored
        })
    }
}

fn public_view(mut key: pb::ServiceAccountKey) -> pb::ServiceAccountKey {
    key.public_key_data.clear();
    key
}

#[tonic::async_trait]
impl Iam for IamService {
    async fn list_service_accounts(
        &self,
        request: Request<pb::ListServiceAccountsRequest>,
    ) -> Result<Response<pb::ListServiceAccountsResponse>, Status> {
        let req = request.get_ref();
        let project = parse_project("name", &req.name)?;
        let parent = format!("projects/{project}");
        self.ctx.caller(&request)?;
        let (accounts, next_page_token) = self
            .ctx
            .list(SA_KIND, &parent, req.page_size, &req.page_token)
            .await?;
        Ok(Response::new(pb::ListServiceAccountsResponse {
            accounts,
            next_page_token,
        }))
    }

    async fn get_service_account(
        &self,
        request: Request<pb::GetServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let (name, _) = parse_account("name", &request.get_ref().name)?;
        self.ctx.caller(&request)?;
        Ok(Response::new(self.account(&name).await?))
    }

    async fn create_service_account(
        &self,
        request: Request<pb::CreateServiceAccountRequest>,
    ) -> Result<Response<pb::ServiceAccount>, Status> {
        let req = request.get_ref();
        let project = parse_project("name", &req.name)?;
        let caller = self.ctx.caller(&request)?;
        let template = req.service_account.clone().unwrap_or_default();
        let account = self
            .create_account(
                &caller,
                &project,
                &req.account_id,
                &template.display_name,
                &template.description,
            )
            .await?;
        Ok(Response::new(account))
    }

    async fn delete_service_account(
        &self,
        request: Request<pb::DeleteServiceAccountRequest>,
    ) -> Result<Response<()>, Status> {
        let (name, _) = parse_account("name", &request.get_ref().name)?;
        let caller = self.ctx.caller(&request)?;
        let account = self.account(&name).await?;
        // Bindings are retired before the account goes (a crash in between leaves an account without access,
        // never bindings waiting for a namesake) and once more after, for any added meanwhile.
        self.retire_bindings(&caller, &account).await?;
        let event = self
            .ctx
            .ok_event(&caller, &name, "deleted service account and its keys", "");
        self.ctx
            .remove(SA_KIND, "service account", &name, None, Some(&event))
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    unknown_account()
                } else {
                    s
                }
            })?;
        self.retire_bindings(&caller, &account).await?;
        Ok(Response::new(()))
    }

    async fn disable_service_account(
        &self,
        request: Request<pb::DisableServiceAccountRequest>,
    ) -> Result<Response<()>, Status> {
        let (name, _) = parse_account("name", &request.get_ref().name)?;
        let caller = self.ctx.caller(&request)?;
        self.set_account_disabled(&caller, &name, true).await?;
        Ok(Response::new(()))
    }

    async fn enable_service_account(
        &self,
        request: Request<pb::EnableServiceAccountRequest>,
    ) -> Result<Response<()>, Status> {
        let (name, _) = parse_account("name", &request.get_ref().name)?;
        let caller = self.ctx.caller(&request)?;
        self.set_account_disabled(&caller, &name, false).await?;
        Ok(Response::new(()))
    }

    async fn disable_service_account_key(
        &self,
        request: Request<pb::DisableServiceAccountKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let (account, _, key_id) = parse_key("name", &request.get_ref().name)?;
        let caller = self.ctx.caller(&request)?;
        self.set_key_disabled(&caller, &account, &key_id, true)
            .await?;
        Ok(Response::new(()))
    }

    async fn enable_service_account_key(
        &self,
        request: Request<pb::EnableServiceAccountKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let (account, _, key_id) = parse_key("name", &request.get_ref().name)?;
        let caller = self.ctx.caller(&request)?;
        self.set_key_disabled(&caller, &account, &key_id, false)
            .await?;
        Ok(Response::new(()))
    }

    async fn list_service_account_keys(
        &self,
        request: Request<pb::ListServiceAccountKeysRequest>,
    ) -> Result<Response<pb::ListServiceAccountKeysResponse>, Status> {
        let req = request.get_ref();
        let (name, _) = parse_account("name", &req.name)?;
        self.ctx.caller(&request)?;
        self.account(&name).await?;
        if req.key_types.contains(&(KeyType::Unspecified as i32)) {
            return Err(invalid_field(
                "key_types",
                "KEY_TYPE_UNSPECIFIED is not a key type",
            ));
        }
        let (keys, _) = self
            .ctx
            .list::<pb::ServiceAccountKey>(SA_KEY_KIND, &name, 1000, "")
            .await?;
        let keys = keys
            .into_iter()
            .filter(|k| req.key_types.is_empty() || req.key_types.contains(&k.key_type))
            .map(public_view)
            .collect();
        Ok(Response::new(pb::ListServiceAccountKeysResponse { keys }))
    }

    async fn get_service_account_key(
        &self,
        request: Request<pb::GetServiceAccountKeyRequest>,
    ) -> Result<Response<pb::ServiceAccountKey>, Status> {
        let req = request.get_ref();
        let (account, _, key_id) = parse_key("name", &req.name)?;
        let name = format!("{account}/keys/{key_id}");
        self.ctx.caller(&request)?;
        let key: pb::ServiceAccountKey = self
            .ctx
            .load(SA_KEY_KIND, "service account key", &name)
            .await
            .map_err(|_| Status::not_found("Unknown service account key"))?;
        // The public half on request (as a PEM SubjectPublicKeyInfo: clustercred keeps no X.509 wrapper).
        let with_public = req.public_key_type != pb::ServiceAccountPublicKeyType::TypeNone as i32;
        Ok(Response::new(if with_public {
            key
        } else {
            public_view(key)
        }))
    }

    async fn create_service_account_key(
        &self,
        request: Request<pb::CreateServiceAccountKeyRequest>,
    ) -> Result<Response<pb::ServiceAccountKey>, Status> {
        let req = request.get_ref();
        let (name, _) = parse_account("name", &req.name)?;
        let caller = self.ctx.caller(&request)?;
        if req.private_key_type == pb::ServiceAccountPrivateKeyType::TypePkcs12File as i32 {
            return Err(invalid_field(
                "private_key_type",
                "only TYPE_GOOGLE_CREDENTIALS_FILE keys are issued",
            ));
        }
        if req.key_algorithm == pb::ServiceAccountKeyAlgorithm::KeyAlgRsa1024 as i32 {
            return Err(invalid_field(
                "key_algorithm",
                "RSA-1024 is too weak; keys are RSA-2048",
            ));
        }
        Ok(Response::new(self.create_key(&caller, &name).await?))
    }

    async fn delete_service_account_key(
        &self,
        request: Request<pb::DeleteServiceAccountKeyRequest>,
    ) -> Result<Response<()>, Status> {
        let (account, _, key_id) = parse_key("name", &request.get_ref().name)?;
        let name = format!("{account}/keys/{key_id}");
        let caller = self.ctx.caller(&request)?;
        let event = self
            .ctx
            .ok_event(&caller, &account, format!("deleted key {key_id}"), "");
        self.ctx
            .remove(
                SA_KEY_KIND,
                "service account key",
                &name,
                None,
                Some(&event),
            )
            .await
            .map_err(|s| {
                if s.code() == tonic::Code::NotFound {
                    Status::not_found("Unknown service account key")
                } else {
                    s
                }
            })?;
        Ok(Response::new(()))
    }
}
