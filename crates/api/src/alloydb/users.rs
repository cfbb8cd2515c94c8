//! AlloyDB database users: `ListUsers`, `GetUser`, `CreateUser`, `UpdateUser`, `DeleteUser` (answered
//! directly, not as operations), and the lookups IAM database authentication needs at an instance endpoint.
//!
//! A user is two things kept in step: a role in the cluster's backend PostgreSQL database (through
//! [`DatabaseUsers`], which this crate only names: the SQL lives in the dataplane crate) and a resource record
//! (`alloydb.User` under the cluster) holding the `User` message without its password. Changes go to the
//! backend first and are recorded after; when the record fails, the backend change is undone where that is
//! possible (create) and the error says what is left otherwise. The password is input only: it goes to the
//! backend as a SCRAM verifier and is never stored, returned, logged or audited here.

use async_trait::async_trait;
use clustercred_proto::google::cloud::alloydb::v1 as pb;
use clustercred_store::{ResourceRecord, StoreError};
use prost::Message;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Status};

use crate::common::parse_request_id;
use crate::context::{Caller, Ctx, Principal, PrincipalKind};
use crate::errors::{from_store, invalid_field, not_found};
use crate::names::{ResourceName, parse_resource};

pub const USER_KIND: &str = "alloydb.User";
/// PostgreSQL truncates longer identifiers (NAMEDATALEN - 1).
pub const MAX_USER_ID_BYTES: usize = 63;
/// Passwords longer than this are refused (PostgreSQL keeps only a verifier, so no real limit applies there).
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// The permissions IAM database authentication needs on the instance (google-apis.md).
pub const LOGIN_PERMISSIONS: [&str; 2] = ["alloydb.instances.connect", "alloydb.users.login"];

/// How a role logs in after a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RoleLogin<'a> {
    /// A built-in user's password (never stored by clustercred).
    Password(&'a str),
    /// An IAM database user: LOGIN without any password.
    NoPassword,
    /// Leave it as it is (updates).
    Unchanged,
}

/// A change to the role of a database user in its cluster's backend database.
#[derive(Clone, Copy, Debug)]
pub struct RoleChange<'a> {
    /// `projects/P/locations/L/clusters/C`.
    pub cluster: &'a str,
    /// The role name (the user id).
    pub user_id: &'a str,
    pub login: RoleLogin<'a>,
    /// The roles the user is to be a member of; `None` leaves memberships alone.
    pub database_roles: Option<&'a [String]>,
    /// Keep memberships `database_roles` does not list.
    pub keep_extra_roles: bool,
    /// Check everything, change nothing.
    pub validate_only: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DatabaseUserError {
    #[error("the cluster has no backend database")]
    NoBackend,
    #[error("the backend database is unavailable: {0}")]
    Unavailable(String),
    #[error("the role already exists")]
    RoleExists,
    #[error("the role does not exist")]
    RoleMissing,
    #[error("unknown roles: {}", .0.join(", "))]
    UnknownRoles(Vec<String>),
    #[error("{0}")]
    RefusedRoles(String),
    #[error("{0}")]
    ReservedName(String),
    #[error("{0}")]
    InvalidGrant(String),
    #[error("{0}")]
    NotPermitted(String),
    #[error("{0}")]
    InUse(String),
    #[error("{0}")]
    Other(String),
}

/// The backend side of database users: roles in the PostgreSQL database behind a cluster. Implemented over
/// `clustercred_dataplane::roles` by the server; [`NoBackends`] when none is configured.
#[async_trait]
pub trait DatabaseUsers: Send + Sync + 'static {
    /// Creates the role (`RoleExists` if any role of that name exists); answers its memberships.
    async fn create(&self, change: &RoleChange<'_>) -> Result<Vec<String>, DatabaseUserError>;
    /// Changes an existing role (`RoleMissing` if it is gone); answers its memberships.
    async fn update(&self, change: &RoleChange<'_>) -> Result<Vec<String>, DatabaseUserError>;
    /// Drops the role; answers whether it existed.
    async fn delete(
        &self,
        cluster: &str,
        user_id: &str,
        validate_only: bool,
    ) -> Result<bool, DatabaseUserError>;
}

/// No backend database for any cluster.
pub struct NoBackends;

#[async_trait]
impl DatabaseUsers for NoBackends {
    async fn create(&self, _: &RoleChange<'_>) -> Result<Vec<String>, DatabaseUserError> {
        Err(DatabaseUserError::NoBackend)
    }
    async fn update(&self, _: &RoleChange<'_>) -> Result<Vec<String>, DatabaseUserError> {
        Err(DatabaseUserError::NoBackend)
    }
    async fn delete(&self, _: &str, _: &str, _: bool) -> Result<bool, DatabaseUserError> {
        Err(DatabaseUserError::NoBackend)
    }
}

/// The roles of `cluster`'s backend database, wrapped for the handlers.
struct Backend<'a> {
    users: &'a dyn DatabaseUsers,
    cluster: &'a str,
    user_id: &'a str,
    id_field: &'a str,
}

impl Backend<'_> {
    fn status(&self, e: DatabaseUserError) -> Status {
        crate::errors::from_database_users(e, self.cluster, self.user_id, self.id_field)
    }
}

fn user_type_name(t: i32) -> &'static str {
    pb::user::UserType::try_from(t)
        .map(|t| t.as_str_name())
        .unwrap_or("USER_TYPE_UNSPECIFIED")
}

fn is_email_shaped(id: &str) -> bool {
    let Some((local, domain)) = id.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && !id.chars().any(char::is_whitespace)
}

/// A user id as a PostgreSQL role name: 1 to 63 bytes, no NUL or other control characters, no `/` (it is a
/// segment of the resource name), not a name PostgreSQL keeps for itself.
pub fn validate_user_id(field: &str, id: &str) -> Result<(), Status> {
    let problem = if id.is_empty() {
        Some("is required".to_string())
    } else if id.len() > MAX_USER_ID_BYTES {
        Some(format!(
            "must be at most {MAX_USER_ID_BYTES} bytes (PostgreSQL's identifier limit)"
        ))
    } else if id.contains('\0') {
        Some("must not contain NUL".to_string())
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters".to_string())
    } else if id.contains('/') {
        Some("must not contain '/'".to_string())
    } else if id.starts_with("pg_") || id == "public" || id == "none" {
        Some(format!("{id:?} is a role name PostgreSQL reserves"))
    } else {
        None
    };
    match problem {
        Some(p) => Err(invalid_field(field, p)),
        None => Ok(()),
    }
}

/// An IAM database user's id: a user's email, or a service account's email without its domain suffix
/// (`NAME@PROJECT.iam`).
fn validate_iam_user_id(field: &str, id: &str) -> Result<(), Status> {
    for suffix in [".gserviceaccount.com", ".clustercred.internal"] {
        if let Some(short) = id.strip_suffix(suffix) {
            return Err(invalid_field(
                field,
                format!(
                    "a service account's IAM database user is its email without {suffix}: {short:?}"
                ),
            ));
        }
    }
    if !is_email_shaped(id) {
        return Err(invalid_field(
            field,
            "an IAM database user is named by an email: a user's email, or a service account's \
             NAME@PROJECT.iam",
        ));
    }
    Ok(())
}

fn validate_password(password: &str) -> Result<(), Status> {
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(invalid_field(
            "user.password",
            format!("must be at most {MAX_PASSWORD_BYTES} bytes"),
        ));
    }
    if password.contains('\0') {
        return Err(invalid_field("user.password", "must not contain NUL"));
    }
    Ok(())
}

/// Role names to grant: each a valid identifier; duplicates dropped, order kept.
fn validate_roles(roles: &[String]) -> Result<Vec<String>, Status> {
    let mut out: Vec<String> = Vec::with_capacity(roles.len());
    for role in roles {
        let bad = |why: &str| invalid_field("user.database_roles", format!("{role:?} {why}"));
        if role.is_empty() {
            return Err(invalid_field(
                "user.database_roles",
                "role names must not be empty",
            ));
        }
        if role.len() > MAX_USER_ID_BYTES {
            return Err(bad("is longer than 63 bytes"));
        }
        if role.chars().any(char::is_control) {
            return Err(bad("contains control characters"));
        }
        if !out.contains(role) {
            out.push(role.clone());
        }
    }
    if out.len() > 100 {
        return Err(invalid_field(
            "user.database_roles",
            "at most 100 roles can be listed",
        ));
    }
    Ok(out)
}

/// A user's resource name: `projects/P/locations/L/clusters/C/users/U`.
pub fn parse_user_name(field: &str, name: &str) -> Result<(ResourceName, String), Status> {
    let expected = "projects/{project}/locations/{location}/clusters/{cluster}/users/{user}";
    if name.is_empty() {
        return Err(invalid_field(field, format!("is required ({expected})")));
    }
    let segs: Vec<&str> = name.split('/').collect();
    if segs.len() != 8 || segs[6] != "users" {
        return Err(invalid_field(
            field,
            format!("must have the form {expected}"),
        ));
    }
    let cluster = parse_resource(field, &segs[..6].join("/"), "clusters")?;
    validate_user_id(field, segs[7])?;
    Ok((cluster, segs[7].to_string()))
}

/// What is stored and returned: no password, no input-only flag.
fn stored_form(mut user: pb::User) -> pb::User {
    user.password.clear();
    user.keep_extra_roles = false;
    user
}

/// Which fields an update changes.
#[derive(Debug, PartialEq, Eq)]
struct Mask {
    password: bool,
    roles: bool,
}

fn parse_mask(mask: Option<&prost_types::FieldMask>, user: &pb::User) -> Result<Mask, Status> {
    let paths: Vec<&str> = mask
        .map(|m| m.paths.iter().map(String::as_str).collect())
        .unwrap_or_default();
    // No mask, or `*`: every field is overwritten (an empty password is no password change).
    if paths.is_empty() || paths == ["*"] {
        return Ok(Mask {
            password: !user.password.is_empty(),
            roles: true,
        });
    }
    let mut out = Mask {
        password: false,
        roles: false,
    };
    for path in paths {
        match path {
            "password" => out.password = true,
            "database_roles" | "databaseRoles" => out.roles = true,
            // Checked against the stored user; input-only or immutable otherwise.
            "user_type" | "userType" | "keep_extra_roles" | "keepExtraRoles" | "name" => {}
            other => {
                return Err(invalid_field(
                    "update_mask",
                    format!(
                        "{other:?} is not a field of User that can be updated (password, database_roles)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}

fn record_failed(status: Status, what_is_left: &str) -> Status {
    tracing::error!(error = %status.message(), "{what_is_left}");
    Status::new(
        status.code(),
        format!("{what_is_left} ({})", status.message()),
    )
}

impl super::AlloyDb {
    async fn load_user(&self, name: &str) -> Result<pb::User, Status> {
        self.ctx
            .load::<pb::User>(USER_KIND, "user", name)
            .await
            .map(stored_form)
    }

    pub async fn list_users(
        &self,
        request: Request<pb::ListUsersRequest>,
    ) -> Result<pb::ListUsersResponse, Status> {
        let req = request.get_ref();
        let cluster = parse_resource("parent", &req.parent, "clusters")?;
        self.ctx.caller(&request)?;
        self.load_cluster(&cluster).await?;
        let (users, next_page_token) = self
            .ctx
            .list::<pb::User>(
                USER_KIND,
                &cluster.to_string(),
                req.page_size,
                &req.page_token,
            )
            .await?;
        Ok(pb::ListUsersResponse {
            users: users.into_iter().map(stored_form).collect(),
            next_page_token,
            unreachable: vec![],
        })
    }

    pub async fn get_user(&self, request: Request<pb::GetUserRequest>) -> Result<pb::User, Status> {
        let (cluster, user_id) = parse_user_name("name", &request.get_ref().name)?;
        self.ctx.caller(&request)?;
        self.load_user(&format!("{cluster}/users/{user_id}")).await
    }

    pub async fn create_user(
        &self,
        request: Request<pb::CreateUserRequest>,
    ) -> Result<pb::User, Status> {
        let req = request.get_ref();
        let cluster = parse_resource("parent", &req.parent, "clusters")?;
        validate_user_id("user_id", &req.user_id)?;
        parse_request_id(&req.request_id)?;
        let user = req
            .user
            .as_ref()
            .ok_or_else(|| invalid_field("user", "is required"))?;
        let name = format!("{cluster}/users/{}", req.user_id);
        if !user.name.is_empty() && user.name != name {
            return Err(invalid_field(
                "user.name",
                format!("must be empty or {name:?} (the parent and user_id)"),
            ));
        }
        let caller = self.ctx.caller(&request)?;
        self.create_checked(
            &caller,
            &cluster,
            &req.user_id,
            "user_id",
            user,
            &req.request_id,
            req.validate_only,
        )
        .await
    }

    /// CreateUser after the request's names are checked (also UpdateUser with `allow_missing`).
    #[allow(clippy::too_many_arguments)]
    async fn create_checked(
        &self,
        caller: &Caller,
        cluster: &ResourceName,
        user_id: &str,
        id_field: &str,
        user: &pb::User,
        request_id: &str,
        validate_only: bool,
    ) -> Result<pb::User, Status> {
        let login = match pb::user::UserType::try_from(user.user_type) {
            Ok(pb::user::UserType::AlloydbBuiltIn) => {
                if user.password.is_empty() {
                    return Err(invalid_field(
                        "user.password",
                        "is required for ALLOYDB_BUILT_IN users",
                    ));
                }
                validate_password(&user.password)?;
                RoleLogin::Password(&user.password)
            }
            Ok(pb::user::UserType::AlloydbIamUser) => {
                validate_iam_user_id(id_field, user_id)?;
                if !user.password.is_empty() {
                    return Err(invalid_field(
                        "user.password",
                        "is not accepted for ALLOYDB_IAM_USER users: they log in with IAM",
                    ));
                }
                RoleLogin::NoPassword
            }
            _ => {
                return Err(invalid_field(
                    "user.user_type",
                    "is required: ALLOYDB_BUILT_IN or ALLOYDB_IAM_USER",
                ));
            }
        };
        let roles = validate_roles(&user.database_roles)?;
        let cluster_s = cluster.to_string();
        let name = format!("{cluster_s}/users/{user_id}");
        self.load_cluster(cluster).await?;
        if self
            .ctx
            .store
            .get_resource(USER_KIND, &name)
            .await
            .map_err(|e| from_store("reading a user", e))?
            .is_some()
        {
            return Err(crate::errors::already_exists("user", &name));
        }

        let backend = Backend {
            users: self.users.as_ref(),
            cluster: &cluster_s,
            user_id,
            id_field,
        };
        let granted = backend
            .users
            .create(&RoleChange {
                cluster: &cluster_s,
                user_id,
                login,
                database_roles: Some(&roles),
                keep_extra_roles: user.keep_extra_roles,
                validate_only,
            })
            .await
            .map_err(|e| backend.status(e))?;
        let created = pb::User {
            name: name.clone(),
            password: String::new(),
            database_roles: granted,
            user_type: user.user_type,
            keep_extra_roles: false,
        };
        if validate_only {
            return Ok(created);
        }
        let now = self.ctx.now();
        let record = ResourceRecord {
            kind: USER_KIND.into(),
            name: name.clone(),
            parent: cluster_s.clone(),
            uid: uuid::Uuid::new_v4().to_string(),
            data: created.encode_to_vec(),
            create_time_unix: now.unix_timestamp(),
        };
        let event = self.ctx.ok_event(
            caller,
            &name,
            format!(
                "created database user ({}) with roles [{}]",
                user_type_name(created.user_type),
                created.database_roles.join(", ")
            ),
            request_id,
        );
        if let Err(status) = self
            .ctx
            .insert("user", &record, None, None, Some(&event))
            .await
        {
            // The role exists in the backend without a record: take it back so a retry can succeed.
            let left = match backend.users.delete(&cluster_s, user_id, false).await {
                Ok(_) => format!(
                    "recording the user failed; its role {user_id:?} was dropped from the backend database \
                     again, so nothing is left: retry"
                ),
                Err(e) => format!(
                    "recording the user failed and dropping its new role {user_id:?} from the backend database \
                     of cluster {cluster_s} failed too ({e}): the role is left there without a user record; \
                     drop it (DROP ROLE) before retrying"
                ),
            };
            return Err(record_failed(status, &left));
        }
        Ok(created)
    }

    pub async fn update_user(
        &self,
        request: Request<pb::UpdateUserRequest>,
    ) -> Result<pb::User, Status> {
        let req = request.get_ref();
        let user = req
            .user
            .as_ref()
            .ok_or_else(|| invalid_field("user", "is required"))?;
        let (cluster, user_id) = parse_user_name("user.name", &user.name)?;
        parse_request_id(&req.request_id)?;
        let mask = parse_mask(req.update_mask.as_ref(), user)?;
        let caller = self.ctx.caller(&request)?;
        let cluster_s = cluster.to_string();
        let name = format!("{cluster_s}/users/{user_id}");
        let stored = match self
            .ctx
            .store
            .get_resource(USER_KIND, &name)
            .await
            .map_err(|e| from_store("reading a user", e))?
        {
            Some(record) => pb::User::decode(record.data.as_slice())
                .map(stored_form)
                .map_err(|e| crate::errors::internal("decoding a stored user", e))?,
            None if req.allow_missing => {
                return self
                    .create_checked(
                        &caller,
                        &cluster,
                        &user_id,
                        "user.name",
                        user,
                        &req.request_id,
                        req.validate_only,
                    )
                    .await;
            }
            None => return Err(not_found("user", &name)),
        };
        if user.user_type != 0 && user.user_type != stored.user_type {
            return Err(invalid_field(
                "user.user_type",
                format!(
                    "cannot be changed (the user is {}): delete the user and create it again",
                    user_type_name(stored.user_type)
                ),
            ));
        }
        let iam = stored.user_type == pb::user::UserType::AlloydbIamUser as i32;
        let login = if mask.password {
            if iam {
                return Err(invalid_field(
                    "user.password",
                    "is not accepted for ALLOYDB_IAM_USER users: they log in with IAM",
                ));
            }
            if user.password.is_empty() {
                return Err(invalid_field(
                    "user.password",
                    "must not be empty when the update mask names it",
                ));
            }
            validate_password(&user.password)?;
            RoleLogin::Password(&user.password)
        } else {
            RoleLogin::Unchanged
        };
        let roles = if mask.roles {
            Some(validate_roles(&user.database_roles)?)
        } else {
            None
        };
        let backend = Backend {
            users: self.users.as_ref(),
            cluster: &cluster_s,
            user_id: &user_id,
            id_field: "user.name",
        };
        let granted = backend
            .users
            .update(&RoleChange {
                cluster: &cluster_s,
                user_id: &user_id,
                login,
                database_roles: roles.as_deref(),
                keep_extra_roles: user.keep_extra_roles,
                validate_only: req.validate_only,
            })
            .await
            .map_err(|e| backend.status(e))?;
        let updated = pb::User {
            database_roles: granted,
            ..stored
        };
        if req.validate_only {
            return Ok(updated);
        }
        let mut changes = Vec::new();
        if mask.password {
            changes.push("password changed".to_string());
        }
        changes.push(format!("roles [{}]", updated.database_roles.join(", ")));
        let event = self.ctx.ok_event(
            &caller,
            &name,
            format!("updated database user: {}", changes.join("; ")),
            &req.request_id,
        );
        let record = self
            .ctx
            .store
            .get_resource(USER_KIND, &name)
            .await
            .map_err(|e| from_store("reading a user", e))
            .and_then(|r| r.ok_or_else(|| not_found("user", &name)));
        let written = match record {
            Ok(record) => self
                .ctx
                .store
                .update_resource(
                    &ResourceRecord {
                        data: updated.encode_to_vec(),
                        ..record
                    },
                    Some(&event),
                )
                .await
                .map_err(|e| match e {
                    StoreError::NotFound => not_found("user", &name),
                    e => from_store("recording a user", e),
                }),
            Err(status) => Err(status),
        };
        if let Err(status) = written {
            return Err(record_failed(
                status,
                "the role was changed in the backend database but recording the change failed: retry the \
                 update",
            ));
        }
        crate::context::log_event(&event);
        Ok(updated)
    }

    pub async fn delete_user(&self, request: Request<pb::DeleteUserRequest>) -> Result<(), Status> {
        let req = request.get_ref();
        let (cluster, user_id) = parse_user_name("name", &req.name)?;
        parse_request_id(&req.request_id)?;
        let caller = self.ctx.caller(&request)?;
        let cluster_s = cluster.to_string();
        let name = format!("{cluster_s}/users/{user_id}");
        self.load_user(&name).await?;
        let backend = Backend {
            users: self.users.as_ref(),
            cluster: &cluster_s,
            user_id: &user_id,
            id_field: "name",
        };
        let existed = backend
            .users
            .delete(&cluster_s, &user_id, req.validate_only)
            .await
            .map_err(|e| backend.status(e))?;
        if req.validate_only {
            return Ok(());
        }
        if !existed {
            tracing::warn!(user = %name, "the user's role was already gone from the backend database");
        }
        let event = self.ctx.ok_event(
            &caller,
            &name,
            if existed {
                "deleted database user and dropped its role"
            } else {
                "deleted database user (its role was already gone from the backend database)"
            },
            &req.request_id,
        );
        self.ctx
            .remove(USER_KIND, "user", &name, None, Some(&event))
            .await
            .map_err(|status| {
                record_failed(
                    status,
                    "the role was dropped from the backend database but the user's record remains: retry the \
                     delete",
                )
            })
    }
}

/// The IAM database user name of a principal, as AlloyDB names them: a service account's email without its
/// domain suffix (`NAME@PROJECT.iam`), a user's or federated identity's email. `None` for identities without
/// an email.
pub fn iam_database_username(principal: &Principal) -> Option<String> {
    match &principal.kind {
        PrincipalKind::ServiceAccount { .. } => {
            let id = principal.id.as_str();
            let short = id
                .strip_suffix(".clustercred.internal")
                .or_else(|| id.strip_suffix(".gserviceaccount.com"))
                .unwrap_or(id);
            is_email_shaped(short).then(|| short.to_string())
        }
        PrincipalKind::User | PrincipalKind::Federated { .. } => {
            is_email_shaped(&principal.id).then(|| principal.id.clone())
        }
        PrincipalKind::Cli => None,
    }
}

/// The IAM database user `user_id` of `cluster` (`projects/P/locations/L/clusters/C`), if it exists and is
/// of type ALLOYDB_IAM_USER.
pub async fn iam_database_user(
    ctx: &Ctx,
    cluster: &str,
    user_id: &str,
) -> Result<Option<pb::User>, Status> {
    let record = ctx
        .store
        .get_resource(USER_KIND, &format!("{cluster}/users/{user_id}"))
        .await
        .map_err(|e| from_store("reading a user", e))?;
    let Some(record) = record else {
        return Ok(None);
    };
    let user = pb::User::decode(record.data.as_slice())
        .map(stored_form)
        .map_err(|e| crate::errors::internal("decoding a stored user", e))?;
    Ok((user.user_type == pb::user::UserType::AlloydbIamUser as i32).then_some(user))
}

/// Who logs in, as what, after [`authorize_iam_login`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IamLogin {
    pub principal: Principal,
    /// The PostgreSQL role to log in as.
    pub role: String,
}

/// IAM database authentication (AUTO_IAM) at the endpoint of `instance`
/// (`projects/P/locations/L/clusters/C/instances/I`): authenticates the OAuth2 token from the metadata
/// exchange, checks `alloydb.instances.connect` and `alloydb.users.login` on the instance, and requires an
/// IAM database user of the principal in the instance's cluster, named `requested_user` when the client has
/// named one already (the metadata exchange comes before the PostgreSQL startup message, so the endpoint
/// compares that name itself). UNAUTHENTICATED, PERMISSION_DENIED or NOT_FOUND otherwise.
pub async fn authorize_iam_login(
    ctx: &Ctx,
    oauth2_token: &str,
    instance: &str,
    requested_user: Option<&str>,
) -> Result<IamLogin, Status> {
    let cluster = instance
        .rsplit_once("/instances/")
        .map(|(c, _)| c)
        .ok_or_else(|| invalid_field("instance", "is not an instance name"))?;
    let mut metadata = MetadataMap::new();
    let header = MetadataValue::try_from(format!("Bearer {oauth2_token}"))
        .map_err(|_| Status::unauthenticated("the token is not valid header text"))?;
    metadata.insert("authorization", header);
    let principal = ctx.access.authenticate(&metadata).await?;
    for permission in LOGIN_PERMISSIONS {
        ctx.access
            .authorize(&principal, permission, instance)
            .await?;
    }
    let role = iam_database_username(&principal).ok_or_else(|| {
        Status::permission_denied(format!(
            "{} has no IAM database user name (it has no email)",
            principal.member()
        ))
    })?;
    if let Some(requested_user) = requested_user
        && role != requested_user
    {
        return Err(Status::permission_denied(format!(
            "{} logs in as the IAM database user {role:?}, not {requested_user:?}",
            principal.member()
        )));
    }
    if iam_database_user(ctx, cluster, &role).await?.is_none() {
        return Err(not_found(
            "IAM database user",
            &format!("{cluster}/users/{role}"),
        ));
    }
    Ok(IamLogin { principal, role })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn user_ids() {
        for ok in ["app", "App User", "a\"b", "o'brien", &"x".repeat(63), "ünï"] {
            assert!(validate_user_id("user_id", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            &"x".repeat(64),
            "a\0b",
            "a\nb",
            "a/b",
            "pg_monitor2",
            "public",
            "none",
        ] {
            let e = validate_user_id("user_id", bad).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "{bad:?}");
            assert!(e.message().contains("user_id"), "{}", e.message());
        }
        assert!(validate_iam_user_id("user_id", "alice@example.com").is_ok());
        assert!(validate_iam_user_id("user_id", "sa@project-1.iam").is_ok());
        for bad in [
            "alice",
            "a@b",
            "@example.com",
            "a@@b.c",
            "a b@c.d",
            "a@.c",
            "a@c.",
        ] {
            assert!(validate_iam_user_id("user_id", bad).is_err(), "{bad}");
        }
        let e = validate_iam_user_id("user_id", "sa@p.iam.gserviceaccount.com").unwrap_err();
        assert!(e.message().contains("\"sa@p.iam\""), "{}", e.message());
        let e = validate_iam_user_id("user_id", "sa@p.iam.clustercred.internal").unwrap_err();
        assert!(e.message().contains("\"sa@p.iam\""), "{}", e.message());
    }

    #[test]
    fn user_names() {
        let (cluster, id) =
            parse_user_name("name", "projects/p/locations/l/clusters/c/users/sa@p.iam").unwrap();
        assert_eq!(cluster.to_string(), "projects/p/locations/l/clusters/c");
        assert_eq!(id, "sa@p.iam");
        for bad in [
            "",
            "projects/p/locations/l/clusters/c",
            "projects/p/locations/l/clusters/c/users",
            "projects/p/locations/l/clusters/c/instances/i",
            "projects/p/locations/l/clusters/C/users/u",
            "projects/p/locations/l/clusters/c/users/u/x",
            "projects/p/locations/l/clusters/c/users/pg_x",
        ] {
            assert_eq!(
                parse_user_name("name", bad).unwrap_err().code(),
                Code::InvalidArgument,
                "{bad}"
            );
        }
    }

    #[test]
    fn masks() {
        let user = pb::User {
            password: "x".into(),
            ..Default::default()
        };
        let mask = |paths: &[&str]| prost_types::FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        };
        assert_eq!(
            parse_mask(Some(&mask(&["password"])), &user).unwrap(),
            Mask {
                password: true,
                roles: false
            }
        );
        assert_eq!(
            parse_mask(Some(&mask(&["database_roles"])), &user).unwrap(),
            Mask {
                password: false,
                roles: true
            }
        );
        assert_eq!(
            parse_mask(None, &pb::User::default()).unwrap(),
            Mask {
                password: false,
                roles: true
            }
        );
        assert_eq!(
            parse_mask(Some(&mask(&["*"])), &user).unwrap(),
            Mask {
                password: true,
                roles: true
            }
        );
        let e = parse_mask(Some(&mask(&["uid"])), &user).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("update_mask"), "{}", e.message());
    }

    #[test]
    fn iam_usernames() {
        let sa = Principal {
            id: "runner@proj.iam.clustercred.internal".into(),
            kind: PrincipalKind::ServiceAccount {
                unique_id: "1".into(),
            },
            scopes: None,
        };
        assert_eq!(
            iam_database_username(&sa).as_deref(),
            Some("runner@proj.iam")
        );
        assert_eq!(
            iam_database_username(&Principal::user("alice@example.com")).as_deref(),
            Some("alice@example.com")
        );
        assert_eq!(iam_database_username(&Principal::user("admin")), None);
    }

    #[test]
    fn roles_are_deduplicated_and_checked() {
        let roles = vec!["a".to_string(), "b".into(), "a".into()];
        assert_eq!(validate_roles(&roles).unwrap(), ["a", "b"]);
        let e = validate_roles(&["".to_string()]).unwrap_err();
        assert!(e.message().contains("user.database_roles"));
    }

    #[tokio::test]
    async fn no_backend_is_a_failed_precondition_naming_the_flag() {
        let change = RoleChange {
            cluster: "projects/p/locations/l/clusters/c",
            user_id: "u",
            login: RoleLogin::NoPassword,
            database_roles: None,
            keep_extra_roles: false,
            validate_only: false,
        };
        let e = NoBackends.create(&change).await.unwrap_err();
        let s = crate::errors::from_database_users(e, change.cluster, "u", "user_id");
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert!(s.message().contains("--alloydb-backend"), "{}", s.message());
        assert!(s.message().contains(change.cluster), "{}", s.message());
    }
}
